"""The Python API: same answer as the flags, fast paths that agree, clear errors."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.api import QUERY_COLUMNS, FairMargin
from pipelines.explain import Contributions, describe
from pipelines.flag import FLAG_COLUMNS, flag_tiers, labelled_panel, train_model


@pytest.fixture(scope="module")
def fitted(small_tables, fast_cfg):
    labelled = labelled_panel(small_tables, fast_cfg)
    model = train_model(labelled, fast_cfg, cutoff=pd.Timestamp(labelled["t"].max()))
    flags = flag_tiers(small_tables, fast_cfg, model=model, labelled=labelled).flags
    return model, flags


@pytest.fixture(scope="module")
def fm(fitted, small_tables, fast_cfg):
    return FairMargin(fitted[0], fast_cfg, small_tables, model_version="m")


def _same(a: pd.Series, b: pd.Series) -> bool:
    if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
        return bool(np.array_equal(a.to_numpy(float), b.to_numpy(float), equal_nan=True))
    return bool((a.astype(str).to_numpy() == b.astype(str).to_numpy()).all())


def test_batch_at_evaluated_notionals_equals_the_flags_rows(fm, fitted):
    flags = fitted[1]
    positions = flags[["venue", "symbol", "evaluated_notional", "as_of"]].rename(
        columns={"evaluated_notional": "notional"}
    )
    got = fm.estimate_many(positions)
    assert list(got.columns) == QUERY_COLUMNS
    assert (got["side"] == "both").all()
    for c in FLAG_COLUMNS:
        if c == "model_version":
            continue
        assert _same(got[c], flags[c]), c
    flagged = got[got["status"].isin(["under_margined", "over_margined"])]
    assert len(flagged) > 0
    assert flagged["drivers"].str.contains(" adds [+-]", regex=True).all()


def test_single_query_equals_the_batch_and_one_side_is_that_sides(fm, fitted):
    row = fitted[1].dropna(subset=["fair_initial_margin_rate"]).iloc[0]
    kw = {"venue": row["venue"], "symbol": row["symbol"], "as_of": row["as_of"]}
    one = fm.estimate(notional=row["evaluated_notional"], **kw)
    assert one["tier"] == row["tier"]
    assert one["fair_initial_margin_rate"] == row["fair_initial_margin_rate"]
    assert one["drivers"] == row["drivers"]
    for side in ("long", "short"):
        a = fm.estimate(notional=row["evaluated_notional"], side=side, **kw)
        assert a["fair_initial_margin_rate"] == row[f"fair_{side}_rate"]
        assert a["binding_side"] == side
        assert a["fair_lower"] <= a["fair_initial_margin_rate"] <= a["fair_upper"]
    # default time: the bundle's last bar close
    assert fm.estimate(venue=row["venue"], symbol=row["symbol"], notional=1e6)["as_of"] == (
        fm.last_close
    )


def test_fair_does_not_fall_with_notional(fm, fitted):
    row = fitted[1].dropna(subset=["fair_initial_margin_rate"]).iloc[0]
    notionals = np.geomspace(1e3, 1e9, 25)
    got = fm.estimate_many(
        pd.DataFrame({"venue": row["venue"], "symbol": row["symbol"], "notional": notionals})
    )
    fair = got["fair_initial_margin_rate"].to_numpy()
    assert np.isfinite(fair).all()
    # H grows with N, Q is monotone in H (running max) and the book walk costs more: tolerate
    # rounding only
    assert (np.diff(fair) >= -1e-12).all()
    assert (got["horizon_minutes"].diff().dropna() > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"venue": "nowhere"}, r"venue must be one of the bundle's .*got 'nowhere'"),
        ({"symbol": "DOGE/USDT:USDT"}, r"symbol must be a swap or future of .*'DOGE/USDT:USDT'"),
        ({"notional": -5.0}, r"notional must be a positive number, got -5.0"),
        ({"notional": float("nan")}, r"notional must be a positive number, got nan"),
        ({"side": "up"}, r"side must be long, short or both, got 'up'"),
        ({"as_of": "2001-01-01"}, r"as_of must be at or after the first bar close of"),
    ],
)
def test_bad_queries_raise_one_clear_error(fm, fitted, kwargs, match):
    row = fitted[1].iloc[0]
    q = {"venue": row["venue"], "symbol": row["symbol"], "notional": 1e6, **kwargs}
    with pytest.raises(FairmarginInputError, match=match):
        fm.estimate(**q)


def test_a_coverage_other_than_the_models_is_an_error(fitted, small_tables, fast_cfg):
    with pytest.raises(FairmarginInputError, match=r"trained at coverage 0.99, asked for 0.95"):
        FairMargin(fitted[0], replace(fast_cfg, coverage=0.95), small_tables)


def test_batch_rejects_bad_rows_by_number(fm):
    bad = pd.DataFrame(
        {"venue": ["okx", "okx"], "symbol": ["BTC/USDT:USDT"] * 2, "notional": [1e6, 0.0]}
    )
    with pytest.raises(FairmarginInputError, match=r"positions row 1: notional must be"):
        fm.estimate_many(bad)
    with pytest.raises(FairmarginInputError, match=r"columns \['notional'\] are missing"):
        fm.estimate_many(bad.drop(columns="notional"))


def test_drivers_read_in_plain_words():
    label, fmt = describe("atm_iv_30d")
    assert (label, fmt(0.85)) == ("30-day ATM IV", "85 %")
    assert describe("depth_bid_25bp")[0] == "bid depth within 25 bp"
    assert describe("something_new")[0] == "something_new"
    # a hand-made table: two inputs at one grid horizon; the larger |pp| comes first
    c = Contributions(
        names=["atm_iv_30d", "log_h"],
        pp={"long": np.array([[[1.9, -0.25]]]), "short": np.zeros((1, 1, 2))},
        values=np.array([[0.85, np.nan]]),
        horizons=np.array([60.0]),
        medians=np.array([0.52, np.nan]),
    )
    assert c.text(0, 0, "long") == (
        "30-day ATM IV 85 % vs 52 % median adds +1.90 pp; liquidation horizon 60 min adds -0.25 pp"
    )
