"""int8 static quantisation of a debug-size export: files, report fields, predictor loading, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

REPORT_FIELDS = {
    "fp32_encoder", "fp32_decoder", "int8_encoder", "int8_decoder", "calib_images", "eval_images", "size_bytes",
    "embedding_cosine_mean", "embedding_cosine_min", "mask_iou_point_mean", "mask_iou_point_min",
    "mask_iou_box_mean", "mask_iou_box_min", "mask_iou_int8_encoder_only_mean", "latency_ms", "latency_runs",
    "threads", "notes", "parity", "gelu",
}


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    from PIL import Image

    from edgesam_core.export.parity import synthetic_image

    folder = tmp_path_factory.mktemp("calib")
    for i in range(5):
        Image.fromarray(synthetic_image(90 + 10 * i, 120 - 5 * i, seed=i)).save(folder / f"im{i}.png")
    return folder


def test_quantize_pair_report_and_loadable(dyt_debug_export, calib_dir, tmp_path):
    from edgesam_core.export.quantize import QuantizeOptions, quantize_pair
    from edgesam_core.inference import load_predictor

    _, result = dyt_debug_export
    report = quantize_pair(result.files["encoder"], QuantizeOptions(calib_dir=calib_dir, out_dir=tmp_path,
                                                                    latency_runs=3, warmup_runs=1))
    data = report.to_dict()
    assert set(data) == REPORT_FIELDS
    assert data["calib_images"] == 4 and data["eval_images"] == 1  # a quarter of 5 held out
    assert set(data["latency_ms"]) == {"encoder_fp32", "encoder_int8", "decoder_fp32", "decoder_int8"}
    assert all(v > 0 and math.isfinite(v) for v in data["latency_ms"].values())
    assert 0.9 < data["embedding_cosine_mean"] <= 1.0 + 1e-9
    # Measured on this debug model: point 0.985 (min 0.980), box 0.973 (min 0.967), int8 encoder alone 1.0
    # (with --exact-gelu: 0.986 / 0.985, 0.981 / 0.972).
    # int8 that broke a layer drops these far below; the bounds leave room for calibration noise only.
    assert data["mask_iou_point_mean"] >= 0.9 and data["mask_iou_point_min"] >= 0.85
    assert data["mask_iou_box_mean"] >= 0.9 and data["mask_iou_box_min"] >= 0.85
    assert data["mask_iou_int8_encoder_only_mean"] >= 0.95
    assert data["mask_iou_point_min"] <= data["mask_iou_point_mean"] <= 1.0
    # The same noise-floor rule as every backend, at int8's rounding: reported, not gated.
    parity = data["parity"]
    assert parity["gated"] is False and "float64" in parity["reference"]
    entries = parity["entries"]
    assert {e["graph"] for e in entries} == {"encoder", "decoder"}
    # Measured on this debug model: 0.11 (encoder) to 0.57 (box scores) of the int8 limit; fp32's floor (2^15
    # times smaller) would not explain int8's distance anywhere.
    assert all(e["excess"] <= 1.0 for e in entries), entries
    assert all(e["max_abs"] > 3 * e["floor_max"] / 2**15 + 1e-5 * max(1, e["ref_abs_max"]) for e in entries)
    import onnx

    from edgesam_core.export.sidecar import sidecar_path

    for key in ("int8_encoder", "int8_decoder"):
        meta = json.loads(sidecar_path(data[key]).read_text())
        assert meta["quantization"]["format"] == "QDQ" and meta["model_type"] == "edge_sam_dyt_debug"
    assert "MatMuls fp32" in json.loads(sidecar_path(data["int8_decoder"]).read_text())["quantization"]["ops"]
    int8_model = onnx.load(data["int8_encoder"])
    ops = {n.op_type for n in int8_model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    # Squeeze-excite means as pools (ONNX Runtime runs those on uint8), the expanded gates broadcast again.
    assert "GlobalAveragePool" in ops and "ReduceMean" not in ops and "Resize" not in ops
    # GELUs as x * sigmoid(1.702 x), the 1.702 folded into the sigmoid's dequantisation (a uint8 table op).
    fp32_gelus = sum(n.op_type == "Gelu" for n in onnx.load(str(result.files["encoder"])).graph.node)
    assert fp32_gelus > 0 and "Gelu" not in ops and data["gelu"].startswith("x*sigmoid(1.702x)")
    producers = {out: n for n in int8_model.graph.node for out in n.output}
    sigmoids = [n for n in int8_model.graph.node if n.op_type == "Sigmoid"]
    assert len(sigmoids) >= fp32_gelus and all(producers[n.input[0]].op_type == "DequantizeLinear" for n in sigmoids)
    assert json.loads(sidecar_path(data["int8_encoder"]).read_text())["quantization"]["gelu"] == data["gelu"]
    pred = load_predictor(data["int8_encoder"])
    from edgesam_core.export.parity import synthetic_image

    pred.set_image(synthetic_image(100, 130))
    masks, scores, low_res = pred.predict(box=np.array([10, 10, 90, 80]))
    assert masks.shape == (3, 100, 130) and scores.shape == (3,) and np.isfinite(low_res).all()


def test_quantize_cli_writes_report(dyt_debug_export, calib_dir, tmp_path):
    from typer.testing import CliRunner

    from edgesam_cli.main import app

    _, result = dyt_debug_export
    out = tmp_path / "q"
    res = CliRunner().invoke(app, ["quantize", str(result.files["encoder"]), "--calib", str(calib_dir),
                                   "--out", str(out), "--runs", "2", "--exact-gelu", "--json"])
    assert res.exit_code == 0, res.output
    stem = result.files["encoder"].name[: -len("_encoder.onnx")]
    report = json.loads((out / f"{stem}_int8_report.json").read_text())
    assert set(report) == REPORT_FIELDS
    assert (out / f"{stem}_int8_encoder.onnx").is_file() and (out / f"{stem}_int8_decoder.onnx").is_file()
    assert json.loads(res.stdout)["int8_decoder"] == report["int8_decoder"]
    # --exact-gelu keeps the fp32 GELUs (between a dequantisation and a quantisation).
    import onnx

    assert report["gelu"].startswith("exact")
    assert "Gelu" in {n.op_type for n in onnx.load(str(out / f"{stem}_int8_encoder.onnx")).graph.node}


def test_quantize_needs_held_out_images(dyt_debug_export, tmp_path):
    from PIL import Image

    from edgesam_core.errors import InputError
    from edgesam_core.export.quantize import QuantizeOptions, quantize_pair

    one = tmp_path / "one"
    one.mkdir()
    Image.new("RGB", (40, 30)).save(one / "a.png")
    _, result = dyt_debug_export
    with pytest.raises(InputError, match="--eval"):
        quantize_pair(result.files["encoder"], QuantizeOptions(calib_dir=one, out_dir=tmp_path))


def test_expanded_gates_are_broadcast_again_before_quantising():
    """The fp32 export's ``x * Resize(sigmoid(g))`` becomes ``x * sigmoid(g)``: same output, no Resize left."""
    import onnx
    import onnxruntime as ort
    import torch

    from edgesam_core.export.quantize import broadcast_expanded_gates
    from edgesam_core.models.image_encoder_repvit import SqueezeExcite
    from edgesam_core.models.inference_form import ExpandedGateSqueezeExcite

    torch.manual_seed(0)
    module = ExpandedGateSqueezeExcite(SqueezeExcite(16)).eval()
    x = torch.randn(1, 16, 12, 10)
    buffer = __import__("io").BytesIO()
    torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=20, input_names=["x"])
    model = onnx.load_from_string(buffer.getvalue())
    assert "Resize" in {n.op_type for n in model.graph.node}
    assert broadcast_expanded_gates(model) == 1
    assert "Resize" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-6, atol=1e-6)


