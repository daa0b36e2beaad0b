"""The backend benchmark script runs end to end on the debug model and writes every row it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_backends.py"
TIMED = ("encoder_ms", "decoder_ms", "peak_rss_mb")


def _run(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(SCRIPT), "--model", "edge_sam_dyt_debug", "--runs", "2", "--warmup", "1",
           "--images", "3", "--threads", "1", "--workdir", str(tmp_path / "work"), "--out", str(out), *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    return json.loads(out.read_text())


def _assert_timed(row: dict) -> None:
    for key in TIMED:
        assert isinstance(row[key], float) and row[key] > 0, (key, row)


def test_bench_backends_torch_and_onnxruntime_rows(tmp_path: Path) -> None:
    result = _run(tmp_path, "--skip-tflite")
    assert set(result["backends"]) == {"pytorch", "onnxruntime_fp32", "onnxruntime_int8"}
    for row in result["backends"].values():
        _assert_timed(row)
    assert result["environment"]["threads"] == 1 and result["environment"]["runs"] == 2
    assert 0.9 < result["int8_fidelity"]["embedding_cosine_mean"] <= 1.0 + 1e-6


@pytest.mark.tflite
def test_bench_backends_tflite_rows(tmp_path: Path) -> None:
    result = _run(tmp_path, "--require-tflite")
    assert {"tflite_fp32", "tflite_int8"} <= set(result["backends"])
    for name in ("tflite_fp32", "tflite_int8"):
        _assert_timed(result["backends"][name])
    fp32 = result["backends"]["tflite_fp32"]["parity_vs_onnxruntime"]
    assert fp32["passed"] is True and fp32["max_abs"] < 1e-4
    # int8 has no gate, but its difference must be reported and be a finite, non-zero number.
    assert 0 < result["backends"]["tflite_int8"]["parity_vs_onnxruntime"]["max_abs"] < 1.0
