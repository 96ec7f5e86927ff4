"""The bundle data contract: table specs, type coercion and row rules (DATA_CONTRACT.md).

Data enters fairmargin here. :func:`coerce_table` gives each column its contract type and
records values it cannot parse; :func:`validate_table` checks every rule of the contract and
splits a table into good rows and bad rows (``table, row, key, rule``), so that a caller either
stops with a clear error (:func:`describe_bad_rows`) or sets the bad rows aside (quarantine).

Table errors (a missing required column, a column of the wrong type in a Parquet file) raise
:class:`BundleValidationError` at once and are never quarantinable. Row errors never raise here.

Everything is vectorised: no Python loop runs over the rows of a table, only over bad rows when
their messages are joined.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from features._checks import FairmarginInputError, require_columns

__all__ = [
    "OPTIONAL_TABLES",
    "QUARANTINE_COLUMNS",
    "REQUIRED_TABLES",
    "TABLES",
    "TABLE_ORDER",
    "UNPARSEABLE_PREFIX",
    "BundleValidationError",
    "ColumnSpec",
    "TableSpec",
    "coerce_table",
    "describe_bad_rows",
    "empty_quarantine",
    "validate_table",
]

logger = logging.getLogger(__name__)

ColumnKind = Literal["str", "bool", "int", "float", "ts"]
Fmt = Literal["parquet", "csv"]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]
Messages = Callable[[IntArray], Any]

UNPARSEABLE_PREFIX = "_unparseable:"
"""Prefix of the columns in which :func:`coerce_table` records, per row, why a value of the
column after the prefix could not be parsed (null where it parsed). :func:`validate_table` turns
them into row errors and drops them."""

QUARANTINE_COLUMNS = ("table", "row", "key", "rule")

_STR = pd.StringDtype(na_value=np.nan)
_TS_DTYPE = pd.DatetimeTZDtype(unit="ns", tz="UTC")
_UTC_NAMES = frozenset({"UTC", "utc", "+00:00"})
_TIMEFRAME_RE = r"[1-9][0-9]*(?:s|m|h|d|w|M|y)"
_REL = 1e-12  # tolerance of "rates do not fall" (as the validator)
_CONTIG_TOL = 1e-9  # tolerance of "min_notional == previous max_notional"
_BAND_TOL = 1e-9  # tolerance of the truth deviation bands
_MAX_LISTED = 3  # rows listed in a message before "..."


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """Type of one contract column.

    Parameters
    ----------
    kind : {"str", "bool", "int", "float", "ts"}
        Contract type; ``ts`` is a UTC timestamp.
    nullable : bool
        Whether a null is allowed.
    """

    kind: ColumnKind
    nullable: bool = False


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One table of a bundle.

    Parameters
    ----------
    name : str
        Table name, also the file stem (``<name>.parquet`` or ``<name>.csv``).
    columns : Mapping[str, ColumnSpec]
        Required columns, in contract order.
    key : tuple of str
        Columns whose values identify a row.
    required : bool
        Whether every bundle must hold the table.
    optional : Mapping[str, ColumnSpec]
        Columns that may be present; typed and checked when they are.
    """

    name: str
    columns: Mapping[str, ColumnSpec]
    key: tuple[str, ...]
    required: bool = False
    optional: Mapping[str, ColumnSpec] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if missing := [k for k in self.key if k not in self.columns]:
            raise ValueError(f"TableSpec {self.name}: key must be columns, got unknown {missing}")
        for k in self.key:
            if self.columns[k].nullable:
                raise ValueError(f"TableSpec {self.name}: key column {k} must not be nullable")

    def column_specs(self, present: Iterable[Any]) -> dict[str, ColumnSpec]:
        """Required columns then the optional ones found in ``present``, in contract order."""
        have = {str(c) for c in present}
        out = dict(self.columns)
        out.update({c: s for c, s in self.optional.items() if c in have})
        return out


def _c(kind: ColumnKind, nullable: bool = False) -> ColumnSpec:
    return ColumnSpec(kind, nullable)


_VS = {"venue": _c("str"), "symbol": _c("str")}

TABLES: Mapping[str, TableSpec] = MappingProxyType(
    {
        "contracts": TableSpec(
            "contracts",
            {
                **_VS,
                "type": _c("str"),
                "base": _c("str"),
                "quote": _c("str"),
                "settle": _c("str"),
                "linear": _c("bool"),
                "contract_size": _c("float"),
                "expiry": _c("ts", True),
                "strike": _c("float", True),
                "option_type": _c("str", True),
            },
            key=("venue", "symbol"),
            required=True,
        ),
        "margin_tiers": TableSpec(
            "margin_tiers",
            {
                **_VS,
                "as_of": _c("ts"),
                "tier": _c("int"),
                "min_notional": _c("float"),
                "max_notional": _c("float"),
                "maintenance_margin_rate": _c("float", True),
                "max_leverage": _c("float"),
                "initial_margin_rate": _c("float", True),
            },
            key=("venue", "symbol", "as_of", "tier"),
            required=True,
        ),
        "ohlcv": TableSpec(
            "ohlcv",
            {
                **_VS,
                "timeframe": _c("str"),
                "timestamp": _c("ts"),
                "open": _c("float"),
                "high": _c("float"),
                "low": _c("float"),
                "close": _c("float"),
                "volume": _c("float"),
            },
            key=("venue", "symbol", "timeframe", "timestamp"),
            required=True,
        ),
        "order_books": TableSpec(
            "order_books",
            {
                **_VS,
                "timestamp": _c("ts"),
                "side": _c("str"),
                "level": _c("int"),
                "price": _c("float"),
                "amount": _c("float"),
            },
            key=("venue", "symbol", "timestamp", "side", "level"),
        ),
        "option_quotes": TableSpec(
            "option_quotes",
            {
                "venue": _c("str"),
                "underlying": _c("str"),
                "symbol": _c("str"),
                "timestamp": _c("ts"),
                "expiry": _c("ts"),
                "strike": _c("float"),
                "option_type": _c("str"),
                "mark_iv": _c("float"),
                "underlying_price": _c("float"),
            },
            key=("venue", "symbol", "timestamp"),
            optional=MappingProxyType(
                {
                    "bid_iv": _c("float", True),
                    "ask_iv": _c("float", True),
                    "delta": _c("float", True),
                    "open_interest": _c("float", True),
                }
            ),
        ),
        "funding_rates": TableSpec(
            "funding_rates",
            {**_VS, "timestamp": _c("ts"), "funding_rate": _c("float")},
            key=("venue", "symbol", "timestamp"),
        ),
        "truth": TableSpec(
            "truth",
            {
                **_VS,
                "as_of": _c("ts"),
                "tier": _c("int"),
                "fair_initial_margin_rate": _c("float"),
                "planted": _c("bool"),
                "planted_deviation": _c("float"),
            },
            key=("venue", "symbol", "as_of", "tier"),
            optional=MappingProxyType({"implied_horizon_minutes": _c("float", True)}),
        ),
    }
)
"""Every table of the contract by name."""

REQUIRED_TABLES = ("contracts", "margin_tiers", "ohlcv")
OPTIONAL_TABLES = ("order_books", "option_quotes", "funding_rates", "truth")
TABLE_ORDER = REQUIRED_TABLES + OPTIONAL_TABLES
"""Order in which tables are read and validated (truth is checked against margin_tiers)."""


