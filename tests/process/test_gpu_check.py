"""bench.gpu_check runs its whole protocol on CPU (here: no GPU), and refuses CUDA clearly
where onnxruntime has no CUDA provider."""

from __future__ import annotations

import json
import subprocess
import sys

import onnxruntime as ort
import pytest

pytestmark = pytest.mark.process


def test_gpu_check_runs_on_cpu_and_reports_spreads(bundle_dir, tmp_path):
    out = tmp_path / "gpu.json"
    argv = ["--bundle", str(bundle_dir), "--devices", "cpu", "--rounds", "1", "--seconds",
            "1", "--encoder-seconds", "0.2", "--clients", "4", "--out", str(out)]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", *argv], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert [(r["candidates"], r["batching"]) for r in report["rank"]] == [
        (100, "on"), (100, "off"), (1000, "on"), (1000, "off"),
    ]  # fmt: skip
    for row in report["rank"]:
        assert row["cpu"]["errors"] == 0
        rps = row["cpu"]["rps"]
        assert 0 < rps["min"] <= rps["median"] <= rps["max"]
    assert [r["batch"] for r in report["encoder"]] == [1, 32]
    assert all(r["cpu_ms"]["median"] > 0 for r in report["encoder"])


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available"
)
def test_gpu_check_without_cuda_says_how_to_get_it(bundle_dir):
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--bundle", str(bundle_dir)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "bench/gpu_check.sh" in done.stderr
