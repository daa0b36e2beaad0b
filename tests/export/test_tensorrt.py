"""TensorRT backend without a GPU: the missing-dependency exit, and every pure part of the engine build.

The real build needs tensorrt and CUDA; here a small fake ``tensorrt`` module stands in for the builder so the
parse-error message, the precision handling (TensorRT 10 flag vs TensorRT 11 strongly typed fp16 ONNX), the
optimisation profile and the sidecar are checked exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgesam_core.errors import ConfigError, EdgeSamError, MissingDependencyError
from edgesam_core.export import tensorrt as T

ROOT = Path(__file__).resolve().parents[2]


def _shadow_tensorrt(folder: Path, *, importable: bool) -> Path:
    """A ``tensorrt`` package on ``PYTHONPATH`` that hides any real one: unimportable, or importable (a stub)."""
    package = folder / "tensorrt"
    package.mkdir(parents=True)
    body = '__version__ = "10.0.0"\n' if importable else 'raise ImportError("tensorrt hidden by the test")\n'
    (package / "__init__.py").write_text(body)
    return folder


# -- missing dependency --------------------------------------------------------------------------------
# Both one-line messages are produced on every machine: tensorrt is hidden or stubbed, and the GPU check is
# made to fail (CUDA_VISIBLE_DEVICES="" in a subprocess, a patched torch.cuda.is_available in-process).


@pytest.mark.parametrize("missing,expected", [("tensorrt", "tensorrt"), ("gpu", "CUDA GPU")])
def test_build_trt_cli_exits_3_with_one_line_naming_what_is_missing(tmp_path, missing, expected):
    onnx_file = tmp_path / "m_encoder.onnx"
    onnx_file.write_bytes(b"not checked before the dependency check")
    (tmp_path / "m_decoder.onnx").write_bytes(b"")
    shadow = _shadow_tensorrt(tmp_path / "site", importable=missing == "gpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}
    env.pop("EDGESAM_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "edgesam_cli", "build-trt", str(onnx_file)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error:") and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and not list(tmp_path.glob("*.engine"))


def test_require_tensorrt_gpu_names_tensorrt_when_it_is_not_importable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependencyError) as info:
        T.require_tensorrt_gpu()
    message = str(info.value)
    assert info.value.exit_code == 3 and info.value.extra == "trt"
    assert "'tensorrt' is not installed" in message and "pip install 'edgesam[trt]'" in message
    assert "\n" not in message


def test_require_tensorrt_gpu_names_the_gpu_when_cuda_is_unavailable(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MissingDependencyError) as info:
        T.require_tensorrt_gpu()
    message = str(info.value)
    assert info.value.exit_code == 3 and info.value.extra == "trt"
    assert "No CUDA GPU" in message and "TensorRT 10.13.0" in message and "tensorrt' is not installed" not in message
    assert "\n" not in message


def test_require_tensorrt_gpu_returns_the_module_when_both_are_present(monkeypatch):
    import torch

    fake = types.SimpleNamespace(__version__="10.13.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert T.require_tensorrt_gpu() is fake


# -- profile shapes ------------------------------------------------------------------------------------


def test_profile_shapes_cover_only_dynamic_inputs():
    inputs = [("image_embeddings", (1, 256, 64, 64)), ("point_coords", (1, -1, 2)), ("point_labels", (1, -1)),
              ("boxes", (1, 1, 4)), ("point_valid", (1, 1))]
    shapes = T.profile_shapes(inputs, T.PointRange(1, 4, 12))
    assert shapes == {"point_coords": ((1, 1, 2), (1, 4, 2), (1, 12, 2)),
                      "point_labels": ((1, 1), (1, 4), (1, 12))}


def test_profile_shapes_pin_dynamic_batch_and_reject_unknown_axes():
    assert T.profile_shapes([("image", (-1, 3, 64, 64))], T.PointRange()) == {
        "image": ((1, 3, 64, 64),) * 3}
    with pytest.raises(ConfigError, match="image_embeddings"):
        T.profile_shapes([("image_embeddings", (1, 256, -1, 64))], T.PointRange())


@pytest.mark.parametrize("low,mid,high", [(0, 1, 2), (3, 2, 4), (1, 5, 4)])
def test_point_range_rejects_unordered_values(low, mid, high):
    with pytest.raises(ConfigError, match="min <= opt <= max"):
        T.PointRange(low, mid, high)


# -- parser errors and sidecar ---------------------------------------------------------------------------


class _FakeError:
    def __init__(self, desc: str, node: int, name: str, op: str) -> None:
        self._desc, self._node, self._name, self._op = desc, node, name, op

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op


class _FakeParser:
    def __init__(self, errors: list[_FakeError]) -> None:
        self.errors = errors

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> _FakeError:
        return self.errors[i]

    def parse(self, payload: bytes, path: str) -> bool:
        self.payload = payload
        return not self.errors


def test_parser_errors_are_all_listed_on_one_line():
    parser = _FakeParser([_FakeError("Unsupported operator NonZero\nat line 3", 12, "/NonZero", "NonZero"),
                          _FakeError("Invalid weights", 40, "", "Conv")])
    message = T.format_parser_errors(parser, "/x/m_decoder.onnx")
    assert "\n" not in message
    assert message.startswith("TensorRT could not parse m_decoder.onnx: 2 error(s)")
    assert "[1] node '/NonZero' (NonZero): Unsupported operator NonZero at line 3" in message
    assert "[2] node #40 (Conv): Invalid weights" in message


def test_engine_sidecar_is_written_next_to_the_engine(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00engine-bytes")
    path = T.write_engine_sidecar(engine, {"precision": "fp16", "img_size": 1024})
    assert path == tmp_path / "model.engine.json"
    meta = json.loads(path.read_text())
    assert meta["format"] == "tensorrt" and meta["file"] == "model.engine" and meta["precision"] == "fp16"
    assert meta["bytes"] == 13 and len(meta["sha256"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.engine", "model.engine.json"]


# -- engine build against a fake tensorrt module ---------------------------------------------------------


def _fake_trt(version: str, parser_errors: list[_FakeError] | None = None, with_fp16_flag: bool = True):
    """A stand-in for the parts of the tensorrt API that ``build_engine`` touches (records the calls)."""
    trt = types.SimpleNamespace(__version__=version, calls={})
    flags = {"FP16": 1} if with_fp16_flag else {}
    trt.BuilderFlag = types.SimpleNamespace(**flags, TF32=2)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        num_inputs = 2

        def get_input(self, i):
            return [Tensor("image_embeddings", (1, 8, 4, 4)), Tensor("point_coords", (1, -1, 2))][i]

    class Profile:
        def set_shape(self, name, low, mid, high):
            trt.calls.setdefault("profile", {})[name] = (low, mid, high)

    class Config:
        def set_flag(self, flag):
            trt.calls.setdefault("flags", []).append(flag)

        def set_memory_pool_limit(self, pool, size):
            trt.calls["workspace"] = size

        def add_optimization_profile(self, profile):
            trt.calls["profiles_added"] = trt.calls.get("profiles_added", 0) + 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            trt.calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"serialized-engine"

    def OnnxParser(network, logger):
        parser = _FakeParser(list(parser_errors or []))
        trt.calls["parser"] = parser
        return parser

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    return trt


def _tiny_onnx(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_build_engine_tensorrt10_uses_fp16_flag_and_profile(tmp_path):
    trt = _fake_trt("10.13.0")
    src = _tiny_onnx(tmp_path / "m_decoder.onnx")
    meta = T.build_engine(trt, src, tmp_path / "m.engine", precision="fp16", points=T.PointRange(1, 3, 8),
                          workspace_gib=0.5)
    assert (tmp_path / "m.engine").read_bytes() == b"serialized-engine"
    assert trt.calls["flags"] == [1] and trt.calls["network_flags"] == 0
    assert trt.calls["parser"].payload == src.read_bytes()  # the fp32 graph, untouched
    assert trt.calls["profile"] == {"point_coords": ((1, 1, 2), (1, 3, 2), (1, 8, 2))}
    assert trt.calls["workspace"] == 1 << 29
    assert meta["precision_mode"] == "BuilderFlag.FP16" and meta["tensorrt_version"] == "10.13.0"


def test_build_engine_tensorrt11_parses_a_strongly_typed_fp16_graph(tmp_path):
    onnx = pytest.importorskip("onnx")
    trt = _fake_trt("11.4.0", with_fp16_flag=False)
    src = _tiny_onnx(tmp_path / "m_encoder.onnx")
    meta = T.build_engine(trt, src, tmp_path / "m.engine", precision="fp16", points=T.PointRange())
    assert "flags" not in trt.calls and trt.calls["network_flags"] == 1 << 5
    parsed = onnx.ModelProto.FromString(trt.calls["parser"].payload)
    assert parsed.graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
    assert parsed.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept float32
    assert meta["precision_mode"] == "strongly-typed fp16 ONNX"


def test_build_engine_reports_every_parser_error(tmp_path):
    trt = _fake_trt("10.13.0", parser_errors=[_FakeError("bad A", 1, "nA", "Foo"), _FakeError("bad B", 2, "nB", "Bar")])
    src = _tiny_onnx(tmp_path / "m_decoder.onnx")
    with pytest.raises(EdgeSamError) as info:
        T.build_engine(trt, src, tmp_path / "m.engine", precision="fp32", points=T.PointRange())
    assert "2 error(s)" in str(info.value) and "bad A" in str(info.value) and "bad B" in str(info.value)
    assert not (tmp_path / "m.engine").exists()


def test_strongly_typed_detection_follows_the_version():
    assert not T.uses_strongly_typed_fp16(_fake_trt("10.3.0"))
    assert T.uses_strongly_typed_fp16(_fake_trt("11.0.1"))
    assert T.uses_strongly_typed_fp16(_fake_trt("10.9.0", with_fp16_flag=False))