class BundleValidationError(FairmarginInputError):
    """A bundle table breaks the data contract.

    Parameters
    ----------
    message : str
        One readable line naming table, file, row(s) and rule.
    bad : pandas.DataFrame, optional
        The bad rows (``table, row, key, rule``) when the error is about rows.
    """

    def __init__(self, message: str, *, bad: pd.DataFrame | None = None) -> None:
        super().__init__(message)
        self.bad = bad


def empty_quarantine() -> pd.DataFrame:
    """An empty quarantine frame with the columns ``table, row, key, rule`` and their dtypes."""
    return pd.DataFrame(
        {
            "table": pd.Series([], dtype=_STR),
            "row": pd.Series([], dtype=np.int64),
            "key": pd.Series([], dtype=_STR),
            "rule": pd.Series([], dtype=_STR),
        }
    )


def _table_spec(name: str, *, who: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise FairmarginInputError(
            f"{who}: name must be one of {list(TABLES)}, got {name!r}"
        ) from None


# --------------------------------------------------------------------------------------------
# coercion
# --------------------------------------------------------------------------------------------


def coerce_table(name: str, df: pd.DataFrame, *, fmt: Fmt, source: str) -> pd.DataFrame:
    """Give every column of a bundle table its contract type.

    Strings become the pandas ``str`` dtype, timestamps ``datetime64[ns, UTC]`` (in CSV either
    ISO-8601 strings, naive ones read as UTC, or integer milliseconds since the epoch), ints
    ``int64``, floats ``float64`` and bools ``bool``. While rows may still be bad, an int or bool
    column with nulls is held as ``Int64`` or ``boolean``; :func:`validate_table` returns the
    plain dtypes.

    A value that cannot be parsed becomes null and its reason is recorded in a column
    ``UNPARSEABLE_PREFIX + column`` (a row error, quarantinable). Columns outside the contract
    are dropped with a logged warning. The index is replaced by a RangeIndex, so the row number
    of a message is the 0-based position in ``df``.

    Parameters
    ----------
    name : str
        Table name, a key of :data:`TABLES`.
    df : pandas.DataFrame
        The table as read.
    fmt : {"parquet", "csv"}
        ``"parquet"`` is strict: a column of the wrong dtype (naive or non-UTC timestamps, floats
        in an int column, numbers in a str column) is a table error. ``"csv"`` parses text.
    source : str
        The file (or another description) named in messages.

    Returns
    -------
    pandas.DataFrame
        Contract columns in contract order, then any ``UNPARSEABLE_PREFIX`` columns.

    Raises
    ------
    BundleValidationError
        A required column is missing, column names repeat, or (Parquet) a column has the wrong
        dtype. Never quarantinable.
    """
    spec = _table_spec(name, who="coerce_table")
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"coerce_table: fmt must be 'parquet' or 'csv', got {fmt!r}")
    who = f"{name} ({source})"
    cols = [str(c) for c in df.columns]
    if len(set(cols)) != len(cols):
        dups = sorted({c for c in cols if cols.count(c) > 1})
        raise BundleValidationError(f"{who}: column names must be unique, got repeated {dups}")
    if missing := [c for c in spec.columns if c not in cols]:
        raise BundleValidationError(
            f"{who}: missing required column(s) {missing}; got {sorted(cols)} "
            "(a table error: it cannot be quarantined)"
        )
    specs = spec.column_specs(cols)
    reserved = [c for c in cols if c.startswith(UNPARSEABLE_PREFIX)]
    if extra := [c for c in cols if c not in specs and c not in reserved]:
        logger.warning("%s: dropping column(s) not in the contract: %s", who, extra)
    frame = df.set_axis(cols, axis=1).reset_index(drop=True)
    out: dict[str, pd.Series] = {}
    notes: dict[str, pd.Series] = {c: frame[c].astype(_STR) for c in reserved}
    for col, cs in specs.items():
        values, why = _coerce_column(frame[col], cs, fmt=fmt, who=who, col=col)
        out[col] = values
        if why is not None:
            note = UNPARSEABLE_PREFIX + col
            old = notes.get(note)
            notes[note] = why if old is None else old.where(old.notna(), why)
    return pd.DataFrame({**out, **notes}, index=frame.index)


def _coerce_column(
    s: pd.Series, cs: ColumnSpec, *, fmt: Fmt, who: str, col: str
) -> tuple[pd.Series, pd.Series | None]:
    if isinstance(s.dtype, pd.CategoricalDtype):
        try:
            s = s.astype(s.cat.categories.dtype)
        except (TypeError, ValueError):
            s = s.astype(object)
    if cs.kind == "str":
        return _coerce_str(s, fmt=fmt, who=who, col=col), None
    if cs.kind == "bool":
        return _coerce_bool(s, fmt=fmt, who=who, col=col)
    if cs.kind == "int":
        return _coerce_int(s, fmt=fmt, who=who, col=col)
    if cs.kind == "float":
        return _coerce_float(s, fmt=fmt, who=who, col=col)
    return _coerce_ts(s, fmt=fmt, who=who, col=col)


def _all_null(s: pd.Series) -> bool:
    return bool(s.isna().all())


def _wrong_dtype(who: str, col: str, want: str, s: pd.Series, hint: str = "") -> NoReturn:
    raise BundleValidationError(
        f"{who}: column {col} must be {want}, got dtype {s.dtype}{hint} "
        "(a table error: it cannot be quarantined)"
    )


def _why(s: pd.Series, bad: pd.Series, text: str) -> pd.Series | None:
    """Reason per row where ``bad`` (``text`` followed by the quoted raw value), else null."""
    if not bool(bad.any()):
        return None
    raw = s[bad].astype(str).str.slice(0, 60).str.replace("\n", "\\n", regex=False)
    return (text + ", got '" + raw + "'").reindex(s.index)


def _coerce_str(s: pd.Series, *, fmt: Fmt, who: str, col: str) -> pd.Series:
    if s.dtype == object:
        inferred = pd.api.types.infer_dtype(s, skipna=True)
        if inferred in ("string", "empty") or fmt == "csv":
            return s.astype(_STR)
        _wrong_dtype(who, col, "str", s, f" holding {inferred} values")
    if isinstance(s.dtype, pd.StringDtype):
        return s.astype(_STR)
    if _all_null(s):
        return pd.Series(np.nan, index=s.index, dtype=_STR)
    if fmt == "csv":
        return s.astype(_STR)
    _wrong_dtype(who, col, "str", s)


def _coerce_bool(
    s: pd.Series, *, fmt: Fmt, who: str, col: str
) -> tuple[pd.Series, pd.Series | None]:
    if s.dtype == bool:
        return s, None
    if pd.api.types.is_bool_dtype(s.dtype):  # nullable "boolean"
        return s.astype("boolean"), None
    if _all_null(s):
        return pd.Series(pd.NA, index=s.index, dtype="boolean"), None
    textual = isinstance(s.dtype, pd.StringDtype)
    if s.dtype == object:
        inferred = pd.api.types.infer_dtype(s, skipna=True)
        if inferred == "boolean":
            return s.astype("boolean"), None
        textual = inferred == "string"
    if fmt == "csv" and textual:
        low = s.astype(_STR).str.strip().str.lower()
        is_t = low.eq("true").fillna(False).to_numpy(dtype=bool)
        is_f = low.eq("false").fillna(False).to_numpy(dtype=bool)
        out = pd.Series(pd.array(is_t, dtype="boolean"), index=s.index)
        out[~(is_t | is_f)] = pd.NA
        bad = s.notna() & ~pd.Series(is_t | is_f, index=s.index)
        return out, _why(s, bad, f"{col} must be true or false")
    _wrong_dtype(who, col, "bool", s)


def _coerce_int(
    s: pd.Series, *, fmt: Fmt, who: str, col: str
) -> tuple[pd.Series, pd.Series | None]:
    if pd.api.types.is_bool_dtype(s.dtype):
        _wrong_dtype(who, col, "int64", s)
    if pd.api.types.is_integer_dtype(s.dtype):
        if isinstance(s.dtype, np.dtype):
            return s.astype(np.int64), None
        return s.astype("Int64"), None
    if _all_null(s):
        return pd.Series(pd.NA, index=s.index, dtype="Int64"), None
    if fmt == "parquet":
        # an int column with nulls reads back as float: its nulls are row errors, but a float
        # column without nulls, or with fractions, is a column of the wrong type
        arr = s.to_numpy(dtype=np.float64, na_value=np.nan) if _is_float(s) else None
        if arr is None or not np.isnan(arr).any() or not _integral(arr[~np.isnan(arr)]).all():
            _wrong_dtype(who, col, "int64", s)
    num = _to_number(s)
    arr = num.to_numpy(dtype=float, na_value=np.nan)
    integral = _integral(arr)
    out = pd.Series(
        pd.array(np.where(integral, arr, 0).astype(np.int64), dtype="Int64"), index=s.index
    )
    out[~integral] = pd.NA
    bad = s.notna() & ~pd.Series(integral, index=s.index)
    return out, _why(s, bad, f"{col} must be an integer")


def _is_float(s: pd.Series) -> bool:
    return pd.api.types.is_float_dtype(s.dtype)


def _integral(arr: NDArray[np.float64]) -> BoolArray:
    """True where a float is finite and whole."""
    finite = np.isfinite(arr)
    return finite & (np.floor(np.where(finite, arr, 0.0)) == arr)


def _to_number(s: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        return s
    text = s.astype(_STR).str.strip()
    return pd.to_numeric(text, errors="coerce")


def _coerce_float(
    s: pd.Series, *, fmt: Fmt, who: str, col: str
) -> tuple[pd.Series, pd.Series | None]:
    if pd.api.types.is_bool_dtype(s.dtype):
        _wrong_dtype(who, col, "float64", s)
    if pd.api.types.is_numeric_dtype(s.dtype):
        return pd.Series(s.to_numpy(dtype=np.float64, na_value=np.nan), index=s.index), None
    if _all_null(s):
        return pd.Series(np.nan, index=s.index, dtype=np.float64), None
    if fmt == "parquet":
        ok = s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) in (
            "floating",
            "integer",
            "mixed-integer-float",
            "decimal",
        )
        if not ok:
            _wrong_dtype(who, col, "float64", s)
        return pd.Series(
            pd.to_numeric(s).to_numpy(dtype=np.float64, na_value=np.nan), index=s.index
        ), None
    num = _to_number(s)
    out = pd.Series(num.to_numpy(dtype=np.float64, na_value=np.nan), index=s.index)
    return out, _why(s, s.notna() & out.isna(), f"{col} must be a number")


def _is_utc(tz: Any) -> bool:
    return str(tz) in _UTC_NAMES


def _coerce_ts(
    s: pd.Series, *, fmt: Fmt, who: str, col: str
) -> tuple[pd.Series, pd.Series | None]:
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        if not _is_utc(s.dtype.tz):
            raise BundleValidationError(
                f"{who}: column {col} must be in UTC, got timezone {s.dtype.tz}; convert it "
                "with .dt.tz_convert('UTC') (a table error: it cannot be quarantined)"
            )
        return _to_ns(s, s, col, None)
    if _all_null(s):
        return pd.Series(pd.NaT, index=s.index, dtype=_TS_DTYPE), None
    if pd.api.types.is_datetime64_dtype(s.dtype):
        if fmt == "parquet":
            _wrong_dtype(
                who,
                col,
                "a timezone-aware UTC timestamp",
                s,
                "; if the values are UTC, localise them with .dt.tz_localize('UTC')",
            )
        return _to_ns(s.dt.tz_localize("UTC"), s, col, None)
    if fmt == "parquet":
        _wrong_dtype(who, col, "a timezone-aware UTC timestamp", s)
    known = s.notna().to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        num, is_num, text = s, known, None
    else:  # numbers (milliseconds) among the text are parsed as such, the rest as ISO-8601
        text = s.astype(_STR).str.strip()
        is_num = _b(text.str.fullmatch(r"[+-]?[0-9]+(?:\.[0-9]*)?"))
        num = pd.to_numeric(text.where(is_num), errors="coerce")
    parts = [pd.to_datetime(num[is_num], unit="ms", utc=True, errors="coerce")]
    if text is not None and (iso := known & ~is_num).any():
        parts.append(pd.to_datetime(text[iso], utc=True, format="ISO8601", errors="coerce"))
    parsed = pd.concat(parts).reindex(s.index)
    why = _why(
        s,
        s.notna() & parsed.isna(),
        f"{col} must be an ISO-8601 string or integer milliseconds since the epoch",
    )
    return _to_ns(parsed, s, col, why)


_TS_MIN = pd.Timestamp.min.tz_localize("UTC")
_TS_MAX = pd.Timestamp.max.tz_localize("UTC")


def _to_ns(
    ts: pd.Series, raw: pd.Series, col: str, why: pd.Series | None
) -> tuple[pd.Series, pd.Series | None]:
    """Cast a UTC series to nanoseconds; values outside that range become row errors."""
    if ts.dtype == _TS_DTYPE:
        return ts, why
    oob = ts.notna() & ((ts < _TS_MIN) | (ts > _TS_MAX))
    if bool(oob.any()):
        far = _why(raw, oob, f"{col} must lie within 1677-09-22..2262-04-11 (datetime64[ns])")
        assert far is not None
        why = far if why is None else why.where(why.notna(), far)
        ts = ts.where(~oob)
    return ts.astype(_TS_DTYPE), why


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


