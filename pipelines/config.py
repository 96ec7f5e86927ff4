"""Experiment configuration: frozen, typed dataclasses that check themselves (STYLE.md §4)."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from features._checks import FairmarginInputError

__all__ = [
    "ApcConfig",
    "CalibrationConfig",
    "ChampionConfig",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "TuneConfig",
    "WalkForwardConfig",
    "default_experiment_path",
    "flatten",
    "load_experiment",
    "load_experiment_dict",
    "with_overrides",
]


@dataclass(frozen=True, slots=True)
class DataConfig:
    horizons_minutes: tuple[int, ...] = (15, 30, 60, 240, 1440, 4320, 10080)
    sample_every_minutes: int = 30
    min_history_days: float = 14.0
    book_tolerance_minutes: float = 180.0
    quote_tolerance_minutes: float = 180.0
    funding_tolerance_minutes: float = 720.0
    price_tolerance_minutes: float = 1440.0
    scale_halflife_minutes: float = 240.0

    def __post_init__(self) -> None:
        hs = tuple(int(h) for h in self.horizons_minutes)
        object.__setattr__(self, "horizons_minutes", hs)
        if len(hs) < 2 or any(b <= a for a, b in itertools.pairwise(hs)) or hs[0] <= 0:
            raise FairmarginInputError(
                f"data.horizons_minutes must be >= 2 increasing positive minutes, got {hs}"
            )
        if self.sample_every_minutes <= 0:
            raise FairmarginInputError(
                f"data.sample_every_minutes must be > 0, got {self.sample_every_minutes!r}"
            )


@dataclass(frozen=True, slots=True)
class CalibrationConfig:
    method: str = "split"
    window_fraction: float = 0.30
    max_window_days: float = 120.0
    min_scores: int = 200
    min_independent_scores: float = 20.0
    side_asymmetry_z: float = 2.576
    level_drift_block_minutes: float = 1440.0

    def __post_init__(self) -> None:
        if not self.level_drift_block_minutes >= 0:
            raise FairmarginInputError(
                "calibration.level_drift_block_minutes must be >= 0, got "
                f"{self.level_drift_block_minutes!r}"
            )
        if not self.side_asymmetry_z >= 0:
            raise FairmarginInputError(
                f"calibration.side_asymmetry_z must be >= 0, got {self.side_asymmetry_z!r}"
            )
        if self.method not in ("crossfit", "split"):
            raise FairmarginInputError(
                f"calibration.method must be 'crossfit' or 'split', got {self.method!r}"
            )
        if not 0 < self.window_fraction < 1:
            raise FairmarginInputError(
                f"calibration.window_fraction must be in (0, 1), got {self.window_fraction!r}"
            )


@dataclass(frozen=True, slots=True)
class ModelConfig:
    n_estimators: int = 200
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_child_samples: int = 200
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    reg_lambda: float = 1.0
    n_jobs: int = 2
    n_seeds: int = 1
    fit_level: float = 0.0  # quantile level the boosters are trained at; 0: the coverage itself

    def __post_init__(self) -> None:
        if self.fit_level != 0 and not 0.5 < self.fit_level < 1:
            raise FairmarginInputError(
                f"model.fit_level must be 0 (the coverage) or in (0.5, 1), got {self.fit_level!r}"
            )
        if self.n_estimators < 1:
            raise FairmarginInputError(
                f"model.n_estimators must be >= 1, got {self.n_estimators!r}"
            )
        if self.n_seeds < 1:
            raise FairmarginInputError(f"model.n_seeds must be >= 1, got {self.n_seeds!r}")


@dataclass(frozen=True, slots=True)
class WalkForwardConfig:
    retrain_every_days: float = 30.0


@dataclass(frozen=True, slots=True)
class TuneConfig:
    """Optuna tuning (``fairmargin tune``): folds end before ``test_start``."""

    n_trials: int = 20
    n_folds: int = 3
    fold_days: float = 7.0
    test_start: str = ""  # ISO date of the first test month; "" = two thirds into the history
    coverage_slack: float = 0.005  # a trial is feasible when its exception rate <= 1 - q + slack
    min_trees: int = 20
    max_trees: int = 300

    def __post_init__(self) -> None:
        if self.n_trials < 1 or self.n_folds < 1:
            raise FairmarginInputError(
                f"tune.n_trials and tune.n_folds must be >= 1, got {self.n_trials!r}, "
                f"{self.n_folds!r}"
            )
        if self.fold_days <= 0:
            raise FairmarginInputError(f"tune.fold_days must be > 0, got {self.fold_days!r}")
        if not 1 <= self.min_trees <= self.max_trees:
            raise FairmarginInputError(
                f"tune.min_trees must be in [1, max_trees], got {self.min_trees!r}"
            )


@dataclass(frozen=True, slots=True)
class ChampionConfig:
    """Champion/challenger backtest of ``fairmargin train``: the last ``test_days`` of the
    bundle, models trained before it; a challenger wins when it passes coverage and needs less
    average margin (or the champion fails coverage and it does not)."""

    test_days: float = 7.0

    def __post_init__(self) -> None:
        if self.test_days <= 0:
            raise FairmarginInputError(f"champion.test_days must be > 0, got {self.test_days!r}")


@dataclass(frozen=True, slots=True)
class ApcConfig:
    """Anti-procyclicality overlays on the fair margin (EMIR RTS 153/2013 Art. 28), all off by
    default (``models.backtest.apc_overlay``): ``buffer`` 0.25 holds a 25 % buffer,
    ``stressed_weight`` 0.25 gives the margin at the highest volatility known 25 % weight,
    ``floor_years`` 10 floors it at the margin of the 10-year root-mean-square volatility."""

    buffer: float = 0.0
    stressed_weight: float = 0.0
    floor_years: float = 0.0

    def __post_init__(self) -> None:
        if not self.buffer >= 0:
            raise FairmarginInputError(f"apc.buffer must be >= 0, got {self.buffer!r}")
        if not 0 <= self.stressed_weight <= 1:
            raise FairmarginInputError(
                f"apc.stressed_weight must be in [0, 1], got {self.stressed_weight!r}"
            )
        if not self.floor_years >= 0:
            raise FairmarginInputError(f"apc.floor_years must be >= 0, got {self.floor_years!r}")

    @property
    def enabled(self) -> bool:
        """Whether any overlay is switched on."""
        return bool(self.buffer or self.stressed_weight or self.floor_years)


@dataclass(frozen=True, slots=True)
class ExperimentConfig:
    name: str = "default"
    coverage: float = 0.99
    base_latency_minutes: float = 15.0
    participation: float = 0.10
    materiality: float = 0.25
    interval_level: float = 0.90
    single_tier_notional: float = 1e6
    last_tier_cap_multiple: float = 10.0
    beyond_depth_multiplier: float = 1.5
    impact_coefficient: float = 0.5
    random_state: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    walk_forward: WalkForwardConfig = field(default_factory=WalkForwardConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    champion: ChampionConfig = field(default_factory=ChampionConfig)
    apc: ApcConfig = field(default_factory=ApcConfig)

    def __post_init__(self) -> None:
        if not 0.5 < self.coverage < 1:
            raise FairmarginInputError(f"coverage must be in (0.5, 1), got {self.coverage!r}")
        if self.model.fit_level > self.coverage:
            raise FairmarginInputError(
                f"model.fit_level ({self.model.fit_level}) must not exceed coverage "
                f"({self.coverage}): conformal calibration carries a lower level up to q"
            )
        if not 0 < self.participation <= 1:
            raise FairmarginInputError(
                f"participation must be in (0, 1], got {self.participation!r}"
            )
        if self.base_latency_minutes < 0:
            raise FairmarginInputError(
                f"base_latency_minutes must be >= 0, got {self.base_latency_minutes!r}"
            )
        if self.materiality < 0:
            raise FairmarginInputError(f"materiality must be >= 0, got {self.materiality!r}")
        if not 0 < self.interval_level < 1:
            raise FairmarginInputError(
                f"interval_level must be in (0, 1), got {self.interval_level!r}"
            )
        if self.beyond_depth_multiplier < 1:
            raise FairmarginInputError(
                f"beyond_depth_multiplier must be >= 1, got {self.beyond_depth_multiplier!r}"
            )


_SECTIONS: dict[str, type[Any]] = {
    "data": DataConfig,
    "calibration": CalibrationConfig,
    "model": ModelConfig,
    "walk_forward": WalkForwardConfig,
    "tune": TuneConfig,
    "champion": ChampionConfig,
    "apc": ApcConfig,
}


def _build(cls: type[Any], raw: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    if unknown := sorted(set(raw) - known):
        raise FairmarginInputError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
    return cls(**raw)


def load_experiment_dict(raw: dict[str, Any], *, where: str = "config") -> ExperimentConfig:
    """Build a config from a nested dict (a parsed TOML file, or ``asdict`` of a config)."""
    raw = dict(raw)
    try:
        sections = {
            k: _build(cls, dict(raw.pop(k, {})), f"{where} [{k}]") for k, cls in _SECTIONS.items()
        }
        return _build(ExperimentConfig, {**raw, **sections}, where)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, FairmarginInputError):
            raise
        raise FairmarginInputError(f"{where}: {exc}") from None


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read an experiment TOML; unknown keys and bad values are errors naming the file."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise FairmarginInputError(f"{p}: experiment file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise FairmarginInputError(f"{p}: not valid TOML: {exc}") from None
    try:
        sections = {k: _build(cls, raw.pop(k, {}), f"{p} [{k}]") for k, cls in _SECTIONS.items()}
        return _build(ExperimentConfig, {**raw, **sections}, str(p))
    except (TypeError, ValueError) as exc:
        raise FairmarginInputError(f"{p}: {exc}") from None


def default_experiment_path() -> Path:
    """The packaged ``experiments/default.toml``."""
    return Path(__file__).resolve().parent.parent / "experiments" / "default.toml"


def with_overrides(cfg: ExperimentConfig, **overrides: Any) -> ExperimentConfig:
    """Apply CLI overrides; ``None`` means "not given". Dotted keys reach sections."""
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if "." in key:
            section, sub = key.split(".", 1)
            nested.setdefault(section, {})[sub] = value
        else:
            top[key] = value
    for section, values in nested.items():
        top[section] = replace(getattr(cfg, section), **values)
    return replace(cfg, **top) if top else cfg


def flatten(cfg: ExperimentConfig) -> dict[str, Any]:
    """Flat ``{"data.horizons_minutes": ..., "coverage": ...}`` for MLflow params and outputs."""
    out: dict[str, Any] = {}
    for key, value in asdict(cfg).items():
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{key}.{sub}"] = list(v) if isinstance(v, tuple) else v
        else:
            out[key] = value
    return out
