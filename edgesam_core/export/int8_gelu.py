"""GELU in int8 encoders as two of ONNX Runtime's uint8 kernels instead of a float round trip.

ONNX Runtime has no int8 GELU: in a QDQ graph ``DQ -> Gelu -> Q`` runs in float32 over the encoder's largest
tensors (27 GELUs, ~50 M values per 1024x1024 image), 36 ms of a 78 ms int8 EdgeSAM-DyT encoder on a 2-core
CPU. ``x * sigmoid(1.702 x)`` (the sigmoid approximation from the GELU paper, within 0.021 of the tanh and erf
forms everywhere) quantises into ops ONNX Runtime runs on uint8: the sigmoid as a 256-entry lookup table
(``QLinearSigmoid``) and the product as ``QLinearMul``. The ``1.702`` goes into the sigmoid's dequantisation
scale, so no separate multiply is left (:func:`fold_scalar_multiplies`).

It is a different function: at most 0.021 from GELU (at |x| ~ 2.3), 0.007 RMS over unit-normal inputs, which is
1-10 rounding steps of a GELU output whose range is small. Measured on full-size EdgeSAM-DyT (random weights,
``benchmarks/bench_int8.py``) the int8 encoder stays as close to fp32 as with the exact GELU (embedding cosine
0.9991, mask IoU 0.996 both): the convolutions' quantisation dominates. ``quantize --exact-gelu`` keeps the exact
GELU; the fp32 export always does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: ``x * sigmoid(SIGMOID_GELU_ALPHA * x)`` stands in for GELU (Hendrycks & Gimpel's sigmoid approximation).
SIGMOID_GELU_ALPHA = 1.702


def gelus_as_sigmoid_products(model: Any) -> int:
    """Rewrite every ``Gelu`` node of an ONNX ``model`` (in place, before calibration) as
    ``x * Sigmoid(alpha * x)``; returns the count."""
    from edgesam_core.deps import require

    helper = require("onnx.helper", extra="onnx")
    numpy_helper = require("onnx.numpy_helper", extra="onnx")
    graph = model.graph
    alpha = "sigmoid_gelu_alpha"
    nodes, count = [], 0
    for node in graph.node:
        if node.op_type != "Gelu" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        x, y, name = node.input[0], node.output[0], node.name or node.output[0]
        nodes += [helper.make_node("Mul", [x, alpha], [f"{y}/scaled"], name=f"{name}/scale"),
                  helper.make_node("Sigmoid", [f"{y}/scaled"], [f"{y}/gate"], name=f"{name}/sigmoid"),
                  helper.make_node("Mul", [x, f"{y}/gate"], [y], name=f"{name}/gated")]
        count += 1
    if count:
        graph.initializer.append(numpy_helper.from_array(np.array(SIGMOID_GELU_ALPHA, np.float32), alpha))
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def _constant_scalar(node: Any, initializers: dict[str, Any]) -> float | None:
    """The value of a ``DequantizeLinear`` of a constant scalar, else None."""
    from edgesam_core.deps import require

    numpy_helper = require("onnx.numpy_helper", extra="onnx")
    if node is None or node.op_type != "DequantizeLinear" or not all(i in initializers for i in node.input):
        return None
    values = [numpy_helper.to_array(initializers[i]) for i in node.input]
    if any(v.size != 1 for v in values):
        return None
    q, scale = values[0].astype(np.float64), values[1].astype(np.float64)
    zero = values[2].astype(np.float64) if len(values) > 2 else 0.0
    return float(((q - zero) * scale).reshape(()))


def fold_scalar_multiplies(model: Any) -> int:
    """In a QDQ ``model`` (in place), fold ``DQ(x) * c -> Q -> DQ`` by a positive constant scalar ``c`` into
    one ``DQ(x)`` with ``c`` times the scale; returns the count.

    The same values without the multiply's rounding, and ONNX Runtime then fuses what follows on uint8 (a
    ``Sigmoid`` becomes a lookup table). Only multiplies whose quantised result is used by dequantisations
    alone are folded; initializers nothing uses any more are dropped.
    """
    from edgesam_core.deps import require

    helper = require("onnx.helper", extra="onnx")
    numpy_helper = require("onnx.numpy_helper", extra="onnx")
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    replaced: dict[str, Any] = {}  # first output of a removed node -> its replacement (None: just removed)
    count = 0
    for mul in graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2 or mul.output[0] in outputs:
            continue
        sources = [producers.get(name) for name in mul.input]
        constants = [_constant_scalar(node, initializers) for node in sources]
        if sum(c is not None for c in constants) != 1:
            continue
        k = 0 if constants[0] is not None else 1
        c, dq_x = constants[k], sources[1 - k]
        if not c or c <= 0 or dq_x is None or dq_x.op_type != "DequantizeLinear" or len(dq_x.input) < 2 \
                or dq_x.input[1] not in initializers or dq_x.output[0] in replaced:
            continue
        users = consumers.get(mul.output[0], [])
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or users[0].output[0] in outputs:
            continue
        quant = users[0]
        dequants = consumers.get(quant.output[0], [])
        if not dequants or any(d.op_type != "DequantizeLinear" for d in dequants):
            continue
        scale = numpy_helper.to_array(initializers[dq_x.input[1]])
        scaled = numpy_helper.from_array((scale.astype(np.float64) * c).astype(scale.dtype),
                                         f"{dq_x.input[1]}/times_{count}")
        graph.initializer.append(scaled)
        initializers[scaled.name] = scaled
        for old in dequants:
            replacement = helper.make_node("DequantizeLinear", [dq_x.input[0], scaled.name, *dq_x.input[2:]],
                                           list(old.output), name=f"{old.name or old.output[0]}/folded")
            replacement.attribute.extend(dq_x.attribute)
            replaced[old.output[0]] = replacement
        replaced[mul.output[0]] = replaced[quant.output[0]] = None
        count += 1
    if not count:
        return 0
    kept = [replaced.get(node.output[0], node) for node in graph.node]
    kept = [node for node in kept if node is not None]
    used = {name for node in kept for name in node.input} | outputs
    while True:  # the constant's now unused dequantisations
        pruned = [node for node in kept if any(out in used for out in node.output)]
        if len(pruned) == len(kept):
            break
        kept = pruned
        used = {name for node in kept for name in node.input} | outputs
    del graph.node[:]
    graph.node.extend(kept)
    live = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return count
