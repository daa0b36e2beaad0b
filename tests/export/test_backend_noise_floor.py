"""TFLite, TensorRT and int8 are judged by export-onnx's rule: distance from the float64 model within the
noise floor, here bounded through ONNX Runtime and the export's own float64 record.

The backends themselves need tensorflow or a GPU; the rule does not, so these tests feed
``compare_with_onnxruntime`` ONNX Runtime sessions standing in for another runtime: the right graph, a graph
of a slightly different model, and outputs rounded to fp16.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tests.export.conftest import make_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.models.layers.dyt import DynamicTanh

    model = make_model("edge_sam_dyt_debug")
    root = tmp_path_factory.mktemp("floor")
    good = export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=root / "good", name="m"),
                       model=model).files
    broken = copy.deepcopy(model)
    with torch.no_grad():
        [m for m in broken.mask_decoder.modules() if isinstance(m, DynamicTanh)][0].alpha.mul_(1.01)
    # A faithful export of the changed model: against the original, it is what a faulty converter would make.
    bad = export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=root / "bad", name="m"),
                      model=broken).files
    return good, bad


def _sessions(files):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # other kernels, other rounding
    return {role: ort.InferenceSession(str(files[role]), options, providers=["CPUExecutionProvider"])
            for role in ("encoder", "decoder")}


class _RoundedTo:
    """A runner whose outputs are another runner's, rounded to ``dtype`` (what fp16 storage does)."""

    def __init__(self, runner, dtype):
        self.runner, self.dtype = runner, dtype

    def run(self, names, feed):
        return [o.astype(self.dtype).astype(np.float32) for o in self.runner.run(names, feed)]


def test_pair_carries_the_exports_float64_record(exported):
    from edgesam_core.export.runtime_pair import default_tolerance, resolve_onnx_pair

    pair = resolve_onnx_pair(exported[0]["encoder"])
    record = pair.metadata["float64_parity"]
    assert {"encoder/synthetic/image_embeddings", "decoder/points/masks", "decoder/box/scores"} <= set(record)
    assert all(r["floor_max"] > 0 and r["max_abs"] > 0 for r in record.values())
    assert not any("fold" in key for key in record)  # float64-vs-float64 checks carry no floor
    assert default_tolerance(pair, 5e-3) == 1e-5 and default_tolerance(pair, None) is None


def test_a_correct_runtime_passes_with_floors_from_the_record(exported):
    from edgesam_core.export.runtime_pair import compare_with_onnxruntime, resolve_onnx_pair

    pair = resolve_onnx_pair(exported[0]["encoder"])
    report = compare_with_onnxruntime(pair, _sessions(exported[0]), tolerance=1e-5)
    assert report.passed, report.describe(report.worst)
    assert "float64" in report.reference
    record = pair.metadata["float64_parity"]
    for entry in report.entries:
        known = record[f"{entry.graph}/{entry.case}/{entry.output}"]
        # Bounded from float64: at least ONNX Runtime's own recorded distance; floors are the export's.
        assert entry.max_abs >= known["max_abs"] and entry.floor_max == known["floor_max"]


def test_a_runtime_computing_another_function_fails_the_same_rule(exported):
    from edgesam_core.export.runtime_pair import compare_with_onnxruntime, resolve_onnx_pair

    pair = resolve_onnx_pair(exported[0]["encoder"])
    report = compare_with_onnxruntime(pair, {"decoder": _sessions(exported[1])["decoder"]}, tolerance=1e-5)
    assert not report.passed
    assert report.worst.graph == "decoder" and report.excess(report.worst) > 3


def test_the_floor_scales_with_the_precision_judged(exported):
    """Outputs rounded to fp16 are far outside fp32's floor but inside fp16's (x 2^13)."""
    from edgesam_core.export.runtime_pair import compare_with_onnxruntime, resolve_onnx_pair

    pair = resolve_onnx_pair(exported[0]["encoder"])
    runners = {role: _RoundedTo(s, np.float16) for role, s in _sessions(exported[0]).items()}
    as_fp32 = compare_with_onnxruntime(pair, runners, tolerance=1e-5, precision="fp32")
    as_fp16 = compare_with_onnxruntime(pair, runners, tolerance=1e-5, precision="fp16")
    assert not as_fp32.passed
    assert as_fp16.passed, as_fp16.describe(as_fp16.worst)
    scale = as_fp16.entries[0].floor_max / as_fp32.entries[0].floor_max
    assert scale == pytest.approx(2.0 ** 13)


def test_a_pair_without_a_record_falls_back_to_the_fixed_tolerance(exported, tmp_path):
    import shutil

    from edgesam_core.export.runtime_pair import compare_with_onnxruntime, default_tolerance, resolve_onnx_pair

    for role in ("encoder", "decoder"):
        shutil.copy(exported[0][role], tmp_path / f"foreign_{role}.onnx")  # no sidecars beside them
    pair = resolve_onnx_pair(tmp_path / "foreign_encoder.onnx")
    assert pair.metadata["float64_parity"] == {} and default_tolerance(pair, 5e-3) == 5e-3
    report = compare_with_onnxruntime(pair, _sessions(exported[0]), tolerance=5e-3)
    assert report.passed and "no float64 record" in report.reference
    assert all(e.floor_max == 0 for e in report.entries)
