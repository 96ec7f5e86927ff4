"""Ingest: real-data sources into one bundle of DATA_CONTRACT.md (the pure step).

:func:`ingest` reads every source with its importer (format sniffed by
:func:`pipelines.importers.detect_format` or named), concatenates each contract table over the
sources, drops rows that are exact duplicates across sources, and treats rows that share a key
but differ in value as conflicts. Contracts are derived from the unified symbol for every
(venue, symbol) that has rows but no contracts row. Every table is then checked with the
contract's own rules (:func:`pipelines.contract.validate_table`).

Nothing is lost in silence: a bad row (from an importer, a key conflict or a contract rule) is
an error by default, naming the table, source, row and rule; with ``quarantine=True`` it goes
to :attr:`IngestResult.quarantine` with its reason and every good row is kept. A source that
cannot be read at all (a truncated JSON, a CSV with a wrong header) is likewise an error, or
with ``quarantine=True`` one quarantine row naming the file and the reason.

No files are written here: :mod:`pipelines.cmd_ingest` writes the bundle with
:func:`pipelines.bundle.write_bundle` (atomic, byte-reproducible).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features._checks import FairmarginError, FairmarginInputError
from pipelines.contract import (
    QUARANTINE_COLUMNS,
    TABLE_ORDER,
    BundleValidationError,
    describe_bad_rows,
    validate_table,
)
from pipelines.importers import READERS, ImportResult, detect_format, read
from pipelines.importers._common import CONTRACT_COLUMNS, OPTIONAL_COLUMNS
from pipelines.importers._symbols import contracts_frame, parse_unified

__all__ = [
    "DATA_SUFFIXES",
    "SUMMARY_COLUMNS",
    "IngestResult",
    "SourceResult",
    "expand_sources",
    "format_summary",
    "ingest",
    "merge_results",
    "read_sources",
]

logger = logging.getLogger(__name__)

#: File names a folder source contributes (others, e.g. PROVENANCE.md, are listed as skipped).
DATA_SUFFIXES = (".csv", ".csv.gz", ".json", ".jsonl", ".data", ".parquet", ".feather")
#: Columns of :attr:`IngestResult.summary`.
SUMMARY_COLUMNS = [
    "source",
    "format",
    "table",
    "rows_read",
    "rows_out",
    "duplicates",
    "quarantined",
    "kept",
]
_KEYS: dict[str, list[str]] = {
    "contracts": ["venue", "symbol"],
    "margin_tiers": ["venue", "symbol", "as_of", "tier"],
    "ohlcv": ["venue", "symbol", "timeframe", "timestamp"],
    "order_books": ["venue", "symbol", "timestamp", "side", "level"],
    "option_quotes": ["venue", "symbol", "timestamp"],
    "funding_rates": ["venue", "symbol", "timestamp"],
}
DERIVED = "(derived contracts)"
IMPORT_TABLE = "(import)"


@dataclass(frozen=True)
class SourceResult:
    """One source file as read: its format and the importer's result (None when unreadable)."""

    path: Path
    format: str
    result: ImportResult | None
    error: str = ""


@dataclass(frozen=True)
class IngestResult:
    """The merged contract tables, what happened to each source's rows, and the rows set aside.

    Attributes
    ----------
    tables : dict of str to DataFrame
        Contract tables (good rows only, contract dtypes, sorted by key), ready for
        :func:`pipelines.bundle.write_bundle`; the required tables are always present.
    summary : DataFrame
        One row per (source, table): :data:`SUMMARY_COLUMNS`. ``rows_read`` is the number of
        source records (on the ``(import)`` row of the source), ``rows_out`` the rows the
        importer made for the table, ``duplicates`` exact duplicates of rows of earlier sources
        (dropped), ``quarantined`` rows set aside, ``kept`` rows in the bundle.
    quarantine : DataFrame
        ``table, row, key, rule`` (the bundle's quarantine columns): ``table`` is ``(import)``
        for rows the importer set aside (``row`` the source record, ``key`` the file) and the
        contract table otherwise (``row`` the row's position among that source's rows of the
        table, ``key`` the file and the row's key).
    extras : dict of str to DataFrame
        The importers' extras (e.g. dYdX open-interest caps), each with a ``source`` column.
    """

    tables: dict[str, pd.DataFrame]
    summary: pd.DataFrame
    quarantine: pd.DataFrame
    extras: dict[str, pd.DataFrame] = field(default_factory=dict)


def _is_data_file(path: Path) -> bool:
    return path.name.endswith(DATA_SUFFIXES) and not path.name.startswith(".")


