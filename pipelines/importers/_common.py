"""Shared pieces of the importers: the result type, contract dtypes, time parsing and row rules.

Every importer builds plain frames with a private ``_row`` column (the 0-based index of the
source record the row came from), then calls :func:`finish`, which checks each contract rule
row by row (vectorised), moves the rows that break one into the quarantine with the reason, and
casts the rest to the exact contract columns and dtypes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginInputError

__all__ = [
    "CONTRACT_COLUMNS",
    "OPTIONAL_COLUMNS",
    "QUARANTINE_COLUMNS",
    "ImportResult",
    "column",
    "empty_table",
    "finish",
    "load_json",
    "parse_epoch",
    "parse_time",
    "quarantine_frame",
    "require_header",
    "resolve_as_of",
]

logger = logging.getLogger(__name__)

# dtype names (typed Any: pandas-stubs only accepts literal dtype strings in astype)
_STR: Any = "str"
_TS: Any = "datetime64[ns, UTC]"
_F: Any = "float64"
_I: Any = "int64"
_B: Any = "bool"

#: Exact columns and dtypes of each contract table (DATA_CONTRACT.md), in contract order.
CONTRACT_COLUMNS: dict[str, dict[str, Any]] = {
    "contracts": {
        "venue": _STR,
        "symbol": _STR,
        "type": _STR,
        "base": _STR,
        "quote": _STR,
        "settle": _STR,
        "linear": _B,
        "contract_size": _F,
        "expiry": _TS,
        "strike": _F,
        "option_type": _STR,
    },
    "margin_tiers": {
        "venue": _STR,
        "symbol": _STR,
        "as_of": _TS,
        "tier": _I,
        "min_notional": _F,
        "max_notional": _F,
        "maintenance_margin_rate": _F,
        "max_leverage": _F,
        "initial_margin_rate": _F,
    },
    "ohlcv": {
        "venue": _STR,
        "symbol": _STR,
        "timeframe": _STR,
        "timestamp": _TS,
        "open": _F,
        "high": _F,
        "low": _F,
        "close": _F,
        "volume": _F,
    },
    "order_books": {
        "venue": _STR,
        "symbol": _STR,
        "timestamp": _TS,
        "side": _STR,
        "level": _I,
        "price": _F,
        "amount": _F,
    },
    "option_quotes": {
        "venue": _STR,
        "underlying": _STR,
        "symbol": _STR,
        "timestamp": _TS,
        "expiry": _TS,
        "strike": _F,
        "option_type": _STR,
        "mark_iv": _F,
        "underlying_price": _F,
    },
    "funding_rates": {
        "venue": _STR,
        "symbol": _STR,
        "timestamp": _TS,
        "funding_rate": _F,
    },
}

#: Optional contract columns, kept when an importer provides them.
OPTIONAL_COLUMNS: dict[str, dict[str, Any]] = {
    "option_quotes": {"bid_iv": _F, "ask_iv": _F, "delta": _F, "open_interest": _F},
}

_KEYS: dict[str, list[str]] = {
    "contracts": ["venue", "symbol"],
    "margin_tiers": ["venue", "symbol", "as_of", "tier"],
    "ohlcv": ["venue", "symbol", "timeframe", "timestamp"],
    "order_books": ["venue", "symbol", "timestamp", "side", "level"],
    "option_quotes": ["venue", "symbol", "timestamp"],
    "funding_rates": ["venue", "symbol", "timestamp"],
}

_NULLABLE: dict[str, set[str]] = {
    "contracts": {"expiry", "strike", "option_type"},
    "margin_tiers": {"maintenance_margin_rate", "initial_margin_rate"},
}

QUARANTINE_COLUMNS: dict[str, Any] = {"source": _STR, "row": _I, "rule": _STR}

_TIMEFRAME_RE = r"^[1-9][0-9]*(s|m|h|d|w|M|y)$"


@dataclass(frozen=True)
class ImportResult:
    """What an importer returns.

    Attributes
    ----------
    tables : dict of str to DataFrame
        Contract tables (``contracts``, ``margin_tiers``, ``ohlcv``, ``order_books``,
        ``option_quotes``, ``funding_rates``), each with exactly the contract columns and dtypes.
    rows_read : int
        Number of source records read (CSV data rows, JSON records, websocket messages...).
    quarantine : DataFrame
        Columns ``source`` (file or object name), ``row`` (0-based index of the source record)
        and ``rule`` (the contract rule broken, with the values): rows never silently dropped.
    extras : dict of str to DataFrame
        Source data that is not a contract table but is worth keeping (e.g. dYdX open-interest
        caps, maintenance-only brackets). Not validated against the contract.
    """

    tables: dict[str, pd.DataFrame]
    rows_read: int
    quarantine: pd.DataFrame
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)


def empty_table(name: str) -> pd.DataFrame:
    """An empty frame with the exact columns and dtypes of contract table ``name``."""
    spec = CONTRACT_COLUMNS[name]
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in spec.items()})


def _empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in QUARANTINE_COLUMNS.items()})


def quarantine_frame(source: str, rows: Iterable[int], rules: Iterable[str]) -> pd.DataFrame:
    """Quarantine rows for ``source``: one per (row, rule)."""
    rows_arr = np.asarray(list(rows), dtype=np.int64)
    rules_list = list(rules)
    if len(rules_list) != len(rows_arr):
        raise ValueError("quarantine_frame: rows and rules must have the same length")
    if not len(rows_arr):
        return _empty_quarantine()
    return pd.DataFrame(
        {
            "source": pd.Series([source] * len(rows_arr), dtype=_STR),
            "row": rows_arr,
            "rule": pd.Series(rules_list, dtype=_STR),
        }
    )


# --------------------------------------------------------------------------- time parsing


def parse_epoch(values: Any) -> pd.Series:
    """Epoch numbers in seconds, milliseconds, microseconds or nanoseconds to UTC timestamps.

    The unit is detected per value from its magnitude, so a column that mixes units (as the
    CryptoDataDownload hourly files do) is read correctly for any date from 1973 to 5138:
    ``|x| < 1e11`` seconds, ``< 1e14`` milliseconds, ``< 1e17`` microseconds, else nanoseconds.
    Null or non-numeric values give ``NaT``.
    """
    raw = pd.Series(values)
    if pd.api.types.is_integer_dtype(raw.dtype):  # exact, also beyond 2**53 (nanoseconds)
        iv = raw.to_numpy(dtype=np.int64)
        mag_i = np.abs(iv)
        sc = np.select([mag_i < 10**11, mag_i < 10**14, mag_i < 10**17], [10**9, 10**6, 10**3], 1)
        return pd.Series(
            pd.to_datetime(iv * sc.astype(np.int64), unit="ns", utc=True), index=raw.index
        ).astype(_TS)
    num = pd.to_numeric(raw, errors="coerce").astype("float64")
    arr = num.to_numpy()
    finite = np.isfinite(arr)
    mag = np.abs(np.where(finite, arr, 0.0))
    scale = np.select([mag < 1e11, mag < 1e14, mag < 1e17], [10**9, 10**6, 10**3], default=1)
    scale = scale.astype(np.int64)
    # integer part times the scale in int64 (exact), fraction rounded to whole nanoseconds
    whole = np.trunc(np.where(finite, arr, 0.0))
    frac = np.where(finite, arr, 0.0) - whole
    ns = whole.astype(np.int64) * scale + np.round(frac * scale).astype(np.int64)
    out = pd.Series(pd.NaT, index=num.index, dtype=_TS)
    if finite.any():
        out[finite] = pd.to_datetime(ns[finite], unit="ns", utc=True)
    return out


def parse_time(values: Any) -> pd.Series:
    """UTC timestamps from epoch numbers (any unit, see :func:`parse_epoch`) or ISO-8601 text.

    Text without a zone is taken as UTC; text with an offset is converted to UTC. Values that
    parse to nothing give ``NaT`` (the caller quarantines them).
    """
    s = pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        if getattr(s.dt, "tz", None) is None:
            s = s.dt.tz_localize("UTC")
        return s.dt.tz_convert("UTC").astype(_TS)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return parse_epoch(s)
    text = s.astype(_STR)
    numeric = pd.to_numeric(text, errors="coerce")
    out = parse_epoch(numeric)
    is_text = numeric.isna() & text.notna()
    if is_text.any():
        parsed = pd.to_datetime(text[is_text], utc=True, errors="coerce", format="ISO8601")
        out[is_text] = parsed.astype(_TS)
    return out


def resolve_as_of(as_of: Any, path: Path | None, *, who: str) -> pd.Timestamp:
    """The ``as_of`` of a source whose content carries no date.

    An explicit ``as_of`` (anything :func:`pandas.Timestamp` reads; naive means UTC) wins. Else,
    for a file, its modification time (floored to the second) is used and logged: for a file
    saved by a live fetch it is the capture time. An in-memory object needs an explicit value.
    """
    if as_of is not None:
        ts = pd.Timestamp(as_of)
        if pd.isna(ts):
            raise FairmarginInputError(f"{who}: as_of must be a timestamp, got {as_of!r}")
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if path is None:
        raise FairmarginInputError(
            f"{who}: as_of must be given for an in-memory object (it carries no date), got None"
        )
    ts = pd.Timestamp(os.path.getmtime(path), unit="s", tz="UTC").floor("s")
    logger.warning("%s: %s carries no date; as_of taken from the file's mtime %s", who, path, ts)
    return ts


def column(df: pd.DataFrame, name: str) -> pd.Series:
    """``df[name]`` as numbers (unparsable -> NaN), or all-NaN when the column is absent."""
    if name not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype="float64")
    return pd.to_numeric(df[name], errors="coerce")


def load_json(path: Path, *, who: str) -> Any:
    """Parse a JSON file; a truncated or invalid file raises naming the file, line and column."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise FairmarginInputError(
            f"{who}: {path} must be valid JSON, got {err.msg} at line {err.lineno} "
            f"column {err.colno} (truncated or corrupt file?)"
        ) from err


def require_header(
    columns: Iterable[str], needed: Iterable[str], *, path: Path | str, who: str
) -> None:
    """Raise when a file's header lacks columns, naming the file and the missing fields."""
    cols = [str(c) for c in columns]
    if missing := sorted(set(needed) - set(cols)):
        raise FairmarginInputError(
            f"{who}: {path}: header must have columns {missing} (row 0, fields {missing}), "
            f"got {cols}"
        )


# --------------------------------------------------------------------------- row rules


def _bad_rows(name: str, df: pd.DataFrame) -> list[tuple[pd.Series, str, list[str]]]:
    """(mask, rule, fields) triples for the single-row contract rules of table ``name``."""
    out: list[tuple[pd.Series, str, list[str]]] = []
    spec = CONTRACT_COLUMNS[name]
    nullable = _NULLABLE.get(name, set())

    def rule(mask: Any, text: str, fields: list[str]) -> None:
        out.append((pd.Series(np.asarray(mask, dtype=bool), index=df.index), text, fields))

    for col in spec:
        if col not in nullable:
            rule(df[col].isna().to_numpy(), f"{col} must not be null", [col])
    for col, kind in spec.items():
        if kind == _F and col != "max_notional":
            v = df[col].to_numpy(dtype="float64", na_value=np.nan)
            rule(np.isinf(v), f"{col} must be finite", [col])

    if name == "contracts":
        typ = df["type"]
        rule(
            ~typ.isin(["swap", "future", "option", "spot"]), "type must be a known type", ["type"]
        )
        rule(~(df["contract_size"] > 0), "contract_size must be > 0", ["contract_size"])
        rule((typ == "swap") & df["expiry"].notna(), "expiry must be null for a swap", ["expiry"])
        rule(typ.isin(["future", "option"]) & df["expiry"].isna(), "expiry must be set", ["type"])
        opt = typ == "option"
        rule(opt & ~(df["strike"] > 0), "strike must be > 0 for an option", ["strike"])
        rule(~opt & df["strike"].notna(), "strike must be null for a non-option", ["strike"])
        rule(
            opt & ~df["option_type"].isin(["call", "put"]),
            "option_type must be call/put",
            ["option_type"],
        )
        rule(
            ~opt & df["option_type"].notna(),
            "option_type must be null for a non-option",
            ["option_type"],
        )
    elif name == "margin_tiers":
        rule(~(df["tier"] >= 1), "tier must be >= 1", ["tier"])
        rule(~(df["min_notional"] >= 0), "min_notional must be >= 0", ["min_notional"])
        rule(
            ~(df["max_notional"] > df["min_notional"]),
            "max_notional must be > min_notional",
            ["min_notional", "max_notional"],
        )
        mmr = df["maintenance_margin_rate"]
        rule(
            mmr.notna() & ~((mmr > 0) & (mmr <= 1)),
            "maintenance_margin_rate must be in (0, 1]",
            ["maintenance_margin_rate"],
        )
        rule(~(df["max_leverage"] >= 1), "max_leverage must be >= 1", ["max_leverage"])
        imr = df["initial_margin_rate"]
        rule(
            imr.notna() & ~((imr > 0) & (imr <= 1)),
            "initial_margin_rate must be in (0, 1]",
            ["initial_margin_rate"],
        )
    elif name == "ohlcv":
        tf_ok = df["timeframe"].astype(_STR).str.match(_TIMEFRAME_RE).fillna(False).astype(bool)
        rule(~tf_ok, "timeframe must look like 1m, 1h, 1d", ["timeframe"])
        for c in ("open", "high", "low", "close"):
            rule(~(df[c] > 0), f"{c} must be > 0", [c])
        rule(~(df["volume"] >= 0), "volume must be >= 0", ["volume"])
        rule(
            ~(df["low"] <= np.fmin(df["open"], df["close"])),
            "low must be <= open and close",
            ["open", "low", "close"],
        )
        rule(
            ~(df["high"] >= np.fmax(df["open"], df["close"])),
            "high must be >= open and close",
            ["open", "high", "close"],
        )
    elif name == "order_books":
        rule(~df["side"].isin(["bid", "ask"]), "side must be bid/ask", ["side"])
        rule(~(df["level"] >= 0), "level must be >= 0", ["level"])
        rule(~(df["price"] > 0), "price must be > 0", ["price"])
        rule(~(df["amount"] > 0), "amount must be > 0", ["amount"])
    elif name == "option_quotes":
        rule(~(df["strike"] > 0), "strike must be > 0", ["strike"])
        rule(
            ~df["option_type"].isin(["call", "put"]),
            "option_type must be call/put",
            ["option_type"],
        )
        rule(~(df["mark_iv"] > 0), "mark_iv must be > 0", ["mark_iv"])
        rule(
            df["mark_iv"] > 5,
            "mark_iv must be an annualised fraction <= 5 (percent given?)",
            ["mark_iv"],
        )
        rule(~(df["underlying_price"] > 0), "underlying_price must be > 0", ["underlying_price"])
    return out


