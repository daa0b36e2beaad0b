"""Atomic file writes and the JSON sidecar written next to every exported graph (``<stem>.json``)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a ``*.tmp`` file in the same folder and ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sidecar_path(artifact: str | Path) -> Path:
    """``X_decoder.onnx`` -> ``X_decoder.json``."""
    artifact = Path(artifact)
    return artifact.with_suffix(".json")


def io_spec(model: Any) -> dict[str, list[dict[str, Any]]]:
    """Inputs/outputs of an ``onnx.ModelProto`` as ``{name, dtype, shape}``; dynamic dims are strings."""

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape: list[int | str] = []
        for dim in tensor.shape.dim:
            shape.append(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?"))
        return {"name": value.name, "dtype": _ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
                "shape": shape}

    initializers = {init.name for init in model.graph.initializer}
    return {"inputs": [describe(v) for v in model.graph.input if v.name not in initializers],
            "outputs": [describe(v) for v in model.graph.output]}


def library_versions() -> dict[str, str]:
    """Versions of the libraries an artifact depends on (missing ones are omitted)."""
    import importlib.metadata as md

    versions = {}
    for dist in ("torch", "onnx", "onnxruntime", "onnxsim", "edgesam"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions
