"""The pure-ONNX parts of the TFLite and TensorRT paths (no tensorflow or tensorrt needed).

- ``prepare_static_graph``: the static, constant-folded decoder must compute exactly what the exported
  dynamic decoder computes for the packed prompt (points, box corners as labels 2/3, -1 padding);
- ``pack_static_prompts``: the packing itself;
- ``convert_onnx_to_fp16`` on the real debug graphs (what TensorRT 11 gets for fp16 engines).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.perturb import perturb_prompt_path

from edgesam_core.errors import InputError
from edgesam_core.export.runtime_pair import pack_static_prompts

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def debug_pair(tmp_path_factory):
    import torch

    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    model = perturb_prompt_path(build_sam("edge_sam_dyt_debug")).eval()
    out = tmp_path_factory.mktemp("onnx_pair")
    result = export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=out, name="dbg",
                                                 simplify=False, opset=17, runtime_rewrites=False), model=model)
    return result.files


def _session(model_or_path):
    data = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _embedding(files):
    from edgesam_core.export.runtime_pair import encoder_input

    return _session(files["encoder"]).run(None, {"image": encoder_input(128)})[0]


def test_pack_static_prompts_layout():
    feed = {"point_coords": np.array([[[10.0, 20.0]]], np.float32), "point_labels": np.array([[1.0]], np.float32),
            "boxes": np.array([[[1.0, 2.0, 30.0, 40.0]]], np.float32), "point_valid": np.array([[True]]),
            "boxes_valid": np.array([[True]])}
    packed = pack_static_prompts(feed, 4)
    np.testing.assert_array_equal(packed["point_coords"][0], [[10, 20], [1, 2], [30, 40], [0, 0]])
    np.testing.assert_array_equal(packed["point_labels"][0], [1, 2, 3, -1])
    assert packed["point_valid"].all() and not packed["boxes_valid"].any()
    box_only = pack_static_prompts({**feed, "point_valid": np.array([[False]])}, 2)
    np.testing.assert_array_equal(box_only["point_labels"][0], [2, 3])
    with pytest.raises(InputError, match="--num-points 3"):
        pack_static_prompts(feed, 2)


@pytest.mark.parametrize("num_points", [2, 4])
def test_static_decoder_matches_dynamic_decoder(debug_pair, num_points):
    from edgesam_core.export import parity as P
    from edgesam_core.export.onnx_static import (
        prepare_static_graph,
        reshape_to_conv_fixes,
    )

    static = prepare_static_graph(onnx.load(str(debug_pair["decoder"])), "decoder", num_points)
    ops = {n.op_type for n in static.model.graph.node}
    # Everything data-dependent or shape-arithmetic is gone: onnx2tf only sees static tensor math.
    assert not ops & {"NonZero", "Shape", "Expand", "ConstantOfShape"}, ops
    assert [v.name for v in static.model.graph.input] == ["image_embeddings", "point_coords", "point_labels"]
    assert [d.dim_value for d in static.model.graph.input[1].type.tensor_type.shape.dim] == [1, num_points, 2]
    fixes = reshape_to_conv_fixes(static.model)
    assert len(fixes) == 1 and fixes[0]["post_process_transpose_perm"] == [0, 2, 3, 1]

    emb = _embedding(debug_pair)
    dynamic, fixed = _session(debug_pair["decoder"]), _session(static.model)
    compared = 0
    for case in P.prompt_cases(128).values():
        try:
            feed = pack_static_prompts(P.decoder_feed(case, emb, None), num_points)
        except InputError:
            continue
        ref = dynamic.run(None, feed)
        got = fixed.run(None, {k: feed[k] for k in ("image_embeddings", "point_coords", "point_labels")})
        for r, g in zip(ref, got):
            np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * max(1.0, float(np.abs(r).max())))
        compared += 1
    assert compared >= 2


def test_static_encoder_swaps_a_cubic_resize_for_bilinear(tmp_path):
    """Graphs from other exporters (upstream's, ours before 0.2) carry a cubic Resize LiteRT cannot run."""
    import torch

    from edgesam_core.export.onnx_export import torch_onnx_export
    from edgesam_core.export.onnx_static import prepare_static_graph
    from edgesam_core.export.wrappers import ENCODER_INPUTS, EncoderForExport, encoder_output_names
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    plain = build_sam("edge_sam_dyt_debug").eval()  # not in inference form: F.interpolate(bicubic)
    path = tmp_path / "legacy_encoder.onnx"
    with torch.no_grad():
        torch_onnx_export(EncoderForExport(plain), (torch.zeros(1, 3, 128, 128),), path, ENCODER_INPUTS,
                          encoder_output_names(False), {}, 17)
    original = onnx.load(str(path))
    assert any(a.s == b"cubic" for n in original.graph.node if n.op_type == "Resize" for a in n.attribute)
    static = prepare_static_graph(original, "encoder")
    modes = [a.s for n in static.model.graph.node if n.op_type == "Resize" for a in n.attribute if a.name == "mode"]
    assert modes == [b"linear"] and "bilinear" in static.notes[0]


def test_static_graph_rejects_fused_attention_ops(debug_pair):
    from edgesam_core.export.onnx_static import prepare_static_graph

    model = onnx.load(str(debug_pair["decoder"]))
    model.graph.node.append(onnx.helper.make_node("Attention", ["a", "b", "c"], ["d"]))
    with pytest.raises(ValueError, match="--no-simplify"):
        prepare_static_graph(model, "decoder", 3)


def test_fp16_graphs_run_close_to_fp32(debug_pair):
    from edgesam_core.export import parity as P
    from edgesam_core.export.onnx_fp16 import convert_onnx_to_fp16
    from edgesam_core.export.runtime_pair import encoder_input

    x = encoder_input(128)
    feeds = {"encoder": {"image": x}}
    emb = _embedding(debug_pair)
    feeds["decoder"] = P.decoder_feed(P.prompt_cases(128)["box+points"], emb, None)
    for role, feed in feeds.items():
        model = onnx.load(str(debug_pair[role]))
        half = convert_onnx_to_fp16(model)
        fp16_inits = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
        assert fp16_inits > 10
        assert all(v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for v in half.graph.input)
        ref = _session(model).run(None, feed)
        got = _session(half).run(None, feed)
        for r, g in zip(ref, got):
            assert g.dtype == np.float32
            # fp16 keeps ~3 significant digits; 1% of the output scale is a loose but failing bound.
            assert np.abs(g - r).max() <= 1e-2 * max(1.0, float(np.abs(r).max()))


def test_fp16_conversion_keeps_resize_scales_float32(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from edgesam_core.export.onnx_fp16 import convert_onnx_to_fp16

    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    bias = numpy_helper.from_array(np.array([70000.0], np.float32), "bias")  # beyond the float16 range
    graph = helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="linear"),
         helper.make_node("Add", ["r", "bias"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], [scales, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = convert_onnx_to_fp16(model)
    inits = {t.name: t for t in half.graph.initializer}
    resize = next(n for n in half.graph.node if n.op_type == "Resize")
    assert inits[resize.input[2]].data_type == TensorProto.FLOAT
    assert inits["bias"].data_type == TensorProto.FLOAT16
    assert np.isfinite(numpy_helper.to_array(inits["bias"])).all()  # clamped to 65504, not inf
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    (y,) = _session(half).run(None, {"x": x})
    assert y.shape == (1, 1, 4, 4) and y.dtype == np.float32
    half_io = convert_onnx_to_fp16(model, keep_io_types=False)
    assert half_io.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
