"""GELU for int8 encoders: the sigmoid rewrite before calibration, and the scale fold after quantisation that
lets ONNX Runtime run it as a uint8 lookup table."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _session(model, optimized_path=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _mlp_model():
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 1), torch.nn.GELU(approximate="tanh"),
                                 torch.nn.Conv2d(16, 4, 1)).eval()
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.randn(1, 4, 8, 8),), buffer, dynamo=False, opset_version=20,
                      input_names=["x"], output_names=["y"])
    return onnx.load_from_string(buffer.getvalue())


def test_gelus_become_sigmoid_products():
    """Both GELU forms become ``x * sigmoid(1.702 x)``: within 0.021 of either, and not equal to it."""
    from onnx import TensorProto, helper

    from edgesam_core.export.int8_gelu import gelus_as_sigmoid_products

    nodes = [helper.make_node("Gelu", ["x"], ["tanh"], approximate="tanh"),
             helper.make_node("Gelu", ["x"], ["erf"]),
             helper.make_node("Relu", ["x"], ["relu"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4001]) for n in ("tanh", "erf", "relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4001])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = np.linspace(-8, 8, 4001).astype(np.float32)
    before = _session(model).run(None, {"x": x})
    assert gelus_as_sigmoid_products(model) == 2
    onnx.checker.check_model(model)
    assert "Gelu" not in {n.op_type for n in model.graph.node}
    after = _session(model).run(None, {"x": x})
    expected = x / (1 + np.exp(-1.702 * x.astype(np.float64)))
    for got, exact in zip(after[:2], before[:2]):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        assert 0.015 < np.abs(got - exact).max() < 0.021
    np.testing.assert_array_equal(after[2], before[2])


def _quantize(model, tmp_path):
    from onnxruntime import quantization as q

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, str(src))
    rng = np.random.default_rng(0)
    feeds = iter([{"x": rng.normal(size=(1, 4, 8, 8)).astype(np.float32)} for _ in range(8)])
    reader = type("Reader", (q.CalibrationDataReader,), {"get_next": lambda self: next(feeds, None)})()
    q.quantize_static(str(src), str(dst), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      calibrate_method=q.CalibrationMethod.MinMax)
    return onnx.load(str(dst))


def test_quantised_sigmoid_gelu_runs_as_a_table_within_int8_rounding(tmp_path):
    """After the fold the sigmoid reads the quantised input with 1.702x its scale (no multiply left), ONNX
    Runtime fuses it into ``QLinearSigmoid``, and the output stays within int8 rounding of the float graph;
    the same graph with the scale left unscaled (a broken fold) does not."""
    from onnx import numpy_helper

    from edgesam_core.export.int8_gelu import (
        SIGMOID_GELU_ALPHA,
        fold_scalar_multiplies,
        gelus_as_sigmoid_products,
    )

    model = _mlp_model()
    assert gelus_as_sigmoid_products(model) == 1
    reference = _session(model)
    quantized = _quantize(model, tmp_path)
    assert fold_scalar_multiplies(quantized) == 1
    onnx.checker.check_model(quantized)
    graph = quantized.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    (sigmoid,) = [n for n in graph.node if n.op_type == "Sigmoid"]
    gate_dq = producers[sigmoid.input[0]]
    (product,) = [n for n in graph.node if n.op_type == "Mul"]
    x_dq = next(producers[i] for i in product.input if producers[i].input[0] == gate_dq.input[0])
    assert gate_dq.op_type == x_dq.op_type == "DequantizeLinear"
    assert np.isclose(inits[gate_dq.input[1]], SIGMOID_GELU_ALPHA * inits[x_dq.input[1]], rtol=1e-6)
    assert "sigmoid_gelu_alpha_quantized" not in inits  # the constant's quantised copy went with it

    optimized = tmp_path / "opt.onnx"
    _session(quantized, optimized)
    fused = {n.op_type for n in onnx.load(str(optimized)).graph.node}
    assert "QLinearSigmoid" in fused and "Sigmoid" not in fused

    x = np.random.default_rng(1).normal(size=(1, 4, 8, 8)).astype(np.float32)
    expected = reference.run(None, {"x": x})[0]
    (out_dq,) = [n for n in graph.node if n.output[0] == "y"]
    step = float(inits[out_dq.input[1]])
    error = np.abs(_session(quantized).run(None, {"x": x})[0] - expected).max()
    assert error <= 4 * step, (error, step)
    broken = onnx.ModelProto()
    broken.CopyFrom(quantized)
    for init in broken.graph.initializer:
        if init.name == gate_dq.input[1]:
            init.CopyFrom(numpy_helper.from_array(inits[x_dq.input[1]], init.name))
    assert np.abs(_session(broken).run(None, {"x": x})[0] - expected).max() > 4 * step


def test_only_exclusive_positive_scalar_multiplies_fold():
    """Kept: a negative constant, a product of two activations, a multiply whose quantised result also
    leaves the graph; folded: the plain case, with the same output to rounding."""
    from onnx import TensorProto, helper

    from edgesam_core.export.int8_gelu import fold_scalar_multiplies

    def dq(name, src, scale):
        return helper.make_node("DequantizeLinear", [src, scale, "zp"], [name])

    scalars = {"s": (TensorProto.FLOAT, 0.05), "zp": (TensorProto.UINT8, 128), "cq": (TensorProto.UINT8, 170),
               "cs": (TensorProto.FLOAT, 0.01), "czp": (TensorProto.UINT8, 0), "nq": (TensorProto.UINT8, 0),
               "nzp": (TensorProto.UINT8, 100)}
    inits = [helper.make_tensor(name, kind, [], [value]) for name, (kind, value) in scalars.items()]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]), dq("xd", "xq", "s"),
             helper.make_node("DequantizeLinear", ["cq", "cs", "czp"], ["c"]),  # 1.7
             helper.make_node("DequantizeLinear", ["nq", "cs", "nzp"], ["neg"])]  # -1.0
    outputs = []
    for name, other in (("plain", "c"), ("negative", "neg"), ("activations", "xd"), ("exported", "c")):
        nodes += [helper.make_node("Mul", ["xd", other], [f"{name}_m"]),
                  helper.make_node("QuantizeLinear", [f"{name}_m", "s", "zp"], [f"{name}_q"]),
                  dq(f"{name}_d", f"{name}_q", "s"), helper.make_node("Sigmoid", [f"{name}_d"], [name])]
        outputs.append(name)
    outputs.append("exported_q")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT if o != "exported_q"
                                                             else TensorProto.UINT8, [64]) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    x = np.linspace(-3, 3, 64).astype(np.float32)
    before = _session(model).run(None, {"x": x})
    assert fold_scalar_multiplies(model) == 1
    onnx.checker.check_model(model)
    muls = {n.output[0] for n in model.graph.node if n.op_type == "Mul"}
    assert muls == {"negative_m", "activations_m", "exported_m"}
    after = _session(model).run(None, {"x": x})
    # Without the multiply's rounding: within half a step of 0.05 before the sigmoid (slope <= 1/4).
    assert np.abs(after[0] - before[0]).max() <= 0.25 * 0.05 / 2 + 1e-6
    for a, b in zip(after[1:], before[1:]):
        np.testing.assert_array_equal(a, b)