def expand_sources(sources: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """Files to read (in the order given; a folder's files sorted by path, recursively) and
    the files of folders that are not data files (skipped, e.g. ``PROVENANCE.md``).

    Raises
    ------
    FairmarginInputError
        A source that does not exist, or no file to read at all.
    """
    files: list[Path] = []
    skipped: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            inside = sorted(q for q in p.rglob("*") if q.is_file())
            files.extend(q for q in inside if _is_data_file(q))
            skipped.extend(q for q in inside if not _is_data_file(q))
        elif p.is_file():
            files.append(p)
        else:
            raise FairmarginInputError(f"ingest: source must be a file or folder, got {str(p)!r}")
    seen: set[Path] = set()
    unique = []
    for f in files:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            unique.append(f)
    if not unique:
        raise FairmarginInputError(
            f"ingest: sources must hold at least one data file ({', '.join(DATA_SUFFIXES)}), "
            f"got none in {[str(s) for s in sources]}"
        )
    return unique, skipped


def read_sources(
    files: Sequence[Path],
    *,
    format: str | None = None,
    quarantine: bool = False,
    options: Mapping[str, Any] | None = None,
) -> list[SourceResult]:
    """Read each file with its importer (``format`` for all, else sniffed per file).

    With ``quarantine=False`` a file that cannot be read raises (the importer's one-line
    error); with ``quarantine=True`` it is kept as a :class:`SourceResult` with ``error``.
    """
    if format is not None and format not in READERS:
        raise FairmarginInputError(
            f"ingest: --format must be one of {sorted(READERS)}, got {format!r}"
        )
    out: list[SourceResult] = []
    for path in files:
        fmt = format or ""
        try:
            fmt = fmt or detect_format(path)
            res = read(path, format=fmt, **dict(options or {}))
        except (FairmarginError, ValueError, OSError, KeyError, TypeError) as exc:
            text = " ".join(str(exc).split())
            if not isinstance(exc, FairmarginError):
                text = f"ingest: {path} ({fmt or 'format unknown'}) must be readable, got " + (
                    f"{type(exc).__name__}: {text}"
                )
            if not quarantine:
                raise FairmarginInputError(text) from exc
            logger.warning("%s: unreadable, set aside: %s", path, text)
            out.append(SourceResult(path, fmt or "?", None, text))
            continue
        out.append(SourceResult(path, fmt, res))
        logger.info("read %s as %s: %d record(s)", path, fmt, res.rows_read)
    return out


def _columns(name: str, frames: Sequence[pd.DataFrame]) -> list[str]:
    cols = list(CONTRACT_COLUMNS[name])
    cols += [c for c in OPTIONAL_COLUMNS.get(name, {}) if any(c in f.columns for f in frames)]
    return cols


def _quarantine_rows(table: str, rows: Any, keys: Any, rules: Any) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "table": pd.Series([table] * len(rows), dtype="str"),
            "row": pd.Series(np.asarray(rows, dtype=np.int64)),
            "key": pd.Series(list(keys), dtype="str"),
            "rule": pd.Series(list(rules), dtype="str"),
        }
    )


def _empty_quarantine() -> pd.DataFrame:
    return _quarantine_rows("", [], [], [])


def _key_text(df: pd.DataFrame, key: list[str]) -> pd.Series:
    parts = [
        df[c].map(lambda v: v.isoformat() if isinstance(v, pd.Timestamp) else str(v)) for c in key
    ]
    text = parts[0]
    for p in parts[1:]:
        text = text + ", " + p
    return "(" + text + ")"


def _derive_contracts(
    merged: Mapping[str, pd.DataFrame], contracts: pd.DataFrame
) -> tuple[pd.DataFrame, list[str]]:
    """Contracts rows for every (venue, symbol) with rows in another table but none in
    ``contracts``; the symbols that are not ccxt unified symbols are returned as problems."""
    have = set(zip(contracts["venue"].astype(str), contracts["symbol"].astype(str), strict=True))
    need: set[tuple[str, str]] = set()
    for name in ("margin_tiers", "ohlcv", "order_books", "funding_rates"):
        df = merged.get(name)
        if df is not None and not df.empty:
            pairs = df[["venue", "symbol"]].drop_duplicates()
            need |= set(zip(pairs["venue"].astype(str), pairs["symbol"].astype(str), strict=True))
    venues, infos, problems = [], [], []
    for venue, symbol in sorted(need - have):
        try:
            infos.append(parse_unified(symbol))
            venues.append(venue)
        except ValueError as exc:
            problems.append(f"{venue} {symbol}: {exc}")
    frame = contracts_frame(venues, infos) if infos else contracts.iloc[:0]
    return frame[list(CONTRACT_COLUMNS["contracts"])], problems


