"""The int8 benchmark runs end to end on the debug model: three encoders timed, the rewrite visible in the
profiles (GELUs on uint8 tables, or in float32 with --exact-gelu), fidelity reported for both int8 recipes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_int8.py"


def test_bench_int8_times_both_recipes_and_profiles_them(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(SCRIPT), "--model", "edge_sam_dyt_debug", "--rounds", "2", "--threads", "1",
                    "--prompts", "1", "--out", str(out)], check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    assert set(result["median_ms"]) == {"fp32", "int8", "int8_previous"}
    assert all(len(v) == 2 for v in result["all_ms"].values())
    assert result["ratios"]["int8/fp32"] == round(result["median_ms"]["int8"] / result["median_ms"]["fp32"], 3)
    # Today's recipe runs the GELUs as uint8 tables and products; the previous one in float32.
    today, previous = result["profile_ms_by_op"]["int8"], result["profile_ms_by_op"]["int8_previous"]
    assert "QLinearSigmoid" in today and "Gelu" not in today and "Gelu" in previous
    assert "QLinearGlobalAveragePool" in today and "ReduceMean" not in today
    for recipe in ("int8", "int8_previous"):
        fidelity = result["int8_fidelity_vs_fp32_pytorch"][recipe]
        assert fidelity["images"] == 3 and 0.9 < fidelity["embedding_cosine"]["mean"] <= 1.0 + 1e-9
