"""Turn the exported ONNX graphs into fully static graphs that onnx2tf converts reliably.

TFLite wants static shapes, and onnx2tf's NCHW->NHWC layout tracking goes wrong on shape arithmetic
(``Shape``/``Gather``/``Concat`` chains), on input-independent sub-graphs (the dense positional encoding is a
``[g, g, 2] @ [2, C]`` MatMul it transposes) and on data-dependent token selection (``NonZero``). So before
conversion:

- the decoder's prompt layout is fixed: ``point_valid = True``, ``boxes_valid = False`` (boxes are passed as
  two points labelled 2 and 3, which the graph embeds exactly like box corners) and the number of points
  is set to a static ``N``; the token count then no longer depends on the data;
- every node whose inputs are all constants (and every ``Shape`` of a statically shaped tensor) is evaluated
  with ``onnx.reference`` and replaced by an initializer, repeated until nothing changes;
- ``Resize(mode=cubic)`` becomes ``linear``: LiteRT has no builtin bicubic kernel (onnx2tf would emit a
  Flex op that the standard interpreters cannot run). The caller records this in the sidecar.

Every step is pure ONNX; the result is checked with ``onnx.checker`` and strict shape inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgesam_core import deps

if TYPE_CHECKING:
    import onnx

#: Decoder inputs replaced by constants for the static TFLite decoder.
FIXED_DECODER_INPUTS = ("boxes", "point_valid", "boxes_valid")
POINT_INPUTS = ("point_coords", "point_labels")
_MAX_FOLD_PASSES = 20


@dataclass
class StaticGraph:
    """A prepared graph plus what was changed on the way (for the sidecar)."""

    model: Any
    notes: list[str] = field(default_factory=list)


def _static_dims(value: onnx.ValueInfoProto) -> list[int] | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = []
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        dims.append(int(dim.dim_value))
    return dims


def _evaluate_node(onnx: Any, node: onnx.NodeProto, values: dict[str, np.ndarray],
                   opsets: list[Any]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    helper = onnx.helper
    names = [x for x in node.input if x]
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(x, onnx.TensorProto.UNDEFINED, None) for x in names],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output])
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets))
    return [np.asarray(v) for v in evaluator.run(None, {x: values[x] for x in names})]


def _fold_once(onnx: Any, model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    from onnx import numpy_helper

    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    graph = model.graph
    shapes = {v.name: _static_dims(v) for v in [*graph.value_info, *graph.input]}
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    opsets = [onnx.helper.make_opsetid(o.domain, o.version) for o in model.opset_import]
    kept, changed = [], False
    for node in graph.node:
        has_subgraph = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
        if has_subgraph or node.domain not in ("", "ai.onnx"):
            kept.append(node)
            continue
        if node.op_type == "Shape" and shapes.get(node.input[0]) is not None:
            dims = shapes[node.input[0]]
            attrs = {a.name: a.i for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(dims))
            values[node.output[0]] = np.array(dims[start:end], np.int64)
            changed = True
            continue
        inputs = [x for x in node.input if x]
        if node.op_type not in ("RandomNormal", "RandomUniform") and all(x in values for x in inputs):
            for name, value in zip(node.output, _evaluate_node(onnx, node, values, opsets)):
                values[name] = value
            changed = True
            continue
        kept.append(node)
    used = {x for node in kept for x in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in values.items() if k in used)
    del graph.value_info[:]
    return model, changed


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Evaluate constant sub-graphs (and ``Shape`` of static tensors) until the graph stops shrinking."""
    onnx = deps.require("onnx", purpose="preparing ONNX graphs for TFLite")
    for _ in range(_MAX_FOLD_PASSES):
        model, changed = _fold_once(onnx, model)
        if not changed:
            break
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)


def _set_static_points(model: onnx.ModelProto, num_points: int) -> None:
    for value in model.graph.input:
        if value.name in POINT_INPUTS:
            dim = value.type.tensor_type.shape.dim[1]
            dim.ClearField("dim_param")
            dim.dim_value = int(num_points)


