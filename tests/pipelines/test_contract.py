"""Contract rules, coercion and messages (pipelines/contract.py) on small inline frames."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pandas.testing import assert_frame_equal

from features._checks import FairmarginInputError
from pipelines.contract import (
    TABLES,
    UNPARSEABLE_PREFIX,
    BundleValidationError,
    coerce_table,
    describe_bad_rows,
    validate_table,
)

UTC = "UTC"


def ts(*values: Any) -> list[pd.Timestamp]:
    return list(pd.to_datetime(list(values), utc=True))


def tiers(**changes: Any) -> pd.DataFrame:
    """One schedule of three tiers (binance BTC/USDT:USDT at 2024-01-01)."""
    df = pd.DataFrame(
        {
            "venue": ["binance"] * 3,
            "symbol": ["BTC/USDT:USDT"] * 3,
            "as_of": ts(*["2024-01-01"] * 3),
            "tier": [1, 2, 3],
            "min_notional": [0.0, 5e4, 2.5e5],
            "max_notional": [5e4, 2.5e5, np.inf],
            "maintenance_margin_rate": [0.004, 0.005, 0.01],
            "max_leverage": [125.0, 100.0, 50.0],
            "initial_margin_rate": [0.008, 0.01, 0.02],
        }
    )
    for col, values in changes.items():
        df[col] = values
    return df


def bars(**changes: Any) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "venue": ["binance"] * 3,
            "symbol": ["BTC/USDT:USDT"] * 3,
            "timeframe": ["1h"] * 3,
            "timestamp": ts("2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 02:00"),
            "open": [100.0, 101.0, 102.0],
            "high": [102.0, 103.0, 104.0],
            "low": [99.0, 100.0, 101.0],
            "close": [101.0, 102.0, 103.0],
            "volume": [5.0, 6.0, 7.0],
        }
    )
    for col, values in changes.items():
        df[col] = values
    return df


def book(bids: list[float], asks: list[float]) -> pd.DataFrame:
    n_b, n_a = len(bids), len(asks)
    return pd.DataFrame(
        {
            "venue": ["okx"] * (n_b + n_a),
            "symbol": ["ETH/USDT:USDT"] * (n_b + n_a),
            "timestamp": ts(*["2024-01-01 03:00"] * (n_b + n_a)),
            "side": ["bid"] * n_b + ["ask"] * n_a,
            "level": list(range(n_b)) + list(range(n_a)),
            "price": bids + asks,
            "amount": [1.0] * (n_b + n_a),
        }
    )


def rules(bad: pd.DataFrame) -> dict[int, str]:
    return dict(zip(bad["row"].astype(int), bad["rule"], strict=True))


# --------------------------------------------------------------------------------------------
# coercion
# --------------------------------------------------------------------------------------------


def test_csv_timestamps_iso_offsets_naive_and_milliseconds_agree() -> None:
    raw = pd.DataFrame(
        {
            "venue": ["a"] * 4,
            "symbol": ["X/USDT:USDT"] * 4,
            "timestamp": [
                "2024-01-01T00:00:00Z",
                "2024-01-01T02:00:00+02:00",
                "2024-01-01 00:00:00",
                "1704067200000",  # 19723 days x 86,400 s = 1,704,067,200 s after 1970-01-01
            ],
            "funding_rate": ["0.0001", "1e-4", " 0.0001 ", "0.0001"],
        }
    )
    out = coerce_table("funding_rates", raw, fmt="csv", source="f.csv")
    assert out["timestamp"].dtype == pd.DatetimeTZDtype("ns", UTC)
    assert (out["timestamp"] == pd.Timestamp("2024-01-01", tz=UTC)).all()
    assert out["funding_rate"].dtype == np.float64
    assert (out["funding_rate"] == 1e-4).all()
    assert not [c for c in out.columns if c.startswith(UNPARSEABLE_PREFIX)]


def test_csv_unparseable_values_become_row_errors_not_nulls() -> None:
    raw = tiers().astype(str)
    raw.loc[0, "as_of"] = "yesterday"
    raw.loc[1, "tier"] = "2.5"
    raw.loc[2, "max_leverage"] = "fifty"
    out = coerce_table("margin_tiers", raw, fmt="csv", source="t.csv")
    assert out["as_of"].isna().tolist() == [True, False, False]
    good, bad = validate_table("margin_tiers", out, source="t.csv")
    assert good.empty  # one schedule: all of it goes
    got = rules(bad)
    assert got[0] == (
        "as_of must be an ISO-8601 string or integer milliseconds since the epoch, got 'yesterday'"
    )
    assert got[1] == "tier must be an integer, got '2.5'"
    assert got[2].startswith("max_leverage must be a number, got 'fifty'")
    assert "must not be null" not in " ".join(got.values())


def test_csv_bools_and_out_of_range_timestamps() -> None:
    raw = pd.DataFrame(
        {
            "venue": ["v"] * 4,
            "symbol": ["A", "B", "C", "D"],
            "type": ["swap"] * 4,
            "base": ["A"] * 4,
            "quote": ["USDT"] * 4,
            "settle": ["USDT"] * 4,
            "linear": ["true", "FALSE", "yes", "True"],
            "contract_size": ["1"] * 4,
            "expiry": [None, None, None, "3000-01-01"],
            "strike": [None] * 4,
            "option_type": [None] * 4,
        }
    )
    good, bad = validate_table(
        "contracts", coerce_table("contracts", raw, fmt="csv", source="c.csv")
    )
    assert good["symbol"].tolist() == ["A", "B"]
    assert good["linear"].tolist() == [True, False]
    assert good["linear"].dtype == bool
    got = rules(bad)
    assert got[2] == "linear must be true or false, got 'yes'"
    assert got[3].startswith("expiry must lie within 1677-09-22..2262-04-11")


def test_parquet_dtypes_are_strict() -> None:
    with pytest.raises(BundleValidationError, match=r"column as_of must be in UTC, got timezone"):
        coerce_table(
            "margin_tiers",
            tiers(as_of=list(pd.to_datetime(["2024-01-01"] * 3).tz_localize("Europe/Paris"))),
            fmt="parquet",
            source="t.parquet",
        )
    with pytest.raises(
        BundleValidationError,
        match=r"margin_tiers \(t.parquet\): column tier must be int64, got dtype float64 \(a "
        r"table error",
    ):
        coerce_table(
            "margin_tiers", tiers(tier=[1.0, 2.0, 3.0]), fmt="parquet", source="t.parquet"
        )
    # an int column with a null reads back from Parquet as float: the null is a row error
    out = coerce_table(
        "margin_tiers", tiers(tier=[1.0, None, 3.0]), fmt="parquet", source="t.parquet"
    )
    _, bad = validate_table("margin_tiers", out)
    assert rules(bad)[1] == "tier must not be null"
    with pytest.raises(BundleValidationError, match=r"column venue must be str, got dtype int64"):
        coerce_table("margin_tiers", tiers(venue=[1, 2, 3]), fmt="parquet", source="t.parquet")
    # the same values are fine in CSV, where everything is text
    out = coerce_table("margin_tiers", tiers(venue=[1, 2, 3]), fmt="csv", source="t.csv")
    assert out["venue"].tolist() == ["1", "2", "3"]


def test_missing_and_repeated_columns_are_table_errors() -> None:
    with pytest.raises(
        BundleValidationError,
        match=r"ohlcv \(o.csv\): missing required column\(s\) \['low'\]; got .* cannot be "
        r"quarantined",
    ):
        coerce_table("ohlcv", bars().drop(columns="low"), fmt="csv", source="o.csv")
    df = bars()
    df.columns = [*df.columns[:-1], "open"]
    with pytest.raises(BundleValidationError, match=r"column names must be unique"):
        coerce_table("ohlcv", df, fmt="parquet", source="o.parquet")
    with pytest.raises(FairmarginInputError, match=r"coerce_table: name must be one of"):
        coerce_table("bars", bars(), fmt="csv", source="o.csv")
    with pytest.raises(ValueError, match=r"fmt must be 'parquet' or 'csv', got 'json'"):
        coerce_table("ohlcv", bars(), fmt="json", source="o.json")  # type: ignore[arg-type]


def test_extra_columns_dropped_with_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipelines.contract"):
        good, bad = validate_table("ohlcv", bars(vwap=[1.0, 2.0, 3.0]))
    assert list(good.columns) == list(TABLES["ohlcv"].columns)
    assert bad.empty
    assert "['vwap']" in caplog.text


# --------------------------------------------------------------------------------------------
# row rules
# --------------------------------------------------------------------------------------------


def test_good_rows_sorted_by_key_with_contract_dtypes() -> None:
    df = bars().iloc[[2, 0, 1]]
    good, bad = validate_table("ohlcv", df)
    assert bad.empty
    assert good["timestamp"].is_monotonic_increasing
    assert isinstance(good.index, pd.RangeIndex)
    assert good["timestamp"].dtype == pd.DatetimeTZDtype("ns", UTC)
    assert good["venue"].dtype == "str"


def test_nulls_empty_strings_and_non_finite_floats() -> None:
    df = bars(
        venue=["binance", "", None],
        volume=[np.inf, 6.0, 7.0],
    )
    good, bad = validate_table("ohlcv", df)
    assert good.empty
    assert rules(bad) == {
        0: "volume must be finite, got inf",
        1: "venue must not be empty",
        2: "venue must not be null",
    }


def test_inf_max_notional_allowed_but_not_nan_or_minus_inf() -> None:
    good, bad = validate_table("margin_tiers", tiers())
    assert bad.empty
    assert np.isposinf(good["max_notional"].iloc[-1])
    _, bad = validate_table("margin_tiers", tiers(max_notional=[5e4, 2.5e5, -np.inf]))
    assert rules(bad)[2].startswith("max_notional must be finite, got -inf")


def test_null_maintenance_rate_is_allowed_and_null_initial_rate_is_one_over_leverage() -> None:
    # DATA_CONTRACT: maintenance_margin_rate "may be null where a venue does not publish it"
    good, bad = validate_table(
        "margin_tiers",
        tiers(maintenance_margin_rate=[np.nan] * 3, initial_margin_rate=[np.nan] * 3),
    )
    assert bad.empty
    assert len(good) == 3
    # tier 2 publishes no initial rate and max_leverage 100: 1/100 = 0.01 < 0.02 of tier 1
    _, bad = validate_table(
        "margin_tiers",
        tiers(initial_margin_rate=[0.02, np.nan, 0.02], max_leverage=[50.0, 100.0, 50.0]),
    )
    assert rules(bad) == {
        1: "initial margin rate must not fall as tier rises, got 0.01 after 0.02 at row 0",
        0: "schedule has a bad tier (row 1)",
        2: "schedule has a bad tier (row 1)",
    }


@pytest.mark.parametrize(
    ("changes", "row", "rule"),
    [
        ({"tier": [0, 2, 3]}, 0, "tier must be >= 1, got 0"),
        ({"min_notional": [-1.0, 5e4, 2.5e5]}, 0, "min_notional must be >= 0, got -1"),
        (
            {"max_notional": [5e4, 5e4, np.inf], "min_notional": [0.0, 5e4, 5e4]},
            1,
            "max_notional must be > min_notional 50000, got 50000",
        ),
        (
            {"maintenance_margin_rate": [0.004, 0.0, 0.01]},
            1,
            "maintenance_margin_rate must be in (0, 1], got 0",
        ),
        ({"initial_margin_rate": [0.008, 0.01, 1.5]}, 2, "initial_margin_rate must be in (0, 1]"),
        ({"max_leverage": [0.5, 100.0, 50.0]}, 0, "max_leverage must be >= 1, got 0.5"),
        (
            {"maintenance_margin_rate": [0.004, 0.003, 0.01]},
            1,
            "maintenance_margin_rate must not fall as tier rises, got 0.003 after 0.004",
        ),
    ],
)
def test_margin_tier_rules(changes: dict[str, list[object]], row: int, rule: str) -> None:
    good, bad = validate_table("margin_tiers", tiers(**changes))
    assert good.empty  # the whole schedule is set aside
    got = rules(bad)
    assert got[row].startswith(rule)
    assert all(got[r] == f"schedule has a bad tier (row {row})" for r in got if r != row)


def test_contiguity_tolerance_and_first_tier_from_zero_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 5e4 * (1 + 1e-12) is within the 1e-9 relative tolerance
    _, bad = validate_table("margin_tiers", tiers(min_notional=[0.0, 5e4 * (1 + 1e-12), 2.5e5]))
    assert bad.empty
    with caplog.at_level(logging.WARNING, logger="pipelines.contract"):
        good, bad = validate_table("margin_tiers", tiers(min_notional=[10.0, 5e4, 2.5e5]))
    assert bad.empty
    assert len(good) == 3
    assert "1 schedule(s) whose first min_notional is not 0" in caplog.text


def test_only_the_broken_schedule_is_set_aside() -> None:
    other = tiers(symbol=["ETH/USDT:USDT"] * 3)
    df = pd.concat([tiers(min_notional=[0.0, 6e4, 2.5e5]), other], ignore_index=True)
    good, bad = validate_table("margin_tiers", df)
    assert sorted(bad["row"]) == [0, 1, 2]
    assert rules(bad)[1] == (
        "min_notional must equal the previous tier's max_notional 50000 (row 0), got 60000 (a gap)"
    )
    assert_frame_equal(good, validate_table("margin_tiers", other)[0])


def test_exact_duplicate_tier_keeps_the_schedule() -> None:
    df = pd.concat([tiers(), tiers().iloc[[1]]], ignore_index=True)
    good, bad = validate_table("margin_tiers", df)
    assert rules(bad) == {3: "exact duplicate of row 1"}
    assert len(good) == 3


def test_duplicate_key_with_other_values_sets_aside_every_row_of_the_key() -> None:
    df = pd.concat([bars().iloc[[0]], bars().iloc[[0]], bars(close=[100.5] * 3).iloc[[0]]])
    good, bad = validate_table("ohlcv", df)
    assert good.empty
    want = "duplicate key (venue, symbol, timeframe, timestamp) with other values (rows 0, 1, 2)"
    assert rules(bad) == {0: want, 1: want, 2: want}


@pytest.mark.parametrize(
    ("changes", "row", "rule"),
    [
        (
            {"timeframe": ["1h", "1x", "1h"]},
            1,
            "timeframe must look like 1m, 5m, 1h or 1d, got '1x'",
        ),
        ({"timeframe": ["1h", "01h", "1h"]}, 1, "timeframe must look like"),
        ({"volume": [5.0, -0.1, 7.0]}, 1, "volume must be >= 0, got -0.1"),
        (
            {"low": [99.0, 101.5, 101.0]},
            1,
            "low must be <= open and close, got open 101, high 103, low 101.5, close 102",
        ),
        (
            {"high": [102.0, 103.0, 102.5]},
            2,
            "high must be >= open and close, got open 102, high 102.5, low 101, close 103",
        ),
    ],
)
def test_ohlcv_rules(changes: dict[str, list[object]], row: int, rule: str) -> None:
    good, bad = validate_table("ohlcv", bars(**changes))
    assert rules(bad)[row].startswith(rule)
    assert len(good) == 2  # bars are judged one by one


def test_timeframes_of_other_units_are_accepted() -> None:
    _, bad = validate_table("ohlcv", bars(timeframe=["15m", "1w", "1M"]))
    assert bad.empty


CONTRACT = {
    "venue": "v",
    "symbol": "S",
    "type": "swap",
    "base": "B",
    "quote": "Q",
    "settle": "Q",
    "linear": True,
    "contract_size": 1.0,
    "expiry": pd.NaT,
    "strike": np.nan,
    "option_type": None,
}
EXPIRY = pd.Timestamp("2024-03-29 08:00", tz=UTC)


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"type": "perp"}, "type must be one of swap, future, option, spot, got 'perp'"),
        ({"contract_size": 0.0}, "contract_size must be > 0, got 0"),
        ({"expiry": EXPIRY}, "expiry must be null for a swap, got 2024-03-29T08:00:00Z"),
        ({"type": "future"}, "expiry must be set for a 'future', got null"),
        ({"strike": 5.0}, "strike must be null for a non-option, got 5"),
        ({"option_type": "call"}, "option_type must be null for a non-option, got 'call'"),
        (
            {"type": "option", "expiry": EXPIRY, "option_type": "call"},
            "strike must be > 0 for an option, got null",
        ),
        (
            {"type": "option", "expiry": EXPIRY, "strike": 100.0, "option_type": "C"},
            "option_type must be call or put for an option, got 'C'",
        ),
    ],
)
def test_contract_rules(changes: dict[str, object], rule: str) -> None:
    ok = pd.DataFrame([CONTRACT])
    ok["expiry"] = pd.to_datetime(ok["expiry"], utc=True)
    row = pd.DataFrame([{**CONTRACT, **changes, "symbol": "T"}])
    row["expiry"] = pd.to_datetime(row["expiry"], utc=True)
    good, bad = validate_table("contracts", pd.concat([ok, row], ignore_index=True))
    assert rules(bad) == {1: rule}
    assert good["symbol"].tolist() == ["S"]


def test_book_rules_and_whole_snapshot() -> None:
    good, bad = validate_table("order_books", book([100.0, 99.0, 98.0], [101.0, 102.0, 103.0]))
    assert bad.empty
    assert len(good) == 6
    _, bad = validate_table("order_books", book([100.0, 100.0, 98.0], [101.0, 102.0, 103.0]))
    got = rules(bad)
    assert got[1] == "bid price must fall with level, got 100 at level 1 after 100 at level 0"
    assert got[0] == "snapshot has a bad level (row 1)"
    assert len(got) == 6
    _, bad = validate_table("order_books", book([100.0, 99.0], [99.5, 102.0]))
    assert rules(bad)[0] == (
        "best bid must be below best ask, got bid 100 >= ask 99.5 (crossed book)"
    )
    # a locked book (best bid == best ask) breaks "best bid < best ask" too
    _, bad = validate_table("order_books", book([100.0], [100.0]))
    assert rules(bad) == {
        0: "best bid must be below best ask, got bid 100 >= ask 100 (crossed book)",
        1: "best bid must be below best ask, got bid 100 >= ask 100 (crossed book)",
    }
    _, bad = validate_table("order_books", book([100.0], [101.0]).assign(side=["bid", "BUY"]))
    assert rules(bad) == {
        1: "side must be one of bid, ask, got 'BUY'",
        0: "snapshot has a bad level (row 1)",
    }


def test_one_sided_snapshot_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipelines.contract"):
        good, bad = validate_table("order_books", book([100.0, 99.0], []))
    assert bad.empty
    assert len(good) == 2
    assert "1 snapshot(s) with one side only" in caplog.text


def quotes(**changes: Any) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "venue": ["deribit"] * 2,
            "underlying": ["BTC"] * 2,
            "symbol": ["C1", "P1"],
            "timestamp": ts("2024-01-01", "2024-01-01"),
            "expiry": ts("2024-03-29 08:00", "2024-03-29 08:00"),
            "strike": [50000.0, 50000.0],
            "option_type": ["call", "put"],
            "mark_iv": [0.55, 0.6],
            "underlying_price": [42000.0, 42000.0],
        }
    )
    for col, values in changes.items():
        df[col] = values
    return df


def test_option_quote_rules() -> None:
    _, bad = validate_table("option_quotes", quotes(mark_iv=[55.0, 0.0]))
    assert rules(bad) == {
        0: "mark_iv must be an annualised fraction <= 5, got 55 (looks like percent: divide by "
        "100)",
        1: "mark_iv must be > 0, got 0",
    }
    good, bad = validate_table("option_quotes", quotes(ask_iv=[0.56, 61.0], bid_iv=[0.54, np.nan]))
    assert rules(bad) == {
        1: "ask_iv must be an annualised fraction <= 5, got 61 (looks like percent: divide by 100)"
    }
    assert list(good.columns)[-2:] == ["bid_iv", "ask_iv"]


# --------------------------------------------------------------------------------------------
# truth
# --------------------------------------------------------------------------------------------


def truth_for(schedule: pd.DataFrame, fair: list[float], planted: list[bool]) -> pd.DataFrame:
    pub = schedule["initial_margin_rate"].fillna(1 / schedule["max_leverage"]).to_numpy()
    return pd.DataFrame(
        {
            "venue": schedule["venue"],
            "symbol": schedule["symbol"],
            "as_of": schedule["as_of"],
            "tier": schedule["tier"],
            "fair_initial_margin_rate": fair,
            "planted": planted,
            "planted_deviation": pub / np.asarray(fair) - 1,
        }
    )


def test_truth_rules() -> None:
    sched = tiers()  # published 0.008, 0.01, 0.02
    ok = truth_for(sched, [0.008, 0.02, 0.0125], [False, True, True])  # 0, -0.5, +0.6
    good, bad = validate_table("truth", ok, tables={"margin_tiers": sched})
    assert bad.empty
    assert len(good) == 3

    wrong = ok.assign(planted_deviation=[0.0, -0.45, 0.6])
    _, bad = validate_table("truth", wrong, tables={"margin_tiers": sched})
    assert rules(bad)[1] == "planted_deviation must equal published / fair - 1 = -0.5, got -0.45"

    band = truth_for(sched, [0.008, 0.0125, 0.0125], [False, False, True])  # -0.2, +0.6
    _, bad = validate_table("truth", band, tables={"margin_tiers": sched})
    assert rules(bad)[1] == (
        "planted_deviation of a tier not planted must lie within 0.10 of 0, got -0.2"
    )

    partial = ok.iloc[[0, 1]]
    _, bad = validate_table("truth", partial, tables={"margin_tiers": sched})
    assert rules(bad) == {
        0: "truth of this schedule is incomplete: no row for tier(s) 3",
        1: "truth of this schedule is incomplete: no row for tier(s) 3",
    }


def test_truth_must_sit_at_the_latest_schedule() -> None:
    old, new = tiers(), tiers(as_of=ts(*["2024-01-02"] * 3))
    both = pd.concat([old, new], ignore_index=True)
    stale = truth_for(old, [0.008, 0.01, 0.02], [False] * 3)
    with pytest.raises(
        BundleValidationError,
        match=r"truth \(<frame>\): every latest margin schedule must have truth rows, got 1 "
        r"without any",
    ):
        validate_table("truth", stale, tables={"margin_tiers": both})
    fresh = truth_for(new, [0.008, 0.01, 0.02], [False] * 3)
    good, bad = validate_table(
        "truth", pd.concat([fresh, stale], ignore_index=True), tables={"margin_tiers": both}
    )
    assert len(good) == 3
    assert rules(bad)[3].startswith(
        "as_of must be the latest as_of of the schedule 2024-01-02T00:00:00Z, got "
        "2024-01-01T00:00:00Z"
    )
    # without margin_tiers the cross-table rules are skipped
    good, bad = validate_table("truth", stale)
    assert bad.empty
    assert len(good) == 3


# --------------------------------------------------------------------------------------------
# messages and properties
# --------------------------------------------------------------------------------------------


def test_describe_bad_rows_lists_own_faults_first_on_one_line() -> None:
    _, bad = validate_table("margin_tiers", tiers(min_notional=[0.0, 5e4, 3e5]))
    text = describe_bad_rows(bad, source="b/margin_tiers.csv", max_rows=1)
    assert text == (
        "margin_tiers (b/margin_tiers.csv): 3 bad rows: row 2 (binance, BTC/USDT:USDT, "
        "2024-01-01T00:00:00Z, tier 3): min_notional must equal the previous tier's max_notional "
        "250000 (row 1), got 300000 (a gap) | and 2 more; rerun with --quarantine to set them "
        "aside"
    )
    with pytest.raises(ValueError, match=r"bad must hold at least one row"):
        describe_bad_rows(bad.iloc[:0], source="x")


def test_unknown_table_name() -> None:
    with pytest.raises(FairmarginInputError, match=r"validate_table: name must be one of .*'x'"):
        validate_table("x", bars())


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 40),
    copies=st.lists(st.integers(0, 39), max_size=5),
)
def test_row_order_and_exact_copies_do_not_change_the_good_rows(
    seed: int, n: int, copies: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    close = rng.integers(50, 150, n).astype(float)
    start = pd.Timestamp("2024-01-01", tz=UTC)
    df = pd.DataFrame(
        {
            "venue": rng.choice(["a", "b"], n),
            "symbol": "X/USDT:USDT",
            "timeframe": "1m",
            "timestamp": start + pd.to_timedelta(np.arange(n), unit="min"),
            "open": close,
            "high": close + 1,
            "low": close - 1,
            "close": close,
            "volume": rng.integers(0, 10, n).astype(float),
        }
    )
    base, bad = validate_table("ohlcv", df)
    assert bad.empty
    picks = [c % n for c in copies]
    shuffled = df.sample(frac=1.0, random_state=seed % 1000).reset_index(drop=True)
    noisy = pd.concat([shuffled, df.iloc[picks]], ignore_index=True)
    good, bad = validate_table("ohlcv", noisy)
    assert_frame_equal(good, base)
    # every appended copy is set aside as an exact duplicate, nothing else
    assert sorted(bad["row"]) == list(range(n, n + len(picks)))
    assert bad["rule"].str.startswith("exact duplicate of row ").all()
