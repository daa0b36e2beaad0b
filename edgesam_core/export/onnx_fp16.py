"""Rewrite a float32 ONNX graph so that it computes in float16.

TensorRT 11 builds only strongly typed networks: the ``FP16`` builder flag is gone and every tensor runs in
the type the ONNX graph declares. An fp16 engine therefore needs an fp16 graph. This module converts one at
the ONNX level without extra packages:

- float32 initializers, ``Constant`` values and tensor attributes become float16 (clamped to the finite
  float16 range, so large masking constants do not turn into ``inf``);
- ``Cast(to=FLOAT)`` becomes ``Cast(to=FLOAT16)`` and ``dtype`` attributes follow;
- inputs that ONNX requires to stay float32 (``Resize``/``Upsample`` scales) keep float32 constants or get
  a ``Cast`` in front;
- with ``keep_io_types`` the graph inputs and outputs stay float32 and ``Cast`` nodes sit at the border, so
  callers feed and read the same dtypes as for the fp32 graph.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from edgesam_core import deps

if TYPE_CHECKING:
    import onnx

_FP16_MAX = float(np.finfo(np.float16).max)

# (op type, input index) pairs whose input must remain float32 whatever the graph computes in.
_FP32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}


def _to_fp16_array(array: np.ndarray) -> np.ndarray:
    finite = np.isfinite(array)
    clipped = np.where(finite, np.clip(array, -_FP16_MAX, _FP16_MAX), array)
    return clipped.astype(np.float16)


def _convert_tensor(tensor: onnx.TensorProto, numpy_helper) -> onnx.TensorProto:
    array = numpy_helper.to_array(tensor)
    converted = numpy_helper.from_array(_to_fp16_array(array), tensor.name)
    return converted


def _convert_graph(graph: onnx.GraphProto, onnx, keep: set[str]) -> None:
    """Convert initializers, constants and casts of ``graph`` (and its subgraphs) in place."""
    from onnx import numpy_helper

    tp = onnx.TensorProto
    for i, init in enumerate(graph.initializer):
        if init.data_type == tp.FLOAT and init.name not in keep:
            graph.initializer[i].CopyFrom(_convert_tensor(init, numpy_helper))
    for node in graph.node:
        keep_node = node.op_type == "Constant" and any(out in keep for out in node.output)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == tp.FLOAT and not keep_node:
                attr.t.CopyFrom(_convert_tensor(attr.t, numpy_helper))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _convert_graph(attr.g, onnx, keep)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    _convert_graph(sub, onnx, keep)
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == tp.FLOAT:
                attr.i = tp.FLOAT16
        if node.op_type == "Constant" and not keep_node:
            _constant_scalars_to_tensor(node, onnx)
    # Intermediate type annotations are re-derived by shape inference after the rewrite.
    kept_info = [vi for vi in graph.value_info if vi.type.tensor_type.elem_type != tp.FLOAT]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)


def _constant_scalars_to_tensor(node: onnx.NodeProto, onnx) -> None:
    """Turn ``Constant(value_float[s]=...)`` (always float32) into an fp16 ``value`` tensor."""
    for attr in list(node.attribute):
        if attr.name in ("value_float", "value_floats"):
            values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
            tensor = onnx.numpy_helper.from_array(_to_fp16_array(values))
            node.attribute.remove(attr)
            node.attribute.append(onnx.helper.make_attribute("value", tensor))


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 0
    while candidate in taken:
        k += 1
        candidate = f"{name}_{k}"
    taken.add(candidate)
    return candidate


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        names.add(node.name)
    return names


def _fp32_only_sources(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, int]]:
    return [(node, idx) for node in graph.node for idx, name in enumerate(node.input)
            if name and (node.op_type, idx) in _FP32_ONLY_INPUTS]


def _protect_fp32_inputs(graph: onnx.GraphProto, onnx, taken: set[str]) -> set[str]:
    """Give each fp32-only input its own float32 source; returns the names to leave unconverted."""
    from onnx import numpy_helper

    tp = onnx.TensorProto
    initializers = {t.name: t for t in graph.initializer}
    constants = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
    keep: set[str] = set()
    replaced: set[str] = set()
    casts: list[tuple[int, onnx.NodeProto]] = []
    for node, idx in _fp32_only_sources(graph):
        source = node.input[idx]
        replaced.add(source)
        if source in initializers and initializers[source].data_type == tp.FLOAT:
            copy_name = _unique(f"{source}__fp32", taken)
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(initializers[source]), copy_name))
            node.input[idx] = copy_name
            keep.add(copy_name)
        elif source in constants:
            copy_name = _unique(f"{source}__fp32", taken)
            clone = copy.deepcopy(constants[source])
            clone.output[0] = copy_name
            clone.name = _unique(f"{clone.name or 'Constant'}__fp32", taken)
            casts.append((list(graph.node).index(constants[source]) + 1, clone))
            node.input[idx] = copy_name
            keep.add(copy_name)
        else:
            cast_out = _unique(f"{source}__to_fp32", taken)
            cast = onnx.helper.make_node("Cast", [source], [cast_out], to=tp.FLOAT,
                                         name=_unique(f"{node.name or node.op_type}_fp32_cast", taken))
            casts.append((list(graph.node).index(node), cast))
            node.input[idx] = cast_out
            # The Cast's own ``to`` must survive the FLOAT -> FLOAT16 rewrite below.
            keep.add(cast_out)
    for position, new_node in sorted(casts, key=lambda item: item[0], reverse=True):
        graph.node.insert(position, new_node)
    _drop_unused(graph, replaced)
    return keep


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {v.name for v in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                used |= _used_names(sub)
    return used


def _drop_unused(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove replaced constants whose only consumers were given a float32 copy."""
    unused = candidates - _used_names(graph)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in unused]:
        graph.node.remove(node)
    for init in [t for t in graph.initializer if t.name in unused]:
        graph.initializer.remove(init)


