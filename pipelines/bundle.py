"""Read, check, quarantine and write bundles (DATA_CONTRACT.md, "Input: a bundle").

A bundle is a folder with one file per table, ``<table>.parquet`` or ``<table>.csv``.
:func:`read_bundle` reads it, checks every contract rule (:mod:`pipelines.contract`) and either
stops at the first table with bad rows (:class:`~pipelines.contract.BundleValidationError`, one
line naming table, file, rows and rule) or, with ``quarantine=True``, sets the bad rows aside in
``Bundle.quarantine`` and goes on with every good row. :func:`write_bundle` writes valid tables
atomically and byte-for-byte reproducibly; :func:`write_quarantine` writes the set-aside rows;
:func:`bundle_fingerprint` hashes the table files for MLflow datasets.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import pandas as pd
import pyarrow as pa

from features._checks import FairmarginInputError, require_columns
from pipelines.contract import (
    OPTIONAL_TABLES,
    QUARANTINE_COLUMNS,
    REQUIRED_TABLES,
    TABLE_ORDER,
    TABLES,
    BundleValidationError,
    coerce_table,
    describe_bad_rows,
    empty_quarantine,
    validate_table,
)

__all__ = [
    "QUARANTINE_FILE",
    "Bundle",
    "bundle_fingerprint",
    "read_bundle",
    "write_bundle",
    "write_quarantine",
]

logger = logging.getLogger(__name__)

QUARANTINE_FILE = "quarantine.parquet"
_FORMATS: tuple[Literal["parquet", "csv"], ...] = ("parquet", "csv")
_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False)
class Bundle:
    """The good rows of every table of a bundle, and the rows set aside.

    Every table has the contract dtypes, is sorted by its key and has a fresh RangeIndex.

    Attributes
    ----------
    path : Path
        The bundle folder.
    contracts, margin_tiers, ohlcv : pandas.DataFrame
        The required tables.
    order_books, option_quotes, funding_rates, truth : pandas.DataFrame or None
        Optional tables; None when the bundle does not hold them (or they were not asked for).
    quarantine : pandas.DataFrame
        ``table, row, key, rule`` for every row set aside (empty when clean); ``row`` is the
        0-based position in the table's file.
    """

    path: Path
    contracts: pd.DataFrame
    margin_tiers: pd.DataFrame
    ohlcv: pd.DataFrame
    order_books: pd.DataFrame | None
    option_quotes: pd.DataFrame | None
    funding_rates: pd.DataFrame | None
    truth: pd.DataFrame | None
    quarantine: pd.DataFrame

    def table(self, name: str) -> pd.DataFrame | None:
        """The table called ``name`` (a contract table name), None when absent."""
        if name not in TABLES:
            raise FairmarginInputError(
                f"Bundle.table: name must be one of {list(TABLES)}, got {name!r}"
            )
        return cast(pd.DataFrame | None, getattr(self, name))


def _table_files(folder: Path) -> dict[str, tuple[Path, Literal["parquet", "csv"]]]:
    found: dict[str, tuple[Path, Literal["parquet", "csv"]]] = {}
    for name in TABLE_ORDER:
        present = [(folder / f"{name}.{fmt}", fmt) for fmt in _FORMATS]
        present = [(p, fmt) for p, fmt in present if p.is_file()]
        if len(present) > 1:
            logger.warning(
                "%s: both %s.parquet and %s.csv are present; reading the Parquet file",
                folder,
                name,
                name,
            )
        if present:
            found[name] = present[0]
    known = {p for p, _ in found.values()} | {folder / QUARANTINE_FILE}
    ignored = sorted(
        p.name
        for p in folder.iterdir()
        if p.suffix in (".parquet", ".csv") and p not in known and not p.name.startswith(".")
    )
    if ignored:
        logger.warning("%s: ignoring file(s) that are not contract tables: %s", folder, ignored)
    return found


def _read_file(path: Path, fmt: Literal["parquet", "csv"], name: str) -> pd.DataFrame:
    """Read one table file; CSV columns of the contract's str kind are read as text, the others
    are inferred by pandas and parsed further by ``coerce_table``."""
    try:
        if fmt == "parquet":
            return pd.read_parquet(path)
        spec = TABLES[name]
        text = {c: "str" for c, cs in spec.column_specs(spec.optional).items() if cs.kind == "str"}
        return pd.read_csv(path, dtype=text, keep_default_na=True)
    except (OSError, ValueError, UnicodeDecodeError, pa.ArrowException) as exc:
        detail = " ".join(str(exc).split())
        raise FairmarginInputError(
            f"read_bundle: {path} must be a readable {fmt.upper()} table, got "
            f"{type(exc).__name__}: {detail}"
        ) from exc


def _wanted(tables: Collection[str] | None) -> set[str]:
    if tables is None:
        return set(TABLE_ORDER)
    if isinstance(tables, str):
        tables = [tables]
    if unknown := sorted(set(tables) - set(TABLES)):
        raise FairmarginInputError(
            f"read_bundle: tables must be among {list(TABLES)}, got unknown {unknown}"
        )
    return set(REQUIRED_TABLES) | set(tables)


def read_bundle(
    path: str | Path, *, quarantine: bool = False, tables: Collection[str] | None = None
) -> Bundle:
    """Read a bundle folder and check every rule of the data contract.

    Parameters
    ----------
    path : str or Path
        The bundle folder.
    quarantine : bool
        False (default): the first table with bad rows raises. True: bad rows go to
        ``Bundle.quarantine`` with their rule and every good row is kept.
    tables : Collection of str, optional
        Optional tables to read besides the required ones (default: every table present).

    Returns
    -------
    Bundle

    Raises
    ------
    FairmarginInputError
        The folder does not exist, or a table file cannot be parsed (the error names the file).
    BundleValidationError
        A required table or column is missing (even with ``quarantine=True``), a Parquet column
        has the wrong type, or (without quarantine) a table has bad rows: the message names
        the table, the file, the first bad rows with their key and rule, and how many there are.
    """
    folder = Path(path)
    if not folder.is_dir():
        state = "not a folder" if folder.exists() else "not found"
        raise FairmarginInputError(
            f"read_bundle: path must be a bundle folder, got {str(folder)!r} ({state})"
        )
    wanted = _wanted(tables)
    files = _table_files(folder)
    if missing := [t for t in REQUIRED_TABLES if t not in files]:
        raise BundleValidationError(
            f"read_bundle: {folder} must hold the required table(s) {missing} "
            f"(<table>.parquet or <table>.csv), got {sorted(files)} "
            "(a missing table cannot be quarantined)"
        )
    good: dict[str, pd.DataFrame] = {}
    bads: list[pd.DataFrame] = []
    for name in TABLE_ORDER:
        if name not in wanted or name not in files:
            continue
        file, fmt = files[name]
        df = coerce_table(name, _read_file(file, fmt, name), fmt=fmt, source=str(file))
        ok, bad = validate_table(name, df, tables=good, source=str(file))
        if not bad.empty:
            if not quarantine:
                raise BundleValidationError(describe_bad_rows(bad, source=str(file)), bad=bad)
            logger.warning("%s: %d of %d row(s) set aside in quarantine", file, len(bad), len(df))
            bads.append(bad)
        good[name] = ok
        logger.info("read %s: %d good row(s) (%s)", name, len(ok), fmt)
    _warn_references(good)
    q = pd.concat(bads, ignore_index=True) if bads else empty_quarantine()
    return Bundle(
        path=folder,
        contracts=good["contracts"],
        margin_tiers=good["margin_tiers"],
        ohlcv=good["ohlcv"],
        order_books=good.get("order_books"),
        option_quotes=good.get("option_quotes"),
        funding_rates=good.get("funding_rates"),
        truth=good.get("truth"),
        quarantine=q,
    )


def _pairs(df: pd.DataFrame) -> set[tuple[str, str]]:
    u = df[["venue", "symbol"]].drop_duplicates()
    return set(zip(u["venue"].astype(str), u["symbol"].astype(str), strict=True))


def _warn_references(good: Mapping[str, pd.DataFrame]) -> None:
    """References between tables (not rules of the contract): logged warnings."""
    known = _pairs(good["contracts"])
    for name in ("margin_tiers", "ohlcv", *OPTIONAL_TABLES):
        if name in good and name != "truth":
            unknown = sorted(_pairs(good[name]) - known)
            if unknown:
                logger.warning(
                    "%s: %d (venue, symbol) not in contracts, e.g. %s",
                    name,
                    len(unknown),
                    unknown[:3],
                )
    no_bars = sorted(_pairs(good["margin_tiers"]) - _pairs(good["ohlcv"]))
    if no_bars:
        logger.warning(
            "margin_tiers: %d schedule(s) without OHLCV, e.g. %s", len(no_bars), no_bars[:3]
        )


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    df.to_parquet(path, index=False, engine="pyarrow")
    _fsync(path)


def write_bundle(
    tables: Mapping[str, pd.DataFrame], path: str | Path, *, overwrite: bool = False
) -> Path:
    """Check tables against the contract and write them as a bundle, atomically.

    Each table goes to ``<name>.parquet`` (no index, contract dtypes, rows sorted by key) in a
    temporary folder beside ``path``, which is renamed into place at the end: a failure leaves
    no half-written bundle and no temporary folder. The same frames give the same bytes.

    Parameters
    ----------
    tables : Mapping[str, pandas.DataFrame]
        Table name to frame; the required tables must be there.
    path : str or Path
        The bundle folder to create.
    overwrite : bool
        Replace an existing non-empty folder (the old one is moved aside, the new one renamed
        into place, then the old one removed).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    BundleValidationError
        A table breaks the contract (the bundle is not written).
    FairmarginInputError
        Unknown table names, or ``path`` is a file or a non-empty folder without ``overwrite``.
    """
    target = Path(path)
    if unknown := sorted(set(tables) - set(TABLES)):
        raise FairmarginInputError(
            f"write_bundle: table names must be among {list(TABLES)}, got unknown {unknown}"
        )
    if missing := [t for t in REQUIRED_TABLES if t not in tables]:
        raise BundleValidationError(
            f"write_bundle: tables must include the required {list(REQUIRED_TABLES)}, "
            f"got no {missing}"
        )
    _check_target(target, overwrite=overwrite)
    clean: dict[str, pd.DataFrame] = {}
    for name in TABLE_ORDER:
        if name not in tables:
            continue
        source = f"write_bundle tables[{name!r}]"
        ok, bad = validate_table(name, tables[name], tables=clean, source=source)
        if not bad.empty:
            raise BundleValidationError(
                describe_bad_rows(
                    bad, source=source, hint="fix them: write_bundle writes only valid bundles"
                ),
                bad=bad,
            )
        clean[name] = ok
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)
        for name, df in clean.items():
            _write_parquet(df, tmp / f"{name}.parquet")
        _fsync(tmp)
        _swap_into_place(tmp, target, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):
        _fsync(target.parent)
    logger.info("wrote bundle %s: %s", target, {k: len(v) for k, v in clean.items()})
    return target


def _check_target(target: Path, *, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise FairmarginInputError(f"write_bundle: path must be a folder, got a file {target}")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise FairmarginInputError(
            f"write_bundle: path must be absent or empty, got a non-empty folder {target}; "
            "pass overwrite=True to replace it"
        )


def _swap_into_place(tmp: Path, target: Path, *, overwrite: bool) -> None:
    if not target.exists():
        os.rename(tmp, target)
        return
    _check_target(target, overwrite=overwrite)
    if not any(target.iterdir()):
        os.replace(tmp, target)  # POSIX rename replaces an empty folder atomically
        return
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_quarantine(quarantine: pd.DataFrame, out_dir: Path) -> Path | None:
    """Write the rows set aside to ``out_dir/quarantine.parquet`` (atomically).

    Parameters
    ----------
    quarantine : pandas.DataFrame
        ``table, row, key, rule`` (``Bundle.quarantine``).
    out_dir : Path
        The output folder (created when missing).

    Returns
    -------
    Path or None
        The file written; None when there is nothing to set aside (a stale
        ``quarantine.parquet`` from an earlier run is then removed).
    """
    require_columns(quarantine, QUARANTINE_COLUMNS, who="write_quarantine")
    out_dir = Path(out_dir)
    dest = out_dir / QUARANTINE_FILE
    if quarantine.empty:
        if dest.exists():
            dest.unlink()
            logger.info("removed stale %s: nothing set aside this run", dest)
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        {
            "table": quarantine["table"].astype("str"),
            "row": quarantine["row"].astype("int64"),
            "key": quarantine["key"].astype("str"),
            "rule": quarantine["rule"].astype("str"),
        }
    )
    tmp = out_dir / f".{QUARANTINE_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_parquet(frame, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.warning("%d bad row(s) set aside in %s", len(frame), dest)
    return dest


def bundle_fingerprint(path: str | Path) -> str:
    """SHA-256 over the bundle's table files (names and bytes), e.g. for MLflow datasets.

    Only contract tables count (``<table>.parquet`` / ``<table>.csv``), in name order; other
    files (a README, a quarantine file) do not change the fingerprint.

    Returns
    -------
    str
        64 hexadecimal digits.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FairmarginInputError(
            f"bundle_fingerprint: path must be a bundle folder, got {str(folder)!r}"
        )
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.stem in TABLES and p.suffix in (".parquet", ".csv")
    )
    if not files:
        raise FairmarginInputError(f"bundle_fingerprint: {folder} must hold table files, got none")
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}\0{p.stat().st_size}\0".encode())
        with p.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
