"""Check that a flag run's report.html renders: open it in Debian's headless Chromium and save a
screenshot (not part of the tests).

Usage: python benchmarks/render_report.py REPORT.html [--out SHOT.png] [--width 1400]
       [--height 6000]

Chromium comes from Debian (``apt-get install -y chromium``); the script installs it when it is
missing and it runs as root, else it asks you to. It prints the screenshot path and its size and
fails if Chromium does not write a non-blank PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    for name in _NAMES:
        if path := shutil.which(name):
            return path
    if os.geteuid() != 0:
        raise SystemExit("Chromium is missing: run `sudo apt-get install -y chromium`")
    print("installing chromium (apt-get install -y chromium) ...", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    for name in _NAMES:
        if path := shutil.which(name):
            return path
    raise SystemExit("apt-get installed chromium but no chromium binary is on PATH")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--out", type=Path, help="screenshot PNG (default: beside the report)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=6000)
    args = ap.parse_args()
    report = args.report.resolve()
    if not report.is_file():
        raise SystemExit(f"render_report: {report} must be a file")
    out = (args.out or report.with_name("report_screenshot.png")).resolve()
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="fairmargin-chromium-") as profile:
        cmd = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--window-size={args.width},{args.height}",
            f"--screenshot={out}", report.as_uri(),
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    data = out.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 10_000:
        raise SystemExit(f"render_report: {out} is not a rendered page ({len(data)} bytes)")
    print(f"screenshot {out} ({len(data):,} bytes)")


if __name__ == "__main__":
    main()