class _Findings:
    """Row errors collected rule by rule: row positions and one message per row."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rows: list[IntArray] = []
        self.msgs: list[pd.Series] = []
        self.primary = np.zeros(n, dtype=bool)  # bad by their own values: break their group
        self.extra_copy = np.zeros(n, dtype=bool)  # exact duplicates: the first copy stays

    def add(self, mask: BoolArray, rule: str | Messages, *, primary: bool = True) -> None:
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return
        msgs = _text(rule, rows.size) if isinstance(rule, str) else _text(rule(rows))
        self.rows.append(rows)
        self.msgs.append(msgs)
        if primary:
            self.primary[rows] = True
        else:
            self.extra_copy[rows] = True

    @property
    def bad(self) -> BoolArray:
        out = np.zeros(self.n, dtype=bool)
        for rows in self.rows:
            out[rows] = True
        return out

    def collect(self) -> tuple[IntArray, pd.Series]:
        """Bad rows ascending and their rules joined with '; ' in the order they were added."""
        rows_bad = np.flatnonzero(self.bad)
        if rows_bad.size == 0:
            return rows_bad, pd.Series([], dtype=_STR)
        at = np.full(self.n, -1, dtype=np.int64)
        at[rows_bad] = np.arange(rows_bad.size)
        columns = []
        for rows, msgs in zip(self.rows, self.msgs, strict=True):  # one column per rule
            idx = np.full(rows_bad.size, -1, dtype=np.int64)
            idx[at[rows]] = np.arange(rows.size)
            texts = pa.array(msgs).cast(pa.large_string())
            columns.append(pc.take(texts, pa.array(idx, mask=idx < 0)))
        sep = pa.scalar("; ", pa.large_string())
        joined = pc.binary_join_element_wise(*columns, sep, null_handling="skip")
        return rows_bad, _text(joined.to_pandas())


def _b(values: Any) -> BoolArray:
    """A boolean numpy array, nulls read as False."""
    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    return s.fillna(False).to_numpy(dtype=bool)


def _f(s: pd.Series) -> NDArray[np.float64]:
    return s.to_numpy(dtype=np.float64, na_value=np.nan)


def _text(x: Any, size: int = 0) -> pd.Series:
    """A ``str`` Series with a RangeIndex from a Series, an array, or a str repeated ``size``."""
    if isinstance(x, str):
        return pd.Series(x, index=pd.RangeIndex(size), dtype=_STR)
    if isinstance(x, pd.Series):
        x = x.reset_index(drop=True)
        return x if x.dtype == _STR else x.astype(_STR)
    return pd.Series(np.asarray(x).astype(str), dtype=_STR)


def _cat(*parts: Any) -> pd.Series:
    """Element-wise concatenation of str scalars and string Series or arrays (one at least)."""
    out: Any = ""
    for p in parts:
        out = out + (p if isinstance(p, str) else _text(p))
    assert isinstance(out, pd.Series)
    return out


def _round_sig(values: NDArray[np.float64], digits: int = 10) -> NDArray[np.float64]:
    """Round to ``digits`` significant digits (so -0.20000000000000007 reads -0.2)."""
    a = np.asarray(values, dtype=np.float64)
    out = a.copy()
    ok = np.isfinite(a) & (a != 0)
    mag = np.floor(np.log10(np.abs(np.where(ok, a, 1.0))))
    shift = digits - 1 - mag
    up = ok & (shift >= 0) & (shift <= 300)
    down = ok & (shift < 0)
    scale = 10.0 ** shift[up]
    out[up] = np.round(a[up] * scale) / scale
    scale = 10.0 ** -shift[down]
    out[down] = np.round(a[down] / scale) * scale
    return out


def _num(values: NDArray[np.float64]) -> pd.Series:
    """Numbers to 10 significant digits, shortest text ('-5', '250000', '0.0125', 'inf')."""
    arr = pa.array(_round_sig(values), from_pandas=True)
    return _text(pc.cast(arr, pa.string()).to_pandas()).fillna("null")


def _formatted(u: pd.Series, *, quote: bool) -> pd.Series:
    """Distinct non-null values as text."""
    if isinstance(u.dtype, pd.DatetimeTZDtype):
        naive = u.dt.tz_convert(None).to_numpy()
        frac = bool(((u.dt.microsecond != 0) | (u.dt.nanosecond != 0)).any())
        iso = np.datetime_as_string(naive, unit="auto" if frac else "s")
        return _text(iso) + "Z"
    if pd.api.types.is_bool_dtype(u.dtype):
        return _text(np.where(u.to_numpy(dtype=bool), "true", "false"))
    if pd.api.types.is_numeric_dtype(u.dtype):
        return _num(u.to_numpy(dtype=np.float64, na_value=np.nan))
    text = u.astype(_STR).str.slice(0, 60).str.replace("\n", "\\n", regex=False)
    return "'" + text + "'" if quote else text


def _show(s: pd.Series, rows: IntArray, *, quote: bool = True) -> pd.Series:
    """Values of ``s`` at ``rows`` as short strings for messages (nulls as 'null').

    Each distinct value is formatted once (keys repeat a lot).
    """
    codes, uniq = pd.factorize(s.iloc[rows], use_na_sentinel=True)
    shown = pd.concat(
        [_formatted(pd.Series(uniq), quote=quote), _text("null", 1)], ignore_index=True
    )
    return shown.take(np.where(codes < 0, len(uniq), codes)).reset_index(drop=True)


def _render_key(df: pd.DataFrame, key: tuple[str, ...], rows: IntArray) -> pd.Series:
    if rows.size == 0:
        return pd.Series([], dtype=_STR)
    parts: list[Any] = []
    for i, k in enumerate(key):
        shown = _show(df[k], rows, quote=False)
        if pd.api.types.is_integer_dtype(df[k].dtype):
            shown = f"{k} " + shown
        parts.extend([", " if i else "", shown])
    return _cat(*parts)


class _Codes:
    """Integer codes of the columns of one frame, in the sort order of their values.

    Each column is factorised once per validation and reused for keys, groups and sorting.
    """

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        self._cols: dict[str, tuple[NDArray[np.int64], int]] = {}

    def column(self, col: str) -> tuple[NDArray[np.int64], int]:
        if col not in self._cols:
            cc, uniq = pd.factorize(self.df[col], sort=True, use_na_sentinel=True)
            self._cols[col] = (np.asarray(cc, dtype=np.int64), max(len(uniq), 1))
        return self._cols[col]

    def combined(self, cols: Iterable[str]) -> NDArray[np.int64]:
        """One code per distinct combination, ordered lexicographically; -1 where any is null."""
        n = len(self.df)
        out = np.zeros(n, dtype=np.int64)
        valid = np.ones(n, dtype=bool)
        bound = 1
        for col in cols:
            cc, k = self.column(col)
            valid &= cc >= 0
            if bound * k >= 2**62:  # compress before the product overflows
                out = np.asarray(pd.factorize(out, sort=True)[0], dtype=np.int64)
                bound = int(out.max()) + 1 if n else 1
            out = out * k + np.maximum(cc, 0)
            bound *= k
        out[~valid] = -1
        return out


def _row_codes(df: pd.DataFrame, cols: Iterable[str]) -> NDArray[np.int64]:
    """One integer per distinct full row (nulls equal to nulls)."""
    codes = np.zeros(len(df), dtype=np.int64)
    for i, c in enumerate(cols):
        cc, uniq = pd.factorize(df[c], use_na_sentinel=False)
        codes = codes * (len(uniq) + 1) + cc if i else cc.astype(np.int64)
        if i:
            codes = pd.factorize(codes)[0].astype(np.int64)
    return codes


def _list_rows(rows: NDArray[Any]) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_MAX_LISTED])
    more = ", ..." if len(rows) > _MAX_LISTED else ""
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}{more}"


def _mapped(codes: NDArray[np.int64], texts: Mapping[int, str]) -> pd.Series:
    """The text of each code."""
    return _text(pd.Series(codes).map(texts))


def _rows_by_group(group: NDArray[np.int64], rows: IntArray) -> dict[int, str]:
    """For each group, its first rows (ascending) as 'row 3' or 'rows 3, 9'."""
    order = np.lexsort((rows, group))
    g, r = group[order], rows[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    return {int(g[a]): _list_rows(r[a:b]) for a, b in itertools.pairwise(bounds)}


def validate_table(
    name: str,
    df: pd.DataFrame,
    *,
    tables: Mapping[str, pd.DataFrame] | None = None,
    source: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every contract rule of one table and split it into good and bad rows.

    Rules: nulls in non-nullable columns, values that did not parse, non-finite floats,
    enumerations, numeric ranges, OHLC consistency, duplicate keys, and the structure of
    margin schedules (per venue, symbol, as_of) and book snapshots (per venue, symbol,
    timestamp), which are set aside whole when any of their rows is bad. ``truth`` is also
    checked against ``tables["margin_tiers"]`` when given.

    Parameters
    ----------
    name : str
        Table name, a key of :data:`TABLES`.
    df : pandas.DataFrame
        The table, ideally from :func:`coerce_table`; a frame with the contract dtypes works too
        (it is coerced with the strict Parquet rules).
    tables : Mapping[str, pandas.DataFrame], optional
        Good rows of tables validated before (``margin_tiers`` for ``truth``).
    source : str, optional
        The file named in table errors; ``"<frame>"`` by default.

    Returns
    -------
    good : pandas.DataFrame
        Good rows with contract dtypes, sorted by the key, with a fresh RangeIndex.
    bad : pandas.DataFrame
        ``table, row, key, rule``: one row per bad input row (its 0-based position), its key
        rendered as text and every rule it breaks joined by ``'; '``; sorted by row.

    Raises
    ------
    BundleValidationError
        Table errors only (see :func:`coerce_table`; a ``truth`` table that misses a latest
        margin schedule entirely).
    """
    spec = _table_spec(name, who="validate_table")
    src = source if source is not None else "<frame>"
    df = coerce_table(name, df, fmt="parquet", source=src)
    cols = [c for c in df.columns if not c.startswith(UNPARSEABLE_PREFIX)]
    specs = spec.column_specs(cols)
    f = _Findings(len(df))

    unparsed_cols: dict[str, BoolArray] = {}
    for c in df.columns:
        if c.startswith(UNPARSEABLE_PREFIX):
            why = df[c]
            mask = why.notna().to_numpy(dtype=bool)
            unparsed_cols[c.removeprefix(UNPARSEABLE_PREFIX)] = mask
            f.add(mask, _texts(why))

    for col, cs in specs.items():
        s = df[col]
        skip = unparsed_cols.get(col, np.zeros(len(df), dtype=bool))
        if not cs.nullable:
            null = s.isna().to_numpy(dtype=bool) & ~skip
            f.add(null, f"{col} must not be null")
            if cs.kind == "str":
                empty = _b(s.str.strip().eq(""))
                f.add(empty, f"{col} must not be empty")
        if cs.kind == "float":
            arr = _f(s)
            with np.errstate(invalid="ignore"):
                bad = ~np.isnan(arr) & ~np.isfinite(arr)
            if name == "margin_tiers" and col == "max_notional":
                bad &= ~np.isposinf(arr)  # the contract allows +inf here
            f.add(bad, _with_value(f"{col} must be finite, got ", s))

    _RULES[name](f, df)
    codes = _Codes(df)
    key_codes = codes.combined(spec.key)
    order = np.argsort(key_codes, kind="stable")  # by key; rows with a null key first
    extra = _key_rules(f, df, key_codes, spec.key, [c for c in cols if c in specs])
    if name in _GROUPS:
        group, what = _GROUPS[name]
        if name == "margin_tiers":
            _schedule_rules(f, df, order=order[~extra[order]], gid=codes.combined(group))
        elif name == "order_books":
            _book_rules(f, df, order=order[~extra[order]], gid=codes.combined(group))
        else:
            tiers = None if tables is None else tables.get("margin_tiers")
            if tiers is None:
                logger.info("truth (%s): no margin_tiers given; cross-table rules skipped", src)
            else:
                _truth_vs_tiers(f, df, tiers, valid=key_codes >= 0, src=src)
        _spread(f, codes.combined(group), what)

    rows, rules = f.collect()
    bad_rows = pd.DataFrame(
        {
            "table": _text(name, len(rows)),
            "row": rows.astype(np.int64),
            "key": _render_key(df, spec.key, rows),
            "rule": rules,
        }
    )
    good = df[list(specs)].take(order[~f.bad[order]]).reset_index(drop=True)
    for col, cs in specs.items():
        if cs.kind == "int" and not bool(good[col].isna().any()):
            good[col] = good[col].astype(np.int64)
        elif cs.kind == "bool" and not bool(good[col].isna().any()):
            good[col] = good[col].astype(bool)
    return good, bad_rows