def test_spatial_means_become_pools_and_nothing_else():
    """``ReduceMean`` over H and W (kept dims) becomes ``GlobalAveragePool`` with the same output; means over
    other axes, without kept dims, or of another rank stay as they are."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgesam_core.export.quantize import spatial_means_as_pools

    axes = {"hw": [2, 3], "neg": [-1, -2], "c": [1], "h": [2]}
    inits = [helper.make_tensor(f"axes_{k}", TensorProto.INT64, [len(v)], v) for k, v in axes.items()]
    nodes = [helper.make_node("ReduceMean", ["x", f"axes_{k}"], [f"y_{k}"]) for k in axes]
    nodes.append(helper.make_node("ReduceMean", ["x", "axes_hw"], ["y_flat"], keepdims=0))
    nodes.append(helper.make_node("ReduceMean", ["v", "axes_c"], ["y_rank3"]))
    outputs = [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, None) for n in nodes]
    graph = helper.make_graph(nodes, "means", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 7]),
                                               helper.make_tensor_value_info("v", TensorProto.FLOAT, [2, 6, 5])],
                              outputs, inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))
    feed = {"x": np.random.default_rng(0).normal(size=(1, 6, 5, 7)).astype(np.float32),
            "v": np.random.default_rng(1).normal(size=(2, 6, 5)).astype(np.float32)}

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)

    before = run(model)
    assert spatial_means_as_pools(model) == 2
    onnx.checker.check_model(model)
    kinds = {n.output[0]: n.op_type for n in model.graph.node}
    assert kinds == {"y_hw": "GlobalAveragePool", "y_neg": "GlobalAveragePool", "y_c": "ReduceMean",
                     "y_h": "ReduceMean", "y_flat": "ReduceMean", "y_rank3": "ReduceMean"}
    for a, b in zip(before, run(model)):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