def merge_results(sources: Sequence[SourceResult], *, quarantine: bool = False) -> IngestResult:
    """Merge the sources' tables into one set of contract tables (see the module docstring).

    Raises
    ------
    BundleValidationError
        Without ``quarantine``: an importer set rows aside, two sources disagree on a key, or
        a merged table breaks a contract rule (one line naming table, source, rows and rule).
    """
    qparts: list[pd.DataFrame] = []
    summary: list[dict[str, Any]] = []
    extras: dict[str, list[pd.DataFrame]] = {}
    for src in sources:
        res = src.result
        n_q = 0 if res is None else len(res.quarantine)
        if res is None:
            qparts.append(_quarantine_rows(IMPORT_TABLE, [0], [str(src.path)], [src.error]))
            n_q = 1
        elif n_q:
            if not quarantine:
                first = res.quarantine.iloc[0]
                raise BundleValidationError(
                    f"ingest: {src.path}: {n_q} source row(s) break the contract, e.g. row "
                    f"{int(first['row'])}: {first['rule']}; rerun with --quarantine to set "
                    "them aside"
                )
            qparts.append(
                _quarantine_rows(
                    IMPORT_TABLE,
                    res.quarantine["row"],
                    [str(src.path)] * n_q,
                    res.quarantine["rule"],
                )
            )
        summary.append(
            {
                "source": str(src.path),
                "format": src.format,
                "table": IMPORT_TABLE,
                "rows_read": 0 if res is None else res.rows_read,
                "rows_out": 0,
                "duplicates": 0,
                "quarantined": n_q,
                "kept": 0,
            }
        )
        if res is not None:
            for k, v in res.extras.items():
                extras.setdefault(k, []).append(v.assign(source=str(src.path)))

    # concatenate each table with its provenance (source index, position in that source)
    merged: dict[str, pd.DataFrame] = {}
    prov: dict[str, pd.DataFrame] = {}
    for name in _KEYS:
        frames, origin = [], []
        for i, src in enumerate(sources):
            df = None if src.result is None else src.result.tables.get(name)
            if df is None or df.empty:
                continue
            frames.append(df)
            origin.append(pd.DataFrame({"src": i, "pos": np.arange(len(df))}))
        if name == "contracts" or frames:
            cols = _columns(name, frames)
            if frames:
                body = pd.concat([f.reindex(columns=cols) for f in frames], ignore_index=True)
                where = pd.concat(origin, ignore_index=True)
            else:
                body = pd.DataFrame(
                    {c: pd.Series(dtype=t) for c, t in CONTRACT_COLUMNS[name].items()}
                )
                where = pd.DataFrame(
                    {"src": pd.Series(dtype="int64"), "pos": pd.Series(dtype="int64")}
                )
            merged[name], prov[name] = body, where

    derived, problems = _derive_contracts(merged, merged["contracts"])
    if problems:
        raise FairmarginInputError(
            f"ingest: symbols must be ccxt unified symbols to derive their contracts, got "
            f"{problems[:3]}"
        )
    n_src = len(sources)
    if len(derived):
        merged["contracts"] = pd.concat([merged["contracts"], derived], ignore_index=True)
        prov["contracts"] = pd.concat(
            [prov["contracts"], pd.DataFrame({"src": n_src, "pos": np.arange(len(derived))})],
            ignore_index=True,
        )
    names = [*(str(s.path) for s in sources), DERIVED]
    counts: dict[tuple[int, str], dict[str, int]] = {}

    def tally(name: str, src_idx: Any, what: str) -> None:
        vals, cnts = np.unique(np.asarray(src_idx, dtype=np.int64), return_counts=True)
        for i, n in zip(vals.tolist(), cnts.tolist(), strict=True):
            counts.setdefault((i, name), {}).setdefault(what, 0)
            counts[(i, name)][what] += n

    good: dict[str, pd.DataFrame] = {}
    for name in TABLE_ORDER:
        if name not in merged:
            continue
        df, where = merged[name], prov[name]
        tally(name, where["src"], "rows_out")
        key = _KEYS[name]
        dup = df.duplicated(keep="first").to_numpy()
        tally(name, where["src"][dup], "duplicates")
        df, where = df[~dup].reset_index(drop=True), where[~dup].reset_index(drop=True)
        conflict = df.duplicated(key, keep=False).to_numpy()
        if conflict.any():
            keys = _key_text(df[conflict], key)
            srcs = [names[i] for i in where["src"][conflict]]
            # a venue's own sources should agree: name every source holding the key
            holders = (
                pd.DataFrame({"k": keys.to_numpy(), "s": srcs})
                .groupby("k")["s"]
                .agg(lambda s: ", ".join(sorted(set(s))))
            )
            rules = [
                f"{name} key {k} must be unique across sources, got different values in "
                f"{holders[k]}"
                for k in keys
            ]
            if not quarantine:
                raise BundleValidationError(
                    f"ingest: {name}: {int(conflict.sum())} row(s) share a key with different "
                    f"values, e.g. {rules[0]}; rerun with --quarantine to set them aside"
                )
            qparts.append(
                _quarantine_rows(
                    name,
                    where["pos"][conflict],
                    [f"{s} {k}" for s, k in zip(srcs, keys, strict=True)],
                    rules,
                )
            )
            tally(name, where["src"][conflict], "quarantined")
            df, where = (
                df[~conflict].reset_index(drop=True),
                where[~conflict].reset_index(drop=True),
            )
        ok, bad = validate_table(name, df, tables=good, source=f"ingest {name}")
        if not bad.empty:
            rows = bad["row"].to_numpy(dtype=np.int64)
            src_names = [names[i] for i in where["src"].to_numpy()[rows]]
            if not quarantine:
                shown = bad.assign(
                    key=[f"{s} ({k})" for s, k in zip(src_names, bad["key"], strict=True)]
                )
                raise BundleValidationError(
                    describe_bad_rows(shown, source=f"ingest of {len(set(src_names))} source(s)"),
                    bad=bad,
                )
            qparts.append(
                _quarantine_rows(
                    name,
                    where["pos"].to_numpy()[rows],
                    [f"{s} ({k})" for s, k in zip(src_names, bad["key"], strict=True)],
                    bad["rule"],
                )
            )
            tally(name, where["src"].to_numpy()[rows], "quarantined")
            keep = np.ones(len(df), dtype=bool)
            keep[rows] = False
            tally(name, where["src"][keep], "kept")
        else:
            tally(name, where["src"], "kept")
        good[name] = ok

    for (i, name), c in sorted(counts.items()):
        summary.append(
            {
                "source": names[i],
                "format": sources[i].format if i < n_src else "derived",
                "table": name,
                "rows_read": 0,
                "rows_out": c.get("rows_out", 0),
                "duplicates": c.get("duplicates", 0),
                "quarantined": c.get("quarantined", 0),
                "kept": c.get("kept", 0),
            }
        )
    for name in ("margin_tiers", "ohlcv"):
        if name not in good:
            good[name] = validate_table(
                name,
                pd.DataFrame({c: pd.Series(dtype=t) for c, t in CONTRACT_COLUMNS[name].items()}),
                source="ingest",
            )[0]
    quar = pd.concat(qparts, ignore_index=True) if qparts else _empty_quarantine()
    quar = quar[list(QUARANTINE_COLUMNS)]
    order = {s: k for k, s in enumerate(names)}
    summ = pd.DataFrame(summary, columns=SUMMARY_COLUMNS)
    summ = summ.assign(_o=summ["source"].map(order), _t=summ["table"] != IMPORT_TABLE)
    summ = summ.sort_values(["_o", "_t", "table"], kind="stable").drop(columns=["_o", "_t"])
    return IngestResult(
        tables=good,
        summary=summ.reset_index(drop=True),
        quarantine=quar,
        extras={k: pd.concat(v, ignore_index=True) for k, v in extras.items()},
    )


def ingest(
    sources: Sequence[str | Path],
    *,
    format: str | None = None,
    quarantine: bool = False,
    options: Mapping[str, Any] | None = None,
) -> IngestResult:
    """Files and folders into merged contract tables, a summary and the rows set aside.

    Parameters
    ----------
    sources : sequence of str or Path
        Files, or folders (every data file inside, recursively, in sorted order).
    format : str, optional
        A :data:`pipelines.importers.READERS` name for every file; default: sniffed per file.
    quarantine : bool
        Set bad rows and unreadable files aside (with the reason) instead of raising.
    options : Mapping, optional
        Keyword options passed to every reader (e.g. ``venue``).

    Returns
    -------
    IngestResult
    """
    files, skipped = expand_sources(sources)
    for p in skipped:
        logger.info("ingest: %s is not a data file; skipped", p)
    read_ = read_sources(files, format=format, quarantine=quarantine, options=options)
    return merge_results(read_, quarantine=quarantine)


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as a fixed-width text table (one line per source and table)."""
    view = summary.copy()
    for c in ("rows_read", "rows_out", "duplicates", "quarantined", "kept"):
        view[c] = view[c].map(lambda v: f"{int(v):,}")
    return view.to_string(index=False)