def _texts(texts: pd.Series) -> Messages:
    """Messages taken from a column of texts."""
    return lambda r: texts.iloc[r]


def _with_value(text: str, s: pd.Series) -> Messages:
    """Messages ``text`` followed by the row's value of ``s``."""
    return lambda r: _cat(text, _show(s, r))


_GROUPS: Mapping[str, tuple[tuple[str, ...], str]] = MappingProxyType(
    {
        "margin_tiers": (("venue", "symbol", "as_of"), "schedule has a bad tier"),
        "order_books": (("venue", "symbol", "timestamp"), "snapshot has a bad level"),
        "truth": (("venue", "symbol", "as_of"), "schedule truth has a bad row"),
    }
)
"""Tables whose rows only make sense together: a bad row sets its whole group aside."""


def _gt(f: _Findings, df: pd.DataFrame, col: str, bound: float, *, strict: bool) -> None:
    s = df[col]
    arr = _f(s)
    ok = arr > bound if strict else arr >= bound
    op = ">" if strict else ">="
    f.add(
        ~np.isnan(arr) & ~ok,
        lambda r: _cat(f"{col} must be {op} {bound:g}, got ", _show(s, r)),
    )


def _in_unit(f: _Findings, df: pd.DataFrame, col: str) -> None:
    s = df[col]
    arr = _f(s)
    f.add(
        ~np.isnan(arr) & ~((arr > 0) & (arr <= 1)),
        lambda r: _cat(f"{col} must be in (0, 1], got ", _show(s, r)),
    )


def _enum(f: _Findings, df: pd.DataFrame, col: str, allowed: tuple[str, ...]) -> None:
    s = df[col]
    f.add(
        s.notna().to_numpy(dtype=bool) & ~_b(s.isin(allowed)),
        lambda r: _cat(f"{col} must be one of {', '.join(allowed)}, got ", _show(s, r)),
    )