def _describe(df: pd.DataFrame, name: str) -> list[str]:
    """One ``(venue, symbol, ...)`` label per row of ``df`` from the table's key columns."""
    key = [k for k in _KEYS[name] if k in df.columns]
    parts = [df[k].astype(object).map(str).to_numpy() for k in key]
    return [", ".join(p) for p in zip(*parts, strict=True)] if parts else [""] * len(df)


def _row_rules(name: str, df: pd.DataFrame, source: str) -> tuple[pd.Series, list[pd.DataFrame]]:
    """Mask of rows breaking a single-row rule, and their quarantine entries (first rule wins)."""
    bad = pd.Series(False, index=df.index)
    q: list[pd.DataFrame] = []
    for mask, text, fields in _bad_rows(name, df):
        m = mask.fillna(False).astype(bool) & ~bad
        if not m.any():
            continue
        sub = df.loc[m]
        labels = _describe(sub, name)
        got = [sub[f].astype(object).map(repr).to_numpy() for f in fields]
        reasons = [
            f"{name} ({lab}): {text}, got "
            + ", ".join(f"{f}={v}" for f, v in zip(fields, vals, strict=True))
            for lab, *vals in zip(labels, *got, strict=True)
        ]
        q.append(quarantine_frame(source, sub["_row"], reasons))
        bad |= m
    return bad, q


