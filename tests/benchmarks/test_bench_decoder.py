"""The decoder / everything-mode benchmark runs end to end on the debug model and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_decoder.py"


def test_bench_decoder_reports_clicks_ratios_and_everything_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(SCRIPT), "--model", "edge_sam_dyt_debug", "--rounds", "2", "--threads", "1",
                    "--out", str(out)], check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(out.read_text())
    assert "before the inference form" in result["settings"]["reference"]  # no --reference: the previous graphs
    # Both decoders get the same click: their masks agree (the staged graph computes the same function).
    assert result["ref_vs_ours_click_max_abs_diff"] < 1e-3
    for name in ("ref_encoder", "ref_decoder_click", "our_prompt_stage_click", "onnx_predict", "torch_predict",
                 "torch_low_res_click"):
        assert len(result["all_ms"][name]) == 2 and result["median_ms"][name] > 0
    assert set(result["everything"]) == {"onnx_32x32", "torch_32x32", "onnx_fast", "torch_fast", "onnx_boxes",
                                         "torch_boxes"}
    for entry in result["everything"].values():
        assert entry["median_s"] > 0 and entry["reference_encoder_times"] > 0
        # Where the time went: one image encoding, decoder calls, and the parts add up to the run's time.
        (profile,) = entry["profile_s"]
        assert set(profile) == {"set_image", "predict_low_res_torch", "upscale_masks", "rest"}
        assert profile["set_image"] > 0 and profile["predict_low_res_torch"] > 0 and profile["rest"] >= -1e-3
        assert sum(profile.values()) == pytest.approx(entry["seconds"][0], abs=5e-3)
        assert entry["decoder_share"] == pytest.approx(profile["predict_low_res_torch"] / entry["seconds"][0],
                                                       abs=2e-3)
    assert all(ratio > 0 for ratio in result["ratios"].values())
    assert "torch_low_res_click/prompt_stage_click" in result["ratios"]