def _rules_contracts(f: _Findings, df: pd.DataFrame) -> None:
    _enum(f, df, "type", ("swap", "future", "option", "spot"))
    _gt(f, df, "contract_size", 0, strict=True)
    kind = df["type"]
    expiry, strike, otype = df["expiry"], df["strike"], df["option_type"]
    is_opt = _b(kind.eq("option"))
    f.add(
        _b(kind.eq("swap")) & expiry.notna().to_numpy(dtype=bool),
        lambda r: _cat("expiry must be null for a swap, got ", _show(expiry, r)),
    )
    f.add(
        _b(kind.isin(["future", "option"])) & expiry.isna().to_numpy(dtype=bool),
        lambda r: _cat("expiry must be set for a ", _show(kind, r), ", got null"),
    )
    k = _f(strike)
    f.add(
        is_opt & ~(k > 0),
        lambda r: _cat("strike must be > 0 for an option, got ", _show(strike, r)),
    )
    f.add(
        ~is_opt & ~np.isnan(k),
        lambda r: _cat("strike must be null for a non-option, got ", _show(strike, r)),
    )
    f.add(
        is_opt & ~_b(otype.isin(["call", "put"])),
        lambda r: _cat("option_type must be call or put for an option, got ", _show(otype, r)),
    )
    f.add(
        ~is_opt & otype.notna().to_numpy(dtype=bool),
        lambda r: _cat("option_type must be null for a non-option, got ", _show(otype, r)),
    )


def _effective_initial(df: pd.DataFrame) -> NDArray[np.float64]:
    imr = _f(df["initial_margin_rate"])
    lev = _f(df["max_leverage"])
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(lev > 0, 1.0 / np.where(lev > 0, lev, 1.0), np.nan)
    return np.where(np.isnan(imr), inv, imr)


def _rules_margin_tiers(f: _Findings, df: pd.DataFrame) -> None:
    _gt(f, df, "tier", 1, strict=False)
    _gt(f, df, "min_notional", 0, strict=False)
    lo, hi = _f(df["min_notional"]), _f(df["max_notional"])
    f.add(
        ~np.isnan(lo) & ~np.isnan(hi) & ~(hi > lo),
        lambda r: _cat(
            "max_notional must be > min_notional ",
            _show(df["min_notional"], r),
            ", got ",
            _show(df["max_notional"], r),
        ),
    )
    _in_unit(f, df, "maintenance_margin_rate")
    _gt(f, df, "max_leverage", 1, strict=False)
    _in_unit(f, df, "initial_margin_rate")
    mmr, eff = _f(df["maintenance_margin_rate"]), _effective_initial(df)
    with np.errstate(invalid="ignore"):
        above = int(np.sum(mmr > eff * (1 + _REL)))
    if above:
        logger.warning(
            "margin_tiers: %d row(s) with maintenance_margin_rate above the initial rate", above
        )


def _rules_ohlcv(f: _Findings, df: pd.DataFrame) -> None:
    tf = df["timeframe"]
    f.add(
        tf.notna().to_numpy(dtype=bool) & ~_b(tf.str.fullmatch(_TIMEFRAME_RE)),
        lambda r: _cat("timeframe must look like 1m, 5m, 1h or 1d, got ", _show(tf, r)),
    )
    for c in ("open", "high", "low", "close"):
        _gt(f, df, c, 0, strict=True)
    _gt(f, df, "volume", 0, strict=False)
    o, h, lo, cl = (_f(df[k]) for k in ("open", "high", "low", "close"))
    known = ~(np.isnan(o) | np.isnan(h) | np.isnan(lo) | np.isnan(cl))

    def ohlc(r: IntArray) -> pd.Series:
        return _cat(
            ", got open ",
            _show(df["open"], r),
            ", high ",
            _show(df["high"], r),
            ", low ",
            _show(df["low"], r),
            ", close ",
            _show(df["close"], r),
        )

    f.add(
        known & ~(lo <= np.minimum(o, cl)),
        lambda r: _cat("low must be <= open and close", ohlc(r)),
    )
    f.add(
        known & ~(h >= np.maximum(o, cl)),
        lambda r: _cat("high must be >= open and close", ohlc(r)),
    )


def _rules_order_books(f: _Findings, df: pd.DataFrame) -> None:
    _enum(f, df, "side", ("bid", "ask"))
    _gt(f, df, "level", 0, strict=False)
    _gt(f, df, "price", 0, strict=True)
    _gt(f, df, "amount", 0, strict=True)


def _iv_percent(f: _Findings, df: pd.DataFrame, col: str) -> None:
    s = df[col]
    f.add(
        _f(s) > 5,
        lambda r: _cat(
            f"{col} must be an annualised fraction <= 5, got ",
            _show(s, r),
            " (looks like percent: divide by 100)",
        ),
    )


def _rules_option_quotes(f: _Findings, df: pd.DataFrame) -> None:
    _gt(f, df, "strike", 0, strict=True)
    _enum(f, df, "option_type", ("call", "put"))
    _gt(f, df, "underlying_price", 0, strict=True)
    _gt(f, df, "mark_iv", 0, strict=True)
    for col in ("mark_iv", "bid_iv", "ask_iv"):
        if col in df.columns:
            _iv_percent(f, df, col)
    if "bid_iv" in df.columns and "ask_iv" in df.columns:
        crossed = int(np.sum(_f(df["bid_iv"]) > _f(df["ask_iv"])))
        if crossed:
            logger.warning("option_quotes: %d row(s) with bid_iv above ask_iv", crossed)
    late = int(np.sum(_b(df["expiry"] <= df["timestamp"])))
    if late:
        logger.warning("option_quotes: %d quote(s) at or after expiry", late)


def _rules_funding_rates(f: _Findings, df: pd.DataFrame) -> None:
    big = int(np.sum(np.abs(_f(df["funding_rate"])) > 0.05))
    if big:
        logger.warning("funding_rates: %d row(s) with |funding_rate| above 5%% a period", big)
    del f


def _rules_truth(f: _Findings, df: pd.DataFrame) -> None:
    _gt(f, df, "fair_initial_margin_rate", 0, strict=True)
    d = _f(df["planted_deviation"])
    planted = _b(df["planted"])
    known = ~np.isnan(d) & df["planted"].notna().to_numpy(dtype=bool)
    t = _BAND_TOL
    in_band = ((d >= -0.90 - t) & (d <= -0.40 + t)) | ((d >= 0.40 - t) & (d <= 1.0 + t))
    dev = df["planted_deviation"]
    f.add(
        known & planted & ~in_band,
        lambda r: _cat(
            "planted_deviation of a planted tier must lie in [-0.90, -0.40] or [0.40, 1.0], got ",
            _show(dev, r),
        ),
    )
    f.add(
        known & ~planted & ~(np.abs(d) <= 0.10 + t),
        lambda r: _cat(
            "planted_deviation of a tier not planted must lie within 0.10 of 0, got ",
            _show(dev, r),
        ),
    )


_RULES: Mapping[str, Callable[[_Findings, pd.DataFrame], None]] = MappingProxyType(
    {
        "contracts": _rules_contracts,
        "margin_tiers": _rules_margin_tiers,
        "ohlcv": _rules_ohlcv,
        "order_books": _rules_order_books,
        "option_quotes": _rules_option_quotes,
        "funding_rates": _rules_funding_rates,
        "truth": _rules_truth,
    }
)


