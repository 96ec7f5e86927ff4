"""Reading, quarantining and writing bundles (pipelines/bundle.py) on small inline bundles."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from features._checks import FairmarginInputError
from pipelines import bundle as bundle_mod
from pipelines.bundle import (
    Bundle,
    bundle_fingerprint,
    read_bundle,
    write_bundle,
    write_quarantine,
)
from pipelines.contract import TABLES, BundleValidationError

Tables = dict[str, pd.DataFrame]

# the independent reading of the contract; CI lays shared/ beside the repository
VALIDATOR = Path(__file__).resolve().parents[3] / "shared" / "tools" / "validate_bundle.py"


def _utc(*values: Any) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(pd.to_datetime(list(values), utc=True))


def tiny_tables() -> Tables:
    """A valid bundle: a swap, a dated future and two options, 3 schedules, 6 bars, 2 three-level
    books, option quotes, funding and truth. Row positions are used by the bad-input cases."""
    call, put = "BTC/USD:BTC-240329-50000-C", "BTC/USD:BTC-240329-50000-P"
    contracts = pd.DataFrame(
        {
            "venue": ["binance", "okx", "deribit", "deribit"],
            "symbol": ["BTC/USDT:USDT", "ETH/USD:ETH", call, put],
            "type": ["swap", "future", "option", "option"],
            "base": ["BTC", "ETH", "BTC", "BTC"],
            "quote": ["USDT", "USD", "USD", "USD"],
            "settle": ["USDT", "ETH", "BTC", "BTC"],
            "linear": [True, False, False, False],
            "contract_size": [0.001, 10.0, 1.0, 1.0],
            "expiry": _utc(None, *["2024-03-29 08:00"] * 3),
            "strike": [np.nan, np.nan, 50000.0, 50000.0],
            "option_type": [None, None, "call", "put"],
        }
    )
    b, o = ("binance", "BTC/USDT:USDT"), ("okx", "ETH/USD:ETH")
    # rows 0-2: binance 2024-01-01, rows 3-5: binance 2024-01-02, rows 6-7: okx 2024-01-01
    sched = [b] * 6 + [o] * 2
    margin_tiers = pd.DataFrame(
        {
            "venue": [v for v, _ in sched],
            "symbol": [s for _, s in sched],
            "as_of": _utc(*["2024-01-01"] * 3, *["2024-01-02"] * 3, *["2024-01-01"] * 2),
            "tier": [1, 2, 3, 1, 2, 3, 1, 2],
            "min_notional": [0.0, 5e4, 2.5e5, 0.0, 5e4, 2.5e5, 0.0, 1e5],
            "max_notional": [5e4, 2.5e5, np.inf, 5e4, 2.5e5, np.inf, 1e5, 1e6],
            "maintenance_margin_rate": [0.004, 0.005, 0.01, 0.004, 0.005, 0.01, 0.005, 0.01],
            "max_leverage": [125.0, 100.0, 50.0, 125.0, 100.0, 50.0, 100.0, 50.0],
            "initial_margin_rate": [0.008, np.nan, 0.02, 0.008, np.nan, 0.02, np.nan, 0.02],
        }
    )
    hours = _utc("2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00")
    ohlcv = pd.DataFrame(
        {
            "venue": ["binance"] * 3 + ["okx"] * 3,
            "symbol": ["BTC/USDT:USDT"] * 3 + ["ETH/USD:ETH"] * 3,
            "timeframe": ["1h"] * 6,
            "timestamp": list(hours) * 2,
            "open": [100.0, 101.0, 102.0, 10.0, 11.0, 12.0],
            "high": [102.0, 103.0, 104.0, 11.0, 12.0, 13.0],
            "low": [99.0, 100.0, 101.0, 9.0, 10.0, 11.0],
            "close": [101.0, 102.0, 103.0, 11.0, 12.0, 12.5],
            "volume": [5.0, 6.0, 7.0, 50.0, 60.0, 0.0],
        }
    )
    # rows 0-5: binance snapshot (bids 0-2, asks 3-5), rows 6-11: okx snapshot
    order_books = pd.DataFrame(
        {
            "venue": ["binance"] * 6 + ["okx"] * 6,
            "symbol": ["BTC/USDT:USDT"] * 6 + ["ETH/USD:ETH"] * 6,
            "timestamp": _utc(*["2024-01-01 03:00"] * 12),
            "side": (["bid"] * 3 + ["ask"] * 3) * 2,
            "level": [0, 1, 2] * 4,
            "price": [
                102.9,
                102.8,
                102.5,
                103.1,
                103.2,
                103.5,
                12.4,
                12.3,
                12.2,
                12.6,
                12.7,
                12.8,
            ],
            "amount": [1.0, 2.0, 3.0, 1.5, 2.5, 3.5, 10.0, 20.0, 30.0, 15.0, 25.0, 35.0],
        }
    )
    option_quotes = pd.DataFrame(
        {
            "venue": ["deribit", "deribit"],
            "underlying": ["BTC", "BTC"],
            "symbol": [call, put],
            "timestamp": _utc("2024-01-01 03:00", "2024-01-01 03:00"),
            "expiry": _utc("2024-03-29 08:00", "2024-03-29 08:00"),
            "strike": [50000.0, 50000.0],
            "option_type": ["call", "put"],
            "mark_iv": [0.55, 0.6],
            "underlying_price": [42000.0, 42000.0],
            "bid_iv": [0.54, np.nan],
        }
    )
    funding_rates = pd.DataFrame(
        {
            "venue": ["binance", "binance"],
            "symbol": ["BTC/USDT:USDT"] * 2,
            "timestamp": _utc("2024-01-01 00:00", "2024-01-01 08:00"),
            "funding_rate": [0.0001, -0.0002],
        }
    )
    # truth at the latest as_of of each schedule: binance 2024-01-02 (rows 3-5), okx (rows 6-7)
    latest = margin_tiers.iloc[3:8]
    published = latest["initial_margin_rate"].fillna(1 / latest["max_leverage"]).to_numpy()
    fair = np.array([0.008, 0.02, 0.021, 0.01, 0.0125])
    truth = pd.DataFrame(
        {
            "venue": latest["venue"].to_numpy(),
            "symbol": latest["symbol"].to_numpy(),
            "as_of": latest["as_of"].to_numpy(),
            "tier": latest["tier"].to_numpy(),
            "fair_initial_margin_rate": fair,
            # deviations 0, -0.5, -0.0476, 0, +0.6: planted only beyond 0.40 in size
            "planted": [False, True, False, False, True],
            "planted_deviation": published / fair - 1,
        }
    )
    return {
        "contracts": contracts,
        "margin_tiers": margin_tiers,
        "ohlcv": ohlcv,
        "order_books": order_books,
        "option_quotes": option_quotes,
        "funding_rates": funding_rates,
        "truth": truth,
    }


def _csv_frame(df: pd.DataFrame, ts_style: str) -> pd.DataFrame:
    out = df.copy()
    for col in out.columns:
        s = out[col]
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            if ts_style == "iso":
                out[col] = [x.isoformat() if pd.notna(x) else "" for x in s]
            else:
                ms = (s - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(1, "ms")
                out[col] = ms.astype("Int64")
    return out


def dump(tables: Tables, folder: Path, fmt: str = "parquet", ts_style: str = "iso") -> Path:
    """Write tables as files without any checks (to plant bad rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if fmt == "parquet":
            df.to_parquet(folder / f"{name}.parquet", index=False)
        else:
            _csv_frame(df, ts_style).to_csv(folder / f"{name}.csv", index=False)
    return folder


def run_validator(folder: Path) -> subprocess.CompletedProcess[str]:
    if not VALIDATOR.is_file():
        pytest.skip(f"the shared validator is not at {VALIDATOR}")
    return subprocess.run(
        [sys.executable, str(VALIDATOR), str(folder)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def expected(tables: Tables, name: str) -> pd.DataFrame:
    """The input table sorted by its key with pandas' own sort (an independent path)."""
    key = list(TABLES[name].key)
    return tables[name].sort_values(key, kind="stable").reset_index(drop=True)


def assert_same_rows(got: pd.DataFrame | None, want: pd.DataFrame | None) -> None:
    assert got is not None
    assert want is not None
    # assert_frame_equal compares the raw integers of datetimes of different units: align them
    want = want.copy()
    for col in want.columns:
        if isinstance(want[col].dtype, pd.DatetimeTZDtype):
            want[col] = want[col].dt.as_unit("ns")
    assert_frame_equal(got, want, check_dtype=False, check_exact=True)


# --------------------------------------------------------------------------------------------
# valid bundles
# --------------------------------------------------------------------------------------------


def test_parquet_round_trip_keeps_every_row_and_passes_the_validator(tmp_path: Path) -> None:
    tables = tiny_tables()
    path = write_bundle(tables, tmp_path / "b")
    assert path == tmp_path / "b"
    assert sorted(p.name for p in path.iterdir()) == sorted(f"{n}.parquet" for n in tables)
    b = read_bundle(path)
    assert isinstance(b, Bundle)
    assert b.path == path
    for name in tables:
        assert_same_rows(b.table(name), expected(tables, name))
    assert b.quarantine.empty
    assert list(b.quarantine.columns) == ["table", "row", "key", "rule"]
    proc = run_validator(path)
    assert proc.returncode == 0, proc.stdout


def test_tables_have_contract_dtypes_and_a_range_index(tmp_path: Path) -> None:
    b = read_bundle(dump(tiny_tables(), tmp_path / "b", "csv"))
    tiers = b.margin_tiers
    assert tiers["venue"].dtype == "str"
    assert tiers["as_of"].dtype == pd.DatetimeTZDtype("ns", "UTC")
    assert tiers["tier"].dtype == np.int64
    assert tiers["max_notional"].dtype == np.float64
    assert b.contracts["linear"].dtype == bool
    assert b.contracts["expiry"].dtype == pd.DatetimeTZDtype("ns", "UTC")
    assert b.order_books is not None
    assert b.order_books["level"].dtype == np.int64
    assert isinstance(tiers.index, pd.RangeIndex)
    assert tiers.index.equals(pd.RangeIndex(8))


@pytest.mark.parametrize("ts_style", ["iso", "ms"])
def test_csv_bundle_reads_like_parquet_and_passes_the_validator(
    tmp_path: Path, ts_style: str
) -> None:
    tables = tiny_tables()
    folder = dump(tables, tmp_path / "csv", "csv", ts_style)
    if ts_style == "ms":  # check the fixture really holds integer milliseconds
        assert pd.read_csv(folder / "ohlcv.csv")["timestamp"].iloc[0] == 1_704_067_200_000
    b = read_bundle(folder)
    for name in tables:
        assert_same_rows(b.table(name), expected(tables, name))
    assert b.quarantine.empty
    proc = run_validator(folder)
    assert proc.returncode == 0, proc.stdout


def test_csv_timestamps_with_offsets_and_without_zone_are_utc(tmp_path: Path) -> None:
    tables = tiny_tables()
    folder = dump(tables, tmp_path / "b", "csv")
    text = (folder / "ohlcv.csv").read_text()
    # 01:00 UTC written as 03:00+02:00, 02:00 UTC written without a zone
    text = text.replace("2024-01-01T01:00:00+00:00", "2024-01-01T03:00:00+02:00", 1)
    text = text.replace("2024-01-01T02:00:00+00:00", "2024-01-01 02:00:00", 1)
    (folder / "ohlcv.csv").write_text(text)
    b = read_bundle(folder)
    assert_same_rows(b.ohlcv, expected(tables, "ohlcv"))


def test_rewrite_gives_identical_bytes_whatever_the_row_order(tmp_path: Path) -> None:
    tables = tiny_tables()
    a = write_bundle(tables, tmp_path / "a")
    b = write_bundle(tiny_tables(), tmp_path / "b")
    shuffled = {
        k: v.sample(frac=1.0, random_state=3).reset_index(drop=True) for k, v in tables.items()
    }
    c = write_bundle(shuffled, tmp_path / "c")
    for name in tables:
        data = (a / f"{name}.parquet").read_bytes()
        assert (b / f"{name}.parquet").read_bytes() == data
        assert (c / f"{name}.parquet").read_bytes() == data
    assert bundle_fingerprint(a) == bundle_fingerprint(b) == bundle_fingerprint(c)


def test_writing_what_was_read_reproduces_the_bundle(tmp_path: Path) -> None:
    a = write_bundle(tiny_tables(), tmp_path / "a")
    b = read_bundle(a)
    tables = {n: t for n in TABLES if (t := b.table(n)) is not None}
    again = write_bundle(tables, tmp_path / "again")
    assert bundle_fingerprint(again) == bundle_fingerprint(a)


def test_tables_argument_reads_required_and_named_tables_only(tmp_path: Path) -> None:
    folder = write_bundle(tiny_tables(), tmp_path / "b")
    b = read_bundle(folder, tables=["funding_rates"])
    assert b.funding_rates is not None
    assert len(b.funding_rates) == 2
    assert b.order_books is None
    assert b.option_quotes is None
    assert b.truth is None
    assert len(b.contracts) == 4
    with pytest.raises(FairmarginInputError, match=r"tables must be among .*unknown \['books'\]"):
        read_bundle(folder, tables=["books"])


def test_optional_tables_absent_are_none(tmp_path: Path) -> None:
    tables = {k: v for k, v in tiny_tables().items() if k in TABLES and TABLES[k].required}
    b = read_bundle(write_bundle(tables, tmp_path / "b"))
    assert b.order_books is None
    assert b.option_quotes is None
    assert b.funding_rates is None
    assert b.truth is None
    assert b.table("truth") is None
    with pytest.raises(FairmarginInputError, match=r"Bundle.table: name must be one of"):
        b.table("bars")


# --------------------------------------------------------------------------------------------
# bad inputs: an error naming table, row and rule; with quarantine, bad rows set aside
# --------------------------------------------------------------------------------------------

Mutation = Callable[[Tables], None]


def _set(table: str, row: int, col: str, value: Any) -> Mutation:
    def go(t: Tables) -> None:
        t[table].loc[row, col] = value

    return go


def _append_copy(table: str, row: int, **changes: Any) -> Mutation:
    def go(t: Tables) -> None:
        extra = t[table].iloc[[row]].assign(**changes)
        t[table] = pd.concat([t[table], extra], ignore_index=True)

    return go


BIN_BOOK = r"binance, BTC/USDT:USDT, 2024-01-01T03:00:00Z"
# id, mutation, format, table, {row: rule regex}, does the shared validator call it an ERROR
CASES = [
    (
        "negative_price",
        _set("ohlcv", 1, "open", -5.0),
        "parquet",
        "ohlcv",
        {1: r"open must be > 0, got -5; low must be <= open and close"},
        True,
    ),
    (
        "crossed_book",
        _set("order_books", 3, "price", 102.0),
        "parquet",
        "order_books",
        {
            0: r"best bid must be below best ask, got bid 102.9 >= ask 102 \(crossed book\)",
            3: r"best bid must be below best ask, got bid 102.9 >= ask 102 \(crossed book\)",
            **{r: r"snapshot has a bad level \(rows 0, 3\)" for r in (1, 2, 4, 5)},
        },
        True,
    ),
    (
        "negative_book_price",
        _set("order_books", 2, "price", -1.0),
        "parquet",
        "order_books",
        {
            2: r"price must be > 0, got -1",
            **{r: r"snapshot has a bad level \(row 2\)" for r in (0, 1, 3, 4, 5)},
        },
        True,
    ),
    (
        "asks_not_rising",
        _set("order_books", 10, "price", 12.55),
        "parquet",
        "order_books",
        {
            10: r"ask price must rise with level, got 12.55 at level 1 after 12.6 at level 0",
            **{r: r"snapshot has a bad level \(row 10\)" for r in (6, 7, 8, 9, 11)},
        },
        True,
    ),
    (
        "overlapping_tiers",
        _set("margin_tiers", 2, "min_notional", 2e5),
        "parquet",
        "margin_tiers",
        {
            2: r"min_notional must equal the previous tier's max_notional 250000 \(row 1\), "
            r"got 200000 \(an overlap\)",
            0: r"schedule has a bad tier \(row 2\)",
            1: r"schedule has a bad tier \(row 2\)",
        },
        True,
    ),
    (
        "gap_in_tiers",
        _set("margin_tiers", 5, "min_notional", 3e5),
        "parquet",
        "margin_tiers",
        {
            5: r"min_notional must equal the previous tier's max_notional 250000 \(row 4\), "
            r"got 300000 \(a gap\)",
            3: r"schedule has a bad tier \(row 5\)",
            4: r"schedule has a bad tier \(row 5\)",
        },
        True,
    ),
    (
        "duplicate_key_other_values",
        _append_copy("ohlcv", 4, close=11.5),
        "parquet",
        "ohlcv",
        {
            4: r"duplicate key \(venue, symbol, timeframe, timestamp\) with other values "
            r"\(rows 4, 6\)",
            6: r"duplicate key \(venue, symbol, timeframe, timestamp\) with other values "
            r"\(rows 4, 6\)",
        },
        True,
    ),
    (
        "exact_duplicate",
        _append_copy("ohlcv", 2),
        "parquet",
        "ohlcv",
        {6: r"exact duplicate of row 2"},
        False,  # a warning only in the validator; the contract never drops rows in silence
    ),
    (
        "mark_iv_in_percent",
        _set("option_quotes", 0, "mark_iv", 65.0),
        "parquet",
        "option_quotes",
        {0: r"mark_iv must be an annualised fraction <= 5, got 65 \(looks like percent"},
        True,
    ),
    (
        "unparseable_number",
        _set("ohlcv", 2, "volume", "lots"),
        "csv",
        "ohlcv",
        {2: r"volume must be a number, got 'lots'"},
        True,
    ),
    (
        "unparseable_timestamp",
        _set("ohlcv", 4, "timestamp", "2024-01-01T25:00:00"),
        "csv",
        "ohlcv",
        {
            4: r"timestamp must be an ISO-8601 string or integer milliseconds since the epoch, "
            r"got '2024-01-01T25:00:00'"
        },
        True,
    ),
]


def _plant(tmp_path: Path, mutate: Mutation, fmt: str) -> tuple[Tables, Path]:
    tables = tiny_tables()
    if fmt == "csv":
        tables = {k: _csv_frame(v, "iso").astype(object) for k, v in tables.items()}
    mutate(tables)
    folder = tmp_path / "bad"
    folder.mkdir()
    for name, df in tables.items():
        if fmt == "csv":
            df.to_csv(folder / f"{name}.csv", index=False)
        else:
            df.to_parquet(folder / f"{name}.parquet", index=False)
    return tables, folder


@pytest.mark.parametrize(
    ("mutate", "fmt", "table", "bad_rows", "validator_error"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_rows_stop_the_read_naming_table_file_row_and_rule(
    tmp_path: Path,
    mutate: Mutation,
    fmt: str,
    table: str,
    bad_rows: dict[int, str],
    validator_error: bool,
) -> None:
    _, folder = _plant(tmp_path, mutate, fmt)
    first = min(bad_rows, key=lambda r: ("has a bad" in bad_rows[r], r))  # own faults first
    n = len(bad_rows)
    pattern = (
        rf"^{table} \(.*{table}\.{fmt}\): {n} bad rows?: .*row {first} \([^)]*\): "
        rf"{bad_rows[first]}.*; rerun with --quarantine to set them aside$"
    )
    with pytest.raises(BundleValidationError, match=pattern) as info:
        read_bundle(folder)
    assert "\n" not in str(info.value)
    assert info.value.bad is not None
    assert len(info.value.bad) == n
    proc = run_validator(folder)
    assert (proc.returncode == 1) == validator_error, proc.stdout


@pytest.mark.parametrize(
    ("mutate", "fmt", "table", "bad_rows", "validator_error"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_quarantine_sets_bad_rows_aside_and_keeps_every_good_row(
    tmp_path: Path,
    mutate: Mutation,
    fmt: str,
    table: str,
    bad_rows: dict[int, str],
    validator_error: bool,
) -> None:
    del validator_error
    tables, folder = _plant(tmp_path, mutate, fmt)
    b = read_bundle(folder, quarantine=True)
    q = b.quarantine[b.quarantine["table"] == table]
    assert sorted(q["row"]) == sorted(bad_rows)
    for row, rule in zip(q["row"], q["rule"], strict=True):
        assert re.search(bad_rows[int(row)], rule), (row, rule)
    # every other row of the table is kept, untouched
    got = b.table(table)
    assert got is not None
    # (the CSV case only changed its bad row, so the typed fixture gives the kept rows)
    source = tables if fmt == "parquet" else tiny_tables()
    kept = source[table].drop(index=list(bad_rows))
    key = list(TABLES[table].key)
    assert_same_rows(got, kept.sort_values(key, kind="stable").reset_index(drop=True))
    # the other tables are whole
    clean = tiny_tables()
    for name in TABLES:
        if name not in (table, "truth"):
            assert_same_rows(b.table(name), expected(clean, name))


def test_quarantined_schedule_takes_its_truth_rows_along(tmp_path: Path) -> None:
    # a gap in okx's only schedule (rows 6-7), which truth rows 3-4 describe
    _, folder = _plant(tmp_path, _set("margin_tiers", 7, "min_notional", 1.5e5), "parquet")
    b = read_bundle(folder, quarantine=True)
    q = b.quarantine
    assert sorted(q.loc[q["table"] == "margin_tiers", "row"]) == [6, 7]
    truth_q = q[q["table"] == "truth"]
    assert sorted(truth_q["row"]) == [3, 4]
    assert truth_q["rule"].str.contains("no margin_tiers row with this key").all()
    assert b.truth is not None
    assert len(b.truth) == 3
    assert set(b.truth["venue"]) == {"binance"}


def test_quarantine_of_rows_breaking_several_rules_lists_them_all(tmp_path: Path) -> None:
    def go(t: Tables) -> None:
        t["ohlcv"].loc[0, ["volume", "high"]] = [-1.0, 98.0]

    _, folder = _plant(tmp_path, go, "parquet")
    b = read_bundle(folder, quarantine=True)
    (rule,) = b.quarantine["rule"]
    assert rule == (
        "volume must be >= 0, got -1; high must be >= open and close, "
        "got open 100, high 98, low 99, close 101"
    )
    assert b.quarantine["key"].iloc[0] == "binance, BTC/USDT:USDT, 1h, 2024-01-01T00:00:00Z"


def test_error_counts_and_truncates_many_bad_rows(tmp_path: Path) -> None:
    def go(t: Tables) -> None:
        t["ohlcv"]["volume"] = -1.0

    _, folder = _plant(tmp_path, go, "parquet")
    with pytest.raises(
        BundleValidationError,
        match=r"ohlcv \(.*\): 6 bad rows: row 0 \(.*\): volume must be >= 0, got -1 \| row 1 .* "
        r"\| row 2 .* \| and 3 more; rerun with --quarantine",
    ):
        read_bundle(folder)


# --------------------------------------------------------------------------------------------
# table errors: never quarantinable
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quarantine", [False, True])
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_missing_required_column_errors_even_with_quarantine(
    tmp_path: Path, quarantine: bool, fmt: str
) -> None:
    tables = tiny_tables()
    tables["ohlcv"] = tables["ohlcv"].drop(columns=["close", "volume"])
    folder = dump(tables, tmp_path / "b", fmt)
    with pytest.raises(
        BundleValidationError,
        match=rf"ohlcv \(.*ohlcv\.{fmt}\): missing required column\(s\) \['close', 'volume'\]"
        r".*cannot be quarantined",
    ):
        read_bundle(folder, quarantine=quarantine)


@pytest.mark.parametrize("quarantine", [False, True])
def test_missing_required_table_errors_even_with_quarantine(
    tmp_path: Path, quarantine: bool
) -> None:
    tables = tiny_tables()
    del tables["margin_tiers"]
    folder = dump(tables, tmp_path / "b")
    with pytest.raises(
        BundleValidationError,
        match=r"must hold the required table\(s\) \['margin_tiers'\].*cannot be quarantined",
    ):
        read_bundle(folder, quarantine=quarantine)


def test_wrong_parquet_dtype_is_a_table_error(tmp_path: Path) -> None:
    tables = tiny_tables()
    tables["margin_tiers"]["as_of"] = tables["margin_tiers"]["as_of"].dt.tz_localize(None)
    folder = dump(tables, tmp_path / "b")
    with pytest.raises(
        BundleValidationError,
        match=r"margin_tiers \(.*margin_tiers\.parquet\): column as_of must be a timezone-aware "
        r"UTC timestamp, got dtype datetime64",
    ):
        read_bundle(folder, quarantine=True)
    assert run_validator(folder).returncode == 1


def test_truncated_parquet_errors_naming_the_file(tmp_path: Path) -> None:
    folder = dump(tiny_tables(), tmp_path / "b")
    data = (folder / "ohlcv.parquet").read_bytes()
    (folder / "ohlcv.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        FairmarginInputError, match=r"read_bundle: .*ohlcv\.parquet must be a readable PARQUET"
    ):
        read_bundle(folder, quarantine=True)


def test_csv_with_a_wrong_header_errors_naming_the_file(tmp_path: Path) -> None:
    folder = dump(tiny_tables(), tmp_path / "b", "csv")
    lines = (folder / "contracts.csv").read_text().splitlines()
    (folder / "contracts.csv").write_text("\n".join(lines[1:]) + "\n")  # header line lost
    with pytest.raises(
        BundleValidationError, match=r"contracts \(.*contracts\.csv\): missing required column"
    ):
        read_bundle(folder, quarantine=True)


def test_csv_that_cannot_be_parsed_errors_naming_the_file(tmp_path: Path) -> None:
    folder = dump(tiny_tables(), tmp_path / "b", "csv")
    with (folder / "ohlcv.csv").open("a") as fh:
        fh.write('okx,"ETH/USD:ETH,1h\n')  # an unclosed quote
    with pytest.raises(
        FairmarginInputError, match=r"read_bundle: .*ohlcv\.csv must be a readable CSV"
    ):
        read_bundle(folder)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FairmarginInputError, match=r"path must be a bundle folder, .*not found"):
        read_bundle(tmp_path / "nope")


def test_extra_columns_are_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tables = tiny_tables()
    tables["ohlcv"]["vwap"] = 1.0
    folder = dump(tables, tmp_path / "b")
    with caplog.at_level(logging.WARNING, logger="pipelines.contract"):
        b = read_bundle(folder)
    assert "vwap" not in b.ohlcv.columns
    assert "dropping column(s) not in the contract: ['vwap']" in caplog.text


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def test_write_refuses_a_bundle_that_breaks_the_contract(tmp_path: Path) -> None:
    tables = tiny_tables()
    tables["ohlcv"].loc[3, "low"] = 20.0
    with pytest.raises(
        BundleValidationError,
        match=r"ohlcv \(write_bundle tables\['ohlcv'\]\): 1 bad row: row 3 \(okx, ETH/USD:ETH, "
        r"1h, 2024-01-01T00:00:00Z\): low must be <= open and close.*write_bundle writes only",
    ):
        write_bundle(tables, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_a_non_empty_folder_unless_overwrite(tmp_path: Path) -> None:
    target = write_bundle(tiny_tables(), tmp_path / "b")
    before = bundle_fingerprint(target)
    with pytest.raises(FairmarginInputError, match=r"pass overwrite=True to replace it"):
        write_bundle(tiny_tables(), target)
    assert bundle_fingerprint(target) == before
    smaller = {
        k: v for k, v in tiny_tables().items() if k in ("contracts", "margin_tiers", "ohlcv")
    }
    write_bundle(smaller, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == [
        "contracts.parquet",
        "margin_tiers.parquet",
        "ohlcv.parquet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temp or old folder left


def test_write_into_an_empty_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    write_bundle(tiny_tables(), tmp_path / "b")
    assert len(read_bundle(tmp_path / "b").ohlcv) == 6


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bundle_mod._write_parquet
    calls: list[Path] = []

    def flaky(df: pd.DataFrame, path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        real(df, path)

    monkeypatch.setattr(bundle_mod, "_write_parquet", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(tiny_tables(), tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    assert len(calls) == 3

    # with overwrite: the old bundle stays as it was
    monkeypatch.setattr(bundle_mod, "_write_parquet", real)
    old = write_bundle(tiny_tables(), tmp_path / "old")
    before = bundle_fingerprint(old)
    calls.clear()
    monkeypatch.setattr(bundle_mod, "_write_parquet", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_bundle(tiny_tables(), old, overwrite=True)
    assert bundle_fingerprint(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_write_rejects_unknown_and_missing_tables(tmp_path: Path) -> None:
    tables = tiny_tables()
    with pytest.raises(FairmarginInputError, match=r"table names must be among .*\['bars'\]"):
        write_bundle({**tables, "bars": tables["ohlcv"]}, tmp_path / "b")
    del tables["contracts"]
    with pytest.raises(BundleValidationError, match=r"got no \['contracts'\]"):
        write_bundle(tables, tmp_path / "b")


def test_write_quarantine_round_trip_and_stale_file(tmp_path: Path) -> None:
    _, folder = _plant(tmp_path, _set("ohlcv", 1, "open", -5.0), "parquet")
    b = read_bundle(folder, quarantine=True)
    out = tmp_path / "out"
    path = write_quarantine(b.quarantine, out)
    assert path == out / "quarantine.parquet"
    back = pd.read_parquet(path)
    assert back[["table", "row"]].to_dict("records") == [{"table": "ohlcv", "row": 1}]
    assert back["rule"].iloc[0].startswith("open must be > 0, got -5")
    assert write_quarantine(b.quarantine.iloc[:0], out) is None
    assert not path.exists()
    assert sorted(p.name for p in out.iterdir()) == []
    with pytest.raises(
        FairmarginInputError, match=r"write_quarantine: missing columns \['rule'\]"
    ):
        write_quarantine(b.quarantine.drop(columns=["rule"]), out)


def test_fingerprint_follows_table_bytes_only(tmp_path: Path) -> None:
    folder = write_bundle(tiny_tables(), tmp_path / "b")
    fp = bundle_fingerprint(folder)
    assert re.fullmatch(r"[0-9a-f]{64}", fp)
    (folder / "README.md").write_text("notes")
    assert bundle_fingerprint(folder) == fp
    tables = tiny_tables()
    tables["ohlcv"].loc[0, "volume"] = 5.5
    other = write_bundle(tables, tmp_path / "c")
    assert bundle_fingerprint(other) != fp
    (tmp_path / "empty").mkdir()
    with pytest.raises(FairmarginInputError, match=r"must hold table files, got none"):
        bundle_fingerprint(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# size
# --------------------------------------------------------------------------------------------


def test_large_book_validates_quickly(tmp_path: Path) -> None:
    import time

    rng = np.random.default_rng(0)
    n_snap, depth = 4_000, 25  # 200,000 rows
    rep = np.repeat(np.arange(n_snap), 2 * depth)
    level = np.tile(np.arange(depth), 2 * n_snap)
    ask = np.tile(np.repeat([False, True], depth), n_snap)
    mid = rng.uniform(10, 1000, n_snap)[rep]
    price = mid * (1 + np.where(ask, 1, -1) * (level + 1) * 1e-4)
    book = pd.DataFrame(
        {
            "venue": "binance",
            "symbol": "BTC/USDT:USDT",
            "timestamp": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rep, unit="s"),
            "side": np.where(ask, "ask", "bid"),
            "level": level,
            "price": price,
            "amount": 1.0,
        }
    ).sample(frac=1.0, random_state=1)
    tables = tiny_tables()
    tables["order_books"] = book
    folder = dump(tables, tmp_path / "b")
    start = time.perf_counter()
    b = read_bundle(folder)
    elapsed = time.perf_counter() - start
    assert b.order_books is not None
    assert len(b.order_books) == 200_000
    assert elapsed < 10.0, elapsed
