"""The registered pyfunc served by ``mlflow models serve``: real POST /invocations answers, and a
4xx with a message (never a 500) for bad input; in process, its answers are the flags rows and
:func:`pipelines.flag.judge`'s, whether a market state is cached or not."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cloudpickle
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from models.horizon import liquidation_horizon_minutes
from pipelines.cli import main
from pipelines.flag import flag_tiers, judge, labelled_panel, train_model
from pipelines.serving import OUTPUT_COLUMNS, FairMarginPyfunc

URI = "models:/fair-margin@champion"
_MAX_WAIT_S = 90.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, payload: dict, timeout: float = 10.0) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def registry(small_bundle, fast_toml, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["train", str(fast_toml), str(small_bundle), "--out", str(root / "t")]) == 0
        mlflow.set_tracking_uri(uri)
        local = Path(mlflow.artifacts.download_artifacts(URI))
        example = mlflow.models.Model.load(str(local)).load_input_example(str(local))
        model = mlflow.pyfunc.load_model(URI)
        yield uri, pd.DataFrame(example), model


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    uri = registry[0]
    port = _free_port()
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = uri
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    mlflow_bin = shutil.which("mlflow", path=env["PATH"])
    assert mlflow_bin, "mlflow is not on the venv's PATH"
    log = (tmp_path_factory.mktemp("serve-log") / "server.log").open("w")
    proc = subprocess.Popen(
        [mlflow_bin, "models", "serve", "-m", URI, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + _MAX_WAIT_S
        while True:
            assert proc.poll() is None, f"the server exited ({proc.returncode}); see {log.name}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"no answer within {_MAX_WAIT_S} s"
            time.sleep(0.5)
        yield port
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=15)
        log.close()


def _split(frame: pd.DataFrame) -> dict:
    return {
        "dataframe_split": json.loads(
            frame.to_json(orient="split", index=False, double_precision=15)
        )
    }


def test_the_served_model_answers_like_the_loaded_one(server, registry):
    _, example, model = registry
    status, body = _post(server, _split(example))
    assert status == 200
    got = pd.DataFrame(body["predictions"])
    assert list(got.columns) == OUTPUT_COLUMNS
    want = model.predict(example)
    np.testing.assert_allclose(
        got["fair_initial_margin_rate"].to_numpy(float),
        want["fair_initial_margin_rate"].to_numpy(float),
        rtol=1e-9,
    )
    assert (got["status"] == want["status"]).all()
    assert (got["drivers"] == want["drivers"]).all()
    assert got["drivers"].str.contains(" adds ").all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"notional": -1.0}, "notional must be a positive number, got -1.0"),
        ({"liquidation_cost_long": -0.5}, "liquidation_cost_long must be a fraction >= 0"),
        ({"notional": "lots"}, ""),  # the schema rejects it before predict
        (None, ""),  # a required column left out
    ],
)
def test_bad_input_is_a_4xx_with_a_message(server, registry, change, message):
    example = registry[1].head(1).copy()
    if change is None:
        example = example.drop(columns=["notional"])
    else:
        for k, v in change.items():
            example[k] = example[k].astype(object)
            example.loc[:, k] = v
    status, body = _post(server, _split(example))
    assert 400 <= status < 500
    assert body.get("message")
    assert message in body["message"]
    assert "Traceback" not in body["message"]


def test_predict_raises_invalid_parameter_value_in_process(registry):
    example = registry[1].head(1).assign(notional=0.0)
    with pytest.raises(MlflowException, match=r"notional must be a positive number") as err:
        registry[2].predict(example)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"


def test_the_inputs_format_answers_like_dataframe_split(server, registry):
    payload = _split(registry[1])
    part = payload["dataframe_split"]
    columnar = {c: [row[j] for row in part["data"]] for j, c in enumerate(part["columns"])}
    split = _post(server, payload)
    inputs = _post(server, {"inputs": columnar})
    assert split[0] == inputs[0] == 200
    assert split[1] == inputs[1]


# ---------------------------------------------------------------------- in process
@pytest.fixture(scope="module")
def flagged(small_tables, fast_cfg):
    labelled = labelled_panel(small_tables, fast_cfg)
    model = train_model(labelled, fast_cfg, cutoff=pd.Timestamp(labelled["t"].max()))
    result = flag_tiers(small_tables, fast_cfg, model=model, labelled=labelled)
    assert result.inputs is not None
    assert len(result.inputs) > 5
    return model, result


def _equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    for c in OUTPUT_COLUMNS:
        a, b = got[c].reset_index(drop=True), want[c].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            np.testing.assert_array_equal(a.to_numpy(float), b.to_numpy(float), err_msg=c)
        else:
            assert (a.astype(str) == b.astype(str)).all(), c


def test_answers_equal_the_flags_rows_cold_and_cached(flagged, fast_cfg):
    model, result = flagged
    pyfunc = FairMarginPyfunc(model, fast_cfg)
    want = result.flags.loc[result.inputs.index]
    assert want["drivers"].str.contains(" adds ").all()
    cold = pyfunc.predict(None, result.inputs)
    _equal(cold, want)
    assert len(pyfunc._states) == len(result.inputs.drop_duplicates(pyfunc.state_columns))
    _equal(pyfunc.predict(None, result.inputs), want)  # every state cached now


def test_positions_on_shared_states_equal_judge(flagged, fast_cfg):
    """Many positions on a few states (the cache's case) against judge row by row."""
    model, result = flagged
    rng = np.random.default_rng(5)
    pyfunc = FairMarginPyfunc(model, fast_cfg)
    states = result.inputs.drop_duplicates(pyfunc.state_columns).head(4)
    assert len(states) == 4
    rows = states.iloc[rng.integers(4, size=40)].reset_index(drop=True)
    rows["notional"] = 10 ** rng.uniform(3, 9, size=len(rows))
    rows.loc[::3, "published_initial_margin_rate"] = np.nan
    horizon = liquidation_horizon_minutes(
        rows["notional"].to_numpy(float),
        rows["traded_notional_per_minute"].to_numpy(float),
        base_latency_minutes=fast_cfg.base_latency_minutes,
        participation=fast_cfg.participation,
        minutes_to_expiry=rows["minutes_to_expiry"].to_numpy(float),
    )
    cost_long = rows["liquidation_cost_long"].to_numpy(float)
    cost_short = rows["liquidation_cost_short"].to_numpy(float)
    published = rows["published_initial_margin_rate"].to_numpy(float)
    want = judge(model, rows, horizon, cost_long, cost_short, published)
    for _ in ("cold", "cached"):
        got = pyfunc.predict(None, rows)
        assert len(pyfunc._states) == 4
        np.testing.assert_array_equal(got["horizon_minutes"], horizon)
        for c in ("fair_long_rate", "fair_short_rate", "fair_lower", "fair_upper",
                  "implied_horizon_minutes"):  # fmt: skip
            np.testing.assert_array_equal(got[c].to_numpy(float), want[c], err_msg=c)
        for c in ("binding_side", "implied_horizon_censored", "drivers"):
            assert (got[c].to_numpy() == want[c].astype(str)).all(), c
        assert len(set(got["drivers"])) > 4  # texts differ by horizon and side, not only state
        assert (got["status"][np.isnan(published)] == "").all()


def test_the_state_cache_is_bounded_and_never_pickled(flagged, fast_cfg):
    model, result = flagged
    rows = result.inputs.drop_duplicates(FairMarginPyfunc(model, fast_cfg).state_columns).head(6)
    assert len(rows) == 6
    uncached = FairMarginPyfunc(model, fast_cfg)
    uncached.max_states = 0
    small = FairMarginPyfunc(model, fast_cfg)
    small.max_states = 2
    want = uncached.predict(None, rows)
    assert len(uncached._states) == 0
    _equal(small.predict(None, rows), want)
    assert len(small._states) == 2
    _equal(small.predict(None, rows.iloc[::-1]), want.iloc[::-1])
    copy = cloudpickle.loads(cloudpickle.dumps(small))  # as mlflow.pyfunc.log_model saves it
    assert not {"_states", "_lock"} & set(vars(copy))
    _equal(copy.predict(None, rows), want)


def test_a_value_that_is_not_a_number_is_named(registry):
    example = registry[1].head(2).astype({"notional": object})
    example.loc[1, "notional"] = "lots"
    with pytest.raises(MlflowException, match=r"notional must be a number, got 'lots'$"):
        registry[2].unwrap_python_model().predict(None, example)
