"""Test-wide settings: quiet, passive OpenMP threads (STACK.md) and no telemetry."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