def _tier_rules(df: pd.DataFrame, source: str) -> tuple[pd.Series, list[pd.DataFrame]]:
    """Schedule rules: contiguous tiers, consecutive tier numbers, rates not falling.

    A schedule (venue, symbol, as_of) that breaks one is quarantined whole, each row naming the
    first offending row, because a schedule with a hole cannot be judged tier by tier.
    """
    key = ["venue", "symbol", "as_of"]
    d = df.sort_values([*key, "tier"], kind="stable")
    g = d.groupby(key, sort=False, dropna=False)
    prev_max = g["max_notional"].shift()
    first = prev_max.isna() & g.cumcount().eq(0)
    eff = d["initial_margin_rate"].where(d["initial_margin_rate"].notna(), 1.0 / d["max_leverage"])
    prev_eff = eff.groupby([d[k] for k in key], sort=False, dropna=False).shift()
    prev_mmr = g["maintenance_margin_rate"].shift()
    prev_tier = g["tier"].shift()
    gap = ~first & ~np.isclose(d["min_notional"], prev_max, rtol=1e-9, atol=1e-9)
    skip = ~first & (d["tier"] != prev_tier + 1)
    start = first & (d["tier"] != 1)
    fall_im = ~first & (eff < prev_eff * (1 - 1e-12))
    fall_mm = ~first & (d["maintenance_margin_rate"] < prev_mmr * (1 - 1e-12))
    reason = pd.Series("", index=d.index, dtype=object)
    for mask, text in (
        (fall_mm, "maintenance_margin_rate falls as tier rises"),
        (fall_im, "initial margin rate falls as tier rises"),
        (start, "first tier number must be 1"),
        (skip, "tier numbers must be consecutive"),
        (gap, "tiers must be contiguous: min_notional != previous tier's max_notional"),
    ):
        reason = reason.mask(mask.fillna(False).to_numpy(), text)
    broken_row = reason.ne("")
    if not broken_row.any():
        return pd.Series(False, index=df.index), []
    grp_id = g.ngroup()
    broken_groups = set(grp_id[broken_row].unique())
    in_broken = grp_id.isin(broken_groups)
    first_bad = (
        d.loc[broken_row, ["_row"]]
        .assign(_g=grp_id[broken_row], _why=reason[broken_row])
        .groupby("_g")
        .first()
    )
    # the offending rows first, so that strict mode names a root cause
    sub = (
        d.loc[in_broken]
        .assign(_g=grp_id[in_broken], _own=reason[in_broken])
        .sort_values("_own", ascending=False, kind="stable")
    )
    first_text = {
        gid: f"first broken: row {r}: {w}"
        for gid, r, w in zip(first_bad.index, first_bad["_row"], first_bad["_why"], strict=True)
    }
    detail = sub["_g"].map(first_text)
    own = sub["_own"]
    texts = [
        f"margin_tiers ({v}, {s}, {a}): {w if w else 'schedule quarantined'} "
        f"(tier {t}, min {lo!r}, max {hi!r}); {det}"
        for v, s, a, t, lo, hi, w, det in zip(
            sub["venue"],
            sub["symbol"],
            sub["as_of"],
            sub["tier"],
            sub["min_notional"],
            sub["max_notional"],
            own,
            detail,
            strict=True,
        )
    ]
    mask = pd.Series(False, index=df.index)
    mask[sub.index] = True
    return mask, [quarantine_frame(source, sub["_row"], texts)]