def _fix_decoder_prompts(onnx: Any, model: onnx.ModelProto) -> None:
    from onnx import numpy_helper

    fixed = {"boxes": np.zeros((1, 1, 4), np.float32), "point_valid": np.ones((1, 1), bool),
             "boxes_valid": np.zeros((1, 1), bool)}
    graph = model.graph
    kept = [v for v in graph.input if v.name not in fixed]
    present = {v.name for v in graph.input} & set(fixed)
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend(numpy_helper.from_array(fixed[name], name) for name in present)


def _cubic_to_linear(model: onnx.ModelProto) -> int:
    count = 0
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for attr in node.attribute:
            if attr.name == "mode" and attr.s == b"cubic":
                attr.s = b"linear"
                count += 1
    return count


def prepare_static_graph(model: onnx.ModelProto, role: str, num_points: int | None = None) -> StaticGraph:
    """Return a static, constant-folded copy of an encoder or decoder graph for onnx2tf.

    Args:
        model: the exported ONNX model (not modified).
        role: ``"encoder"`` or ``"decoder"``.
        num_points: the decoder's static number of points (required for the decoder).

    Raises:
        ValueError: the graph is not an EdgeSAM encoder/decoder export, or fails to type-check.
    """
    onnx = deps.require("onnx", purpose="preparing ONNX graphs for TFLite")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    notes: list[str] = []
    names = {v.name for v in model.graph.input}
    nonstandard = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")}
                         | {n.op_type for n in model.graph.node if n.op_type == "Attention"})
    if nonstandard:
        raise ValueError(f"graph contains operators onnx2tf cannot convert ({', '.join(nonstandard)}); "
                         "re-export with 'edgesam export-onnx --no-simplify'")
    if role == "decoder":
        if not set(POINT_INPUTS) <= names or not num_points or num_points < 1:
            raise ValueError("decoder graphs need point_coords/point_labels inputs and num_points >= 1")
        _fix_decoder_prompts(onnx, model)
        _set_static_points(model, num_points)
        notes.append(f"static prompt layout: {num_points} points (boxes as labels 2/3, padding label -1), "
                     "point_valid=True, boxes_valid=False")
    elif role == "encoder":
        replaced = _cubic_to_linear(model)
        if replaced:
            notes.append(f"{replaced} bicubic Resize replaced by bilinear (LiteRT has no builtin bicubic)")
    else:
        raise ValueError(f"unknown graph role {role!r}")
    del model.graph.value_info[:]
    try:
        model = fold_constants(model)
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"could not make the {role} graph static: {first}") from exc
    _strip_leading_slashes(model)
    return StaticGraph(model, notes)


def _strip_leading_slashes(model: onnx.ModelProto) -> None:
    """Rename ``/a/b`` nodes and tensors to ``a/b``: onnx2tf rewrites a leading slash in some modes only,
    which would make parameter-replacement names depend on the conversion options."""
    def fix(name: str) -> str:
        return name.lstrip("/") if name.startswith("/") else name

    graph = model.graph
    for node in graph.node:
        node.name = fix(node.name)
        node.input[:] = [fix(x) for x in node.input]
        node.output[:] = [fix(x) for x in node.output]
    for tensor in graph.initializer:
        tensor.name = fix(tensor.name)
    for value in graph.value_info:
        value.name = fix(value.name)


def reshape_to_conv_fixes(model: onnx.ModelProto) -> list[dict[str, Any]]:
    """onnx2tf parameter-replacement entries for ``Reshape`` (3-D -> 4-D) outputs that feed a convolution.

    onnx2tf keeps such a tensor in ONNX's NCHW order although the following (transposed) convolution
    expects NHWC; a post-transpose ``[0, 2, 3, 1]`` on the Reshape output fixes it (the mask decoder's
    ``src.transpose(1, 2).view(b, c, h, w)`` before ``output_upscaling``).
    """
    graph = model.graph
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*graph.value_info, *graph.input, *graph.output]}
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    fixes = []
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        out = node.output[0]
        if ranks.get(node.input[0]) == 3 and ranks.get(out) == 4 and \
                any(op in ("Conv", "ConvTranspose") for op in consumers.get(out, [])):
            fixes.append({"op_name": node.name, "param_target": "outputs", "param_name": out,
                          "post_process_transpose_perm": [0, 2, 3, 1]})
    return fixes
