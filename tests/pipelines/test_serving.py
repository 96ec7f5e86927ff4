"""The registered pyfunc served by ``mlflow models serve``: real POST /invocations answers, and a
4xx with a message (never a 500) for bad input."""

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

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from pipelines.cli import main
from pipelines.serving import OUTPUT_COLUMNS

FAST_TOML = """
name = "fast-test"
[data]
horizons_minutes = [15, 60, 240, 1440]
sample_every_minutes = 60
min_history_days = 7.0
[model]
n_estimators = 40
min_child_samples = 100
"""
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
def registry(small_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    toml = root / "fast.toml"
    toml.write_text(FAST_TOML)
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        assert main(["train", str(toml), str(small_bundle), "--out", str(root / "t")]) == 0
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