def _book_rules(df: pd.DataFrame, source: str) -> tuple[pd.Series, list[pd.DataFrame]]:
    """Book rules: bids fall and asks rise with level; best bid < best ask (else whole book)."""
    key = ["venue", "symbol", "timestamp"]
    d = df.sort_values([*key, "side", "level"], kind="stable")
    g = d.groupby([*key, "side"], sort=False)
    prev = g["price"].shift()
    bad_order = prev.notna() & (
        ((d["side"] == "bid") & ~(d["price"] < prev))
        | ((d["side"] == "ask") & ~(d["price"] > prev))
    )
    best_bid = d[d["side"] == "bid"].groupby(key)["price"].max()
    best_ask = d[d["side"] == "ask"].groupby(key)["price"].min()
    crossed = (best_bid.to_frame("b").join(best_ask.to_frame("a"), how="inner")).query("b >= a")
    q: list[pd.DataFrame] = []
    mask = pd.Series(False, index=df.index)
    if bad_order.any():
        sub = d.loc[bad_order]
        q.append(
            quarantine_frame(
                source,
                sub["_row"],
                [
                    f"order_books ({v}, {s}, {t}, {sd}, level {lv}): bids must fall and asks "
                    f"rise with level, got price {p!r} after {pp!r}"
                    for v, s, t, sd, lv, p, pp in zip(
                        sub["venue"],
                        sub["symbol"],
                        sub["timestamp"],
                        sub["side"],
                        sub["level"],
                        sub["price"],
                        prev[bad_order],
                        strict=True,
                    )
                ],
            )
        )
        mask[sub.index] = True
    if len(crossed):
        idx = pd.MultiIndex.from_frame(d[key])
        in_crossed = pd.Series(idx.isin(crossed.index), index=d.index) & ~mask.reindex(d.index)
        sub = d.loc[in_crossed]
        q.append(
            quarantine_frame(
                source,
                sub["_row"],
                [
                    f"order_books ({v}, {s}, {t}): best bid must be < best ask, book crossed"
                    for v, s, t in zip(sub["venue"], sub["symbol"], sub["timestamp"], strict=True)
                ],
            )
        )
        mask[sub.index] = True
    return mask, q


