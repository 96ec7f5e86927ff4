"""The [apc] section: off by default, parsed and checked, and each switch reaches the flags."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from features._checks import FairmarginInputError
from pipelines.config import ApcConfig, load_experiment, load_experiment_dict
from pipelines.flag import flag_tiers, labelled_panel, train_model


def test_apc_is_off_by_default_and_parsed(tmp_path):
    assert not ApcConfig().enabled
    p = tmp_path / "x.toml"
    p.write_text('name = "x"\n[apc]\nbuffer = 0.25\nfloor_years = 10\n')
    cfg = load_experiment(p)
    assert cfg.apc == ApcConfig(buffer=0.25, stressed_weight=0.0, floor_years=10)
    assert cfg.apc.enabled
    assert load_experiment_dict({"apc": {"stressed_weight": 0.25}}).apc.stressed_weight == 0.25


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"buffer": -0.1}, r"apc.buffer must be >= 0, got -0.1"),
        ({"stressed_weight": 1.5}, r"apc.stressed_weight must be in \[0, 1\], got 1.5"),
        ({"floor_years": -2.0}, r"apc.floor_years must be >= 0, got -2.0"),
        ({"bufer": 0.25}, r"\[apc\]: unknown keys \['bufer'\]"),
    ],
)
def test_bad_apc_values_are_errors(raw, message):
    with pytest.raises(FairmarginInputError, match=message):
        load_experiment_dict({"apc": raw})


def test_each_switch_scales_the_flags(small_tables, fast_cfg):
    tables = {k: v for k, v in small_tables.items() if k != "truth"}
    labelled = labelled_panel(tables, fast_cfg)
    as_of = pd.Timestamp(tables["margin_tiers"]["as_of"].max())
    model = train_model(labelled, fast_cfg, cutoff=as_of)

    def flags(apc):
        cfg = replace(fast_cfg, apc=apc)
        return flag_tiers(tables, cfg, model=model, labelled=labelled, as_of="latest").flags

    off = flags(ApcConfig())
    ok = np.isfinite(off["fair_initial_margin_rate"]).to_numpy()
    assert ok.sum() > 10
    cols = ["fair_initial_margin_rate", "fair_long_rate", "fair_lower", "fair_upper"]
    buf = flags(ApcConfig(buffer=0.25))
    np.testing.assert_allclose(buf.loc[ok, cols], 1.25 * off.loc[ok, cols], rtol=1e-12)
    # the published rate is judged against the buffered fair
    dev = buf["published_initial_margin_rate"] / buf["fair_initial_margin_rate"] - 1
    np.testing.assert_allclose(buf.loc[ok, "deviation"], dev[ok], rtol=1e-12)
    # stressed weight and floor never lower fair, and raise it where volatility was higher
    for apc in (ApcConfig(stressed_weight=0.25), ApcConfig(floor_years=10.0)):
        on = flags(apc)
        ratio = (on["fair_initial_margin_rate"] / off["fair_initial_margin_rate"])[ok]
        assert (ratio >= 1 - 1e-12).all()
        assert (ratio > 1 + 1e-6).any()
        # one factor per contract: long, short and the interval move together
        r_long = (on["fair_long_rate"] / off["fair_long_rate"])[ok]
        np.testing.assert_allclose(ratio, r_long, rtol=1e-12)
