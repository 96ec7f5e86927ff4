"""Shared importer machinery: time parsing, contract dtypes, row rules and the quarantine."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginError, FairmarginInputError
from pipelines.importers._common import (
    CONTRACT_COLUMNS,
    ImportResult,
    empty_table,
    finish,
    load_json,
    parse_epoch,
    parse_time,
    resolve_as_of,
)

UTC = dt.UTC


def _utc(*args: int) -> pd.Timestamp:
    return pd.Timestamp(dt.datetime(*args, tzinfo=UTC))


def test_parse_epoch_detects_seconds_millis_micros_nanos():
    # independent path: datetime.fromtimestamp on whole seconds, then the sub-second part
    base = int(dt.datetime(2020, 4, 1, tzinfo=UTC).timestamp())  # 1585699200
    got = parse_epoch(
        np.array([base, base * 1000 + 245, base * 1_000_000 + 245_000, base * 10**9 + 7])
    )
    assert got.tolist() == [
        _utc(2020, 4, 1),
        _utc(2020, 4, 1) + pd.Timedelta(milliseconds=245),
        _utc(2020, 4, 1) + pd.Timedelta(milliseconds=245),
        _utc(2020, 4, 1) + pd.Timedelta(nanoseconds=7),
    ]
    assert str(got.dtype) == "datetime64[ns, UTC]"


def test_parse_epoch_mixed_float_column_is_exact_to_the_millisecond():
    # a float column mixing seconds and milliseconds (CryptoDataDownload hourly files);
    # 1744124642786 ms = 2025-04-08 15:04:02.786 (fromtimestamp(1744124642) + 786 ms)
    got = parse_epoch(pd.Series([1744124642786.0, 1502949600.0, np.nan]))
    assert got.iloc[0] == pd.Timestamp(
        dt.datetime.fromtimestamp(1744124642, tz=UTC)
    ) + pd.Timedelta(milliseconds=786)
    assert got.iloc[1] == pd.Timestamp(dt.datetime.fromtimestamp(1502949600, tz=UTC))
    assert pd.isna(got.iloc[2])


def test_parse_time_text_offsets_and_garbage():
    got = parse_time(
        pd.Series(["2022-02-05T22:36:28-06:00", "2024-05-22 21:46:38.512", "soon", None])
    )
    # -06:00 offset: 22:36:28 local is 04:36:28 UTC the next day; naive text is UTC
    assert got.iloc[0] == _utc(2022, 2, 6, 4, 36, 28)
    assert got.iloc[1] == _utc(2024, 5, 22, 21, 46, 38) + pd.Timedelta(milliseconds=512)
    assert got.iloc[2:].isna().all()


def _tiers(**over: object) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "venue": "v",
            "symbol": "BTC/USDT:USDT",
            "as_of": _utc(2024, 1, 1),
            "tier": [1, 2, 3],
            "min_notional": [0.0, 10.0, 20.0],
            "max_notional": [10.0, 20.0, np.inf],
            "maintenance_margin_rate": [0.01, 0.02, 0.03],
            "max_leverage": [50.0, 25.0, 10.0],
            "initial_margin_rate": [0.02, 0.04, 0.1],
            "_row": [0, 1, 2],
        }
    )
    for k, v in over.items():
        df[k] = v
    return df


def test_finish_casts_to_exact_contract_dtypes():
    res = finish({"margin_tiers": _tiers()}, rows_read=3, source="s", who="t")
    out = res.tables["margin_tiers"]
    assert list(out.columns) == list(CONTRACT_COLUMNS["margin_tiers"])
    assert {c: str(t) for c, t in out.dtypes.items()} == {
        c: ("str" if t == "str" else t) for c, t in CONTRACT_COLUMNS["margin_tiers"].items()
    }
    assert res.rows_read == 3
    assert res.quarantine.empty
    assert list(res.quarantine.columns) == ["source", "row", "rule"]


def test_empty_table_has_contract_dtypes():
    e = empty_table("order_books")
    assert list(e.columns) == list(CONTRACT_COLUMNS["order_books"])
    assert str(e["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert str(e["level"].dtype) == "int64"


def test_tier_gap_quarantines_the_whole_schedule_naming_the_row():
    res = finish(
        {"margin_tiers": _tiers(min_notional=[0.0, 12.0, 20.0])}, rows_read=3, source="f", who="t"
    )
    assert res.tables["margin_tiers"].empty
    assert sorted(res.quarantine["row"]) == [0, 1, 2]
    assert (
        res.quarantine["rule"].str.contains("first broken: row 1: tiers must be contiguous").all()
    )


def test_rate_falling_with_tier_is_quarantined():
    res = finish(
        {"margin_tiers": _tiers(initial_margin_rate=[0.02, 0.01, 0.1])},
        rows_read=3,
        source="f",
        who="t",
    )
    assert res.quarantine["rule"].str.contains("initial margin rate falls").any()


def test_strict_raises_naming_source_row_and_rule():
    bad = _tiers(max_leverage=[50.0, 0.5, 10.0])
    with pytest.raises(FairmarginInputError, match=r"f row 1: .*max_leverage must be >= 1"):
        finish({"margin_tiers": bad}, rows_read=3, source="f", who="t", strict=True)


def test_duplicate_key_with_other_values_is_quarantined_exact_duplicates_merged():
    ob = pd.DataFrame(
        {
            "venue": "v",
            "symbol": "X/USDT:USDT",
            "timestamp": [_utc(2024, 1, 1)] * 4,
            "side": ["bid", "bid", "ask", "ask"],
            "level": [0, 0, 0, 0],
            "price": [10.0, 10.0, 11.0, 11.5],
            "amount": [1.0, 1.0, 2.0, 2.0],
            "_row": [0, 1, 2, 3],
        }
    )
    res = finish({"order_books": ob}, rows_read=4, source="f", who="t")
    assert len(res.tables["order_books"]) == 1  # the merged bid
    assert sorted(res.quarantine["row"]) == [2, 3]
    assert res.quarantine["rule"].str.contains("duplicate key").all()


def test_crossed_book_is_quarantined_whole():
    ob = pd.DataFrame(
        {
            "venue": "v",
            "symbol": "X/USDT:USDT",
            "timestamp": _utc(2024, 1, 1),
            "side": ["bid", "ask"],
            "level": [0, 0],
            "price": [11.0, 10.0],
            "amount": [1.0, 1.0],
            "_row": [0, 1],
        }
    )
    res = finish({"order_books": ob}, rows_read=2, source="f", who="t")
    assert res.tables["order_books"].empty
    assert res.quarantine["rule"].str.contains("best bid must be < best ask").all()


def test_ohlcv_inconsistent_bar_and_percent_iv_are_quarantined():
    bars = pd.DataFrame(
        {
            "venue": "v",
            "symbol": "X/USDT",
            "timeframe": "1h",
            "timestamp": [_utc(2024, 1, 1), _utc(2024, 1, 1, 1)],
            "open": [10.0, 10.0],
            "high": [11.0, 9.0],
            "low": [9.0, 8.0],
            "close": [10.5, 9.5],
            "volume": [1.0, 1.0],
            "_row": [0, 1],
        }
    )
    res = finish({"ohlcv": bars}, rows_read=2, source="f", who="t")
    assert res.tables["ohlcv"]["timestamp"].tolist() == [_utc(2024, 1, 1)]
    assert res.quarantine["rule"].iloc[0].startswith("ohlcv (v, X/USDT, 1h, 2024-01-01 01:00")
    assert "high must be >= open and close" in res.quarantine["rule"].iloc[0]


def test_resolve_as_of_explicit_mtime_and_missing(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    os.utime(p, (1_700_000_000, 1_700_000_000))
    assert resolve_as_of("2024-08-22", p, who="w") == _utc(2024, 8, 22)
    assert resolve_as_of(None, p, who="w") == pd.Timestamp(
        dt.datetime.fromtimestamp(1_700_000_000, tz=UTC)
    )
    with pytest.raises(FairmarginInputError, match="as_of must be given for an in-memory"):
        resolve_as_of(None, None, who="w")


def test_load_json_truncated_names_file_line_and_column(tmp_path):
    p = tmp_path / "cut.json"
    p.write_text('{"markets": {"BTC-USD": {"ticker": "BTC-USD",\n "initialMarginFraction": "0.0')
    with pytest.raises(FairmarginInputError, match=r"cut\.json must be valid JSON, .* line 2"):
        load_json(p, who="w")


def test_import_result_is_frozen():
    res = ImportResult(tables={}, rows_read=0, quarantine=pd.DataFrame())
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.rows_read = 1  # type: ignore[misc]
    assert issubclass(FairmarginInputError, FairmarginError)