def _dedupe(name: str, df: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Drop exact duplicates (logged); quarantine every row of a key repeated with other values."""
    key = _KEYS[name]
    cols = [c for c in df.columns if c != "_row"]
    exact = df.duplicated(cols, keep="first")
    if exact.any():
        logger.info("%s: %s: %d exact duplicate %s rows merged", source, name, exact.sum(), name)
        df = df.loc[~exact]
    dup = df.duplicated(key, keep=False)
    if not dup.any():
        return df, []
    sub = df.loc[dup]
    texts = [
        f"{name} ({lab}): duplicate key {key} with other values" for lab in _describe(sub, name)
    ]
    return df.loc[~dup], [quarantine_frame(source, sub["_row"], texts)]


def _conform(name: str, df: pd.DataFrame) -> pd.DataFrame:
    spec = dict(CONTRACT_COLUMNS[name])
    for c, t in OPTIONAL_COLUMNS.get(name, {}).items():
        if c in df.columns:
            spec[c] = t
    out = {}
    for c, t in spec.items():
        s = df[c] if c in df.columns else pd.Series(np.nan, index=df.index)
        if t == _TS:
            s = parse_time(s) if not isinstance(s.dtype, pd.DatetimeTZDtype) else s
            out[c] = s.astype(_TS)
        elif t == _STR:
            out[c] = s.astype(object).where(s.notna(), None).astype(_STR)
        elif t == _B:
            out[c] = s.astype(_B)
        elif t == _I:
            out[c] = s.astype(_I)
        else:
            out[c] = pd.to_numeric(s, errors="coerce").astype(_F)
    return pd.DataFrame(out).reset_index(drop=True)


def validate(name: str, df: pd.DataFrame, *, source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``df`` (contract columns + ``_row``) into contract rows and quarantine rows."""
    if "_row" not in df.columns:
        raise ValueError("validate: df must carry the source row index in column _row")
    spec = CONTRACT_COLUMNS[name]
    work = df.copy()
    for c, t in spec.items():
        if c not in work.columns:
            work[c] = np.nan
        if t == _TS and not isinstance(work[c].dtype, pd.DatetimeTZDtype):
            work[c] = parse_time(work[c])
        elif t in (_F,):
            work[c] = pd.to_numeric(work[c], errors="coerce").astype(_F)
    work = work.reset_index(drop=True)
    bad, q = _row_rules(name, work, source)
    if name == "margin_tiers" and bad.any():
        # a schedule missing a tier is not the published schedule: quarantine all of it
        key = ["venue", "symbol", "as_of"]
        hit = work.loc[bad, key].drop_duplicates()
        first = work.loc[bad].groupby(key, dropna=False)["_row"].min()
        rest = work.loc[~bad].reset_index().merge(hit, on=key, how="inner").set_index("index")
        if len(rest):
            rows_bad = [first.get(tuple(k), "?") for k in rest[key].itertuples(index=False)]
            q.append(
                quarantine_frame(
                    source,
                    rest["_row"],
                    [
                        f"margin_tiers ({lab}): schedule quarantined: its row {r} breaks a rule"
                        for lab, r in zip(_describe(rest, name), rows_bad, strict=True)
                    ],
                )
            )
            bad = bad | work.index.isin(rest.index)
    good = work.loc[~bad]
    good, q_dup = _dedupe(name, good, source)
    q += q_dup
    if name == "margin_tiers" and len(good):
        good = good.assign(tier=good["tier"].astype(_I))
        m, q_t = _tier_rules(good, source)
        good = good.loc[~m]
        q += q_t
    if name == "order_books" and len(good):
        m, q_b = _book_rules(good, source)
        good = good.loc[~m]
        q += q_b
    good = good.sort_values([*_KEYS[name]], kind="stable")
    quarantine = pd.concat(q, ignore_index=True) if q else _empty_quarantine()
    return _conform(name, good), quarantine


def finish(
    frames: Mapping[str, pd.DataFrame],
    *,
    rows_read: int,
    source: str,
    who: str,
    strict: bool = False,
    quarantine: Iterable[pd.DataFrame] = (),
    extras: Mapping[str, pd.DataFrame] | None = None,
) -> ImportResult:
    """Validate each table, gather the quarantine and build the :class:`ImportResult`.

    With ``strict=True`` the first quarantined row raises :class:`FairmarginInputError`
    naming the source, the row and the rule (the contract's default behaviour); otherwise the
    rows are returned in ``quarantine`` and the import goes on (``--quarantine``).
    """
    tables: dict[str, pd.DataFrame] = {}
    q_all = [q for q in quarantine if len(q)]
    for name, df in frames.items():
        if name not in CONTRACT_COLUMNS:
            raise ValueError(
                f"finish: table must be one of {sorted(CONTRACT_COLUMNS)}, got {name}"
            )
        clean, q = validate(name, df, source=source)
        tables[name] = clean
        if len(q):
            q_all.append(q)
    # quarantine entries come in stage order (source checks, row rules, duplicates, schedules):
    # the first one is the root cause, which strict mode reports
    staged = pd.concat(q_all, ignore_index=True) if q_all else _empty_quarantine()
    staged = staged.astype(QUARANTINE_COLUMNS)
    if strict and len(staged):
        first = staged.iloc[0]
        raise FairmarginInputError(
            f"{who}: {first['source']} row {first['row']}: {first['rule']} "
            f"({len(staged)} row(s) break a rule; read with strict=False to quarantine them)"
        )
    q_df = staged.sort_values("row", kind="stable").reset_index(drop=True)
    if len(q_df):
        logger.warning("%s: %s: %d row(s) quarantined", who, source, len(q_df))
    return ImportResult(
        tables=tables, rows_read=int(rows_read), quarantine=q_df, extras=dict(extras or {})
    )