def _restore_fp32_casts(graph: onnx.GraphProto, onnx, keep: Iterable[str]) -> None:
    keep = set(keep)
    for node in graph.node:
        if node.op_type == "Cast" and node.output[0] in keep:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = onnx.TensorProto.FLOAT


def _wrap_io(graph: onnx.GraphProto, onnx, taken: set[str], keep_io_types: bool) -> None:
    tp = onnx.TensorProto
    float_inputs = [v for v in graph.input if v.type.tensor_type.elem_type == tp.FLOAT]
    float_outputs = [v for v in graph.output if v.type.tensor_type.elem_type == tp.FLOAT]
    if not keep_io_types:
        for value in [*float_inputs, *float_outputs]:
            value.type.tensor_type.elem_type = tp.FLOAT16
        return
    head: list[onnx.NodeProto] = []
    for value in float_inputs:
        inner = _unique(f"{value.name}__fp16", taken)
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == value.name:
                    node.input[i] = inner
        head.append(onnx.helper.make_node("Cast", [value.name], [inner], to=tp.FLOAT16,
                                          name=_unique(f"{value.name}_to_fp16", taken)))
    for value in float_outputs:
        inner = _unique(f"{value.name}__fp16", taken)
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == value.name:
                    node.output[i] = inner
            # An output may also feed later nodes inside the graph.
            for i, name in enumerate(node.input):
                if name == value.name:
                    node.input[i] = inner
        graph.node.append(onnx.helper.make_node("Cast", [inner], [value.name], to=tp.FLOAT,
                                                name=_unique(f"{value.name}_to_fp32", taken)))
    for offset, node in enumerate(head):
        graph.node.insert(offset, node)


def convert_onnx_to_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """Return a copy of ``model`` whose float32 computation runs in float16.

    Args:
        model: a float32 ONNX model (not modified).
        keep_io_types: keep float32 graph inputs/outputs and cast at the border (recommended: callers
            then use the same buffers for fp32 and fp16 builds).

    Returns:
        The converted model, checked with strict shape/type inference.

    Raises:
        ValueError: when the converted graph does not type-check (a pattern this converter does not know).
    """
    onnx = deps.require("onnx", purpose="converting an ONNX graph to float16")
    converted = copy.deepcopy(model)
    graph = converted.graph
    taken = _all_names(graph)
    keep = _protect_fp32_inputs(graph, onnx, taken)
    _convert_graph(graph, onnx, keep)
    _restore_fp32_casts(graph, onnx, keep)
    _wrap_io(graph, onnx, taken, keep_io_types)
    try:
        converted = onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except Exception as exc:  # onnx raises several unrelated types here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"float16 conversion produced an ill-typed graph: {first}") from exc
    return converted