def _key_rules(
    f: _Findings,
    df: pd.DataFrame,
    kc: NDArray[np.int64],
    key: tuple[str, ...],
    cols: list[str],
) -> BoolArray:
    """Duplicate keys. Returns the mask of extra exact copies (bad, but break nothing)."""
    n = len(df)
    extra = np.zeros(n, dtype=bool)
    valid = kc >= 0
    dup = np.zeros(n, dtype=bool)
    dup[valid] = pd.Series(kc[valid]).duplicated(keep=False).to_numpy()
    if not dup.any():
        return extra
    rows = np.flatnonzero(dup)
    sub = df.iloc[rows]
    rc = _row_codes(sub, cols)
    k = kc[rows]
    distinct = pd.Series(rc).groupby(k).nunique()
    conflict_keys = distinct.index[distinct.to_numpy() > 1].to_numpy()
    conflict = np.isin(k, conflict_keys)
    if conflict.any():
        listed = _rows_by_group(k[conflict], rows[conflict])
        cmask = np.zeros(n, dtype=bool)
        cmask[rows[conflict]] = True
        names = ", ".join(key)
        f.add(
            cmask,
            lambda r: _cat(
                f"duplicate key ({names}) with other values (", _mapped(kc[r], listed), ")"
            ),
        )
    same = ~conflict
    if same.any():
        r_same, rc_same = rows[same], rc[same]
        copy = pd.Series(rc_same).duplicated(keep="first").to_numpy()
        if copy.any():
            first = pd.Series(r_same).groupby(rc_same).transform("min").to_numpy()
            extra[r_same[copy]] = True
            first_of = np.zeros(n, dtype=np.int64)
            first_of[r_same] = first
            f.add(
                extra,
                lambda r: _cat("exact duplicate of row ", first_of[r].astype(str)),
                primary=False,
            )
    return extra


def _in_groups(
    order: IntArray, gid: NDArray[np.int64], use: BoolArray
) -> tuple[IntArray, NDArray[np.int64]]:
    """Positions of the ``use`` rows in key order (so grouped) and their group ids."""
    pos = order[use[order] & (gid[order] >= 0)]
    return pos, gid[pos]


def _schedule_rules(
    f: _Findings, df: pd.DataFrame, *, order: IntArray, gid: NDArray[np.int64]
) -> None:
    """Tiers of a schedule: contiguous, tier numbers unique, rates not falling."""
    tier = df["tier"].to_numpy(dtype=np.float64, na_value=np.nan)
    lo, hi = _f(df["min_notional"]), _f(df["max_notional"])
    mmr, eff = _f(df["maintenance_margin_rate"]), _effective_initial(df)
    pos, g = _in_groups(order, gid, ~np.isnan(tier))
    n = len(df)
    if pos.size == 0:
        return
    first = np.r_[True, g[1:] != g[:-1]]
    prev = np.r_[-1, pos[:-1]]  # row of the previous tier in the same schedule
    cur, prv = pos[~first], prev[~first]
    prev_of = np.full(n, -1, dtype=np.int64)
    prev_of[cur] = prv

    def mark(bad: BoolArray) -> BoolArray:
        out = np.zeros(n, dtype=bool)
        out[cur[bad]] = True
        return out

    both = ~np.isnan(lo[cur]) & ~np.isnan(hi[prv])
    close = np.isclose(lo[cur], hi[prv], rtol=_CONTIG_TOL, atol=_CONTIG_TOL)
    gap = mark(both & ~close)

    def contiguity(r: IntArray) -> pd.Series:
        p = prev_of[r]
        kind = np.where(lo[r] > hi[p], " (a gap)", " (an overlap)")
        return _cat(
            "min_notional must equal the previous tier's max_notional ",
            _show(df["max_notional"], p),
            " (row ",
            p.astype(str),
            "), got ",
            _show(df["min_notional"], r),
            kind,
        )

    f.add(gap, contiguity)
    f.add(
        mark(tier[cur] == tier[prv]),
        lambda r: _cat(
            "tier number must not repeat within a schedule, got tier ",
            _show(df["tier"], r),
            " again (row ",
            prev_of[r].astype(str),
            ")",
        ),
    )
    for values, label in ((mmr, "maintenance_margin_rate"), (eff, "initial margin rate")):
        with np.errstate(invalid="ignore"):
            fall = values[cur] < values[prv] * (1 - _REL)

        def falls(r: IntArray, values: NDArray[np.float64] = values, label: str = label) -> Any:
            return _cat(
                f"{label} must not fall as tier rises, got ",
                _num(values[r]),
                " after ",
                _num(values[prev_of[r]]),
                " at row ",
                prev_of[r].astype(str),
            )

        f.add(mark(fall), falls)
    skipped = int(np.sum(tier[cur] != tier[prv] + 1))
    if skipped:
        logger.warning("margin_tiers: %d tier number(s) not consecutive", skipped)
    not_zero = int(np.sum(lo[pos[first]] != 0))
    if not_zero:
        logger.warning("margin_tiers: %d schedule(s) whose first min_notional is not 0", not_zero)


def _book_rules(
    f: _Findings, df: pd.DataFrame, *, order: IntArray, gid: NDArray[np.int64]
) -> None:
    """Levels of a snapshot: bids fall and asks rise with level, best bid < best ask."""
    n = len(df)
    side = df["side"]
    is_bid, is_ask = _b(side.eq("bid")), _b(side.eq("ask"))
    level = df["level"].to_numpy(dtype=np.float64, na_value=np.nan)
    price = _f(df["price"])
    pos, g = _in_groups(order, gid, (is_bid | is_ask) & ~np.isnan(level) & ~np.isnan(price))
    if pos.size == 0:
        return
    ask = is_ask[pos]
    run_start = np.r_[True, (g[1:] != g[:-1]) | (ask[1:] != ask[:-1])]
    cur, prv = pos[~run_start], np.r_[-1, pos[:-1]][~run_start]
    prev_of = np.full(n, -1, dtype=np.int64)
    prev_of[cur] = prv
    wrong = np.where(ask[~run_start], ~(price[cur] > price[prv]), ~(price[cur] < price[prv]))
    bad = np.zeros(n, dtype=bool)
    bad[cur[wrong]] = True

    def order_msg(r: IntArray) -> pd.Series:
        p = prev_of[r]
        return _cat(
            np.where(is_ask[r], "ask price must rise", "bid price must fall"),
            " with level, got ",
            _show(df["price"], r),
            " at level ",
            _show(df["level"], r),
            " after ",
            _show(df["price"], p),
            " at level ",
            _show(df["level"], p),
        )

    f.add(bad, order_msg)

    gaps = int(np.sum(level[cur] != level[prv] + 1) + np.sum(level[pos[run_start]] != 0))
    if gaps:
        logger.warning("order_books: %d level(s) not consecutive from 0", gaps)
    starts = pos[run_start]
    sg = g[run_start]
    n_groups = int(g.max()) + 1
    best_bid_row = np.full(n_groups, -1, dtype=np.int64)
    best_ask_row = np.full(n_groups, -1, dtype=np.int64)
    best_bid_row[sg[~is_ask[starts]]] = starts[~is_ask[starts]]
    best_ask_row[sg[is_ask[starts]]] = starts[is_ask[starts]]
    two = (best_bid_row >= 0) & (best_ask_row >= 0)
    one = int(np.sum((best_bid_row >= 0) ^ (best_ask_row >= 0)))
    if one:
        logger.warning("order_books: %d snapshot(s) with one side only", one)
    crossed = two.copy()
    crossed[two] = price[best_bid_row[two]] >= price[best_ask_row[two]]
    if not crossed.any():
        return
    pair = np.full(n, -1, dtype=np.int64)
    pair[best_bid_row[crossed]] = best_ask_row[crossed]
    pair[best_ask_row[crossed]] = best_bid_row[crossed]
    bid_of = np.where(is_bid, np.arange(n), pair)
    ask_of = np.where(is_ask, np.arange(n), pair)
    f.add(
        pair >= 0,
        lambda r: _cat(
            "best bid must be below best ask, got bid ",
            _show(df["price"], bid_of[r]),
            " >= ask ",
            _show(df["price"], ask_of[r]),
            " (crossed book)",
        ),
    )


def _spread(f: _Findings, gid: NDArray[np.int64], what: str) -> None:
    """Set aside whole groups (schedules, snapshots) holding a row bad by its own values."""
    if not f.primary.any():
        return
    offenders = f.primary & (gid >= 0)
    if not offenders.any():
        return
    listed = _rows_by_group(gid[offenders], np.flatnonzero(offenders))
    broken = np.zeros(int(gid.max()) + 1, dtype=bool)
    broken[gid[offenders]] = True
    others = (gid >= 0) & ~f.bad
    others[others] = broken[gid[others]]
    f.add(
        others,
        lambda r: _cat(f"{what} (", _mapped(gid[r], listed), ")"),
    )


def _truth_vs_tiers(
    f: _Findings, df: pd.DataFrame, tiers: pd.DataFrame, *, valid: BoolArray, src: str
) -> None:
    """truth covers, at the latest as_of of each (venue, symbol), every tier of the schedule."""
    key = ["venue", "symbol", "as_of", "tier"]
    need = [*key, "initial_margin_rate", "max_leverage"]
    require_columns(tiers, need, who=f"truth ({src}): tables['margin_tiers']")
    t = tiers[need].drop_duplicates(key)
    t = t.assign(_published=_effective_initial(t), _in_tiers=True)
    truth = df[key].assign(_row=np.arange(len(df)))
    m = truth.merge(t[[*key, "_published", "_in_tiers"]], on=key, how="left", sort=False)
    m = m.sort_values("_row", kind="stable")
    in_tiers = _b(m["_in_tiers"])
    f.add(valid & ~in_tiers, "no margin_tiers row with this key (missing or set aside)")

    both = pd.concat(
        [t[["venue", "symbol", "as_of"]], truth.loc[valid, ["venue", "symbol", "as_of"]]]
    )
    latest = both.groupby(["venue", "symbol"], sort=False)["as_of"].max().rename("_latest")
    lt = (
        truth[["venue", "symbol"]]
        .merge(latest.reset_index(), on=["venue", "symbol"], how="left", sort=False)["_latest"]
        .reset_index(drop=True)
    )
    as_of = df["as_of"]
    stale = valid & _b(as_of < lt)
    f.add(
        stale,
        lambda r: _cat(
            "as_of must be the latest as_of of the schedule ",
            _show(lt, r),
            ", got ",
            _show(as_of, r),
        ),
    )

    pub = m["_published"].to_numpy(dtype=np.float64, na_value=np.nan)
    fair = _f(df["fair_initial_margin_rate"])
    dev = _f(df["planted_deviation"])
    with np.errstate(divide="ignore", invalid="ignore"):
        want = pub / np.where(fair > 0, fair, np.nan) - 1
    check = in_tiers & ~np.isnan(want) & ~np.isnan(dev)
    mismatch = check & ~np.isclose(want, dev, rtol=1e-6, atol=1e-9)
    f.add(
        mismatch,
        lambda r: _cat(
            "planted_deviation must equal published / fair - 1 = ",
            _num(want[r]),
            ", got ",
            _show(df["planted_deviation"], r),
        ),
    )

    # every tier of each latest schedule needs a truth row
    t_latest = t.merge(latest, on=["venue", "symbol"], how="left")
    t_latest = t_latest[t_latest["as_of"] == t_latest["_latest"]]
    covered = t_latest[key].merge(truth[key].drop_duplicates(), on=key, how="left", indicator=True)
    lacking = covered[covered["_merge"] == "left_only"]
    if lacking.empty:
        return
    sched = ["venue", "symbol", "as_of"]
    has_rows = lacking[sched].merge(
        truth[sched].drop_duplicates(), on=sched, how="left", indicator=True
    )
    partial = lacking[(has_rows["_merge"] == "both").to_numpy()]
    none = lacking[(has_rows["_merge"] == "left_only").to_numpy()]
    if not none.empty:
        first = none.iloc[0]
        raise BundleValidationError(
            f"truth ({src}): every latest margin schedule must have truth rows, got "
            f"{none[sched].drop_duplicates().shape[0]} without any, e.g. ({first['venue']}, "
            f"{first['symbol']}, {first['as_of']}) (a table error: it cannot be quarantined)"
        )
    missing_tiers = partial.groupby(sched, sort=False)["tier"].agg(
        lambda x: ", ".join(str(int(v)) for v in sorted(x))
    )
    lack = truth.merge(
        missing_tiers.rename("_lack").reset_index(), on=sched, how="left", sort=False
    ).sort_values("_row", kind="stable")["_lack"]
    f.add(
        valid & lack.notna().to_numpy(dtype=bool),
        lambda r: _cat("truth of this schedule is incomplete: no row for tier(s) ", lack.iloc[r]),
    )


def describe_bad_rows(
    bad: pd.DataFrame,
    *,
    source: str,
    hint: str = "rerun with --quarantine to set them aside",
    max_rows: int = _MAX_LISTED,
) -> str:
    """One readable line naming the table, the file, the first bad rows, their rules and count.

    Parameters
    ----------
    bad : pandas.DataFrame
        Bad rows of one table as returned by :func:`validate_table` (not empty).
    source : str
        The file the table came from.
    hint : str
        The next step, appended at the end.
    max_rows : int
        How many rows to show before "and N more".

    Returns
    -------
    str
        E.g. ``ohlcv (b/ohlcv.csv): 44 bad rows: row 3 (binance, BTC/USDT:USDT, 1h,
        2024-01-01T03:00:00Z): low must be <= open and close, got ... | and 43 more; rerun
        with --quarantine to set them aside``.
    """
    if bad.empty:
        raise ValueError("describe_bad_rows: bad must hold at least one row, got none")
    table = str(bad["table"].iloc[0])
    spread = _b(bad["rule"].str.startswith(tuple(what for _, what in _GROUPS.values())))
    head = pd.concat([bad[~spread], bad[spread]]).head(max_rows)  # own faults first
    shown = " | ".join(
        f"row {int(r)} ({k}): {rule}"
        for r, k, rule in zip(head["row"], head["key"], head["rule"], strict=True)
    )
    more = f" | and {len(bad) - len(head)} more" if len(bad) > len(head) else ""
    noun = "bad row" if len(bad) == 1 else "bad rows"
    text = f"{table} ({source}): {len(bad)} {noun}: {shown}{more}; {hint}"
    return text.replace("\n", " ")
