"""``TrtSamPredictor``: the ``SamPredictor`` API on ``edgesam build-trt`` engines (TensorRT, CUDA).

:class:`TrtRunner` executes one engine with torch CUDA tensors as I/O buffers (no pycuda needed): inputs are
copied to the GPU in the engine's dtypes, static outputs are preallocated, and outputs whose shape depends on
the data are allocated on demand through an ``IOutputAllocator``. Its ``run(None, feed)`` mirrors
onnxruntime, so :class:`TrtSamPredictor` is the shared :class:`ExportedSamPredictor` over two such runners.
Engines are described by their sidecar ``<engine>.json`` (model facts and the encoder/decoder pair).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import EdgeSamError, InputError
from edgesam_core.inference.exported_predictor import ExportedSamPredictor


def engine_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar ``<engine>.json`` of an engine (empty dict when absent)."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except ValueError as exc:
        raise InputError(f"{sidecar.name} is not valid JSON: {exc}") from exc


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "int32": torch.int32, "int64": torch.int64,
             "bool": torch.bool, "int8": torch.int8, "uint8": torch.uint8, "bfloat16": torch.bfloat16}
    for name, torch_dtype in table.items():
        if hasattr(trt, name) and dtype == getattr(trt, name):
            return torch_dtype
    raise EdgeSamError(f"TensorRT tensor type {dtype} has no torch equivalent")


def _make_output_allocator(trt: Any, device: Any) -> Any:
    """An ``IOutputAllocator`` that hands TensorRT torch-owned device memory for data-dependent outputs."""
    import torch

    class TorchOutputAllocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            super().__init__()
            self.buffer: torch.Tensor | None = None
            self.shape: tuple[int, ...] | None = None

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            if self.buffer is None or self.buffer.numel() < size:
                self.buffer = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
            return self.buffer.data_ptr()

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int,
                                    stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shape = tuple(int(d) for d in shape)

    return TorchOutputAllocator()


class _Tensor:
    def __init__(self, name: str, shape: list[int]) -> None:
        self.name, self.shape = name, shape


class TrtRunner:
    """Runs one serialized TensorRT engine on the current CUDA device (onnxruntime-like ``run``).

    Args:
        path: the ``.engine`` file.
        device: CUDA device for the buffers (default ``"cuda"``).

    Raises:
        MissingDependencyError: tensorrt or CUDA missing. EdgeSamError: the engine cannot be deserialized.
    """

    def __init__(self, path: str | Path, device: str = "cuda") -> None:
        import torch

        from edgesam_core.export.tensorrt import require_tensorrt_gpu

        self.trt = trt = require_tensorrt_gpu()
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"TensorRT engine not found: {self.path}")
        self.device = torch.device(device)
        self.meta = engine_meta(self.path)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EdgeSamError(f"TensorRT {trt.__version__} could not load {self.path.name}: engines only run with "
                               "the TensorRT version and GPU they were built with; rebuild it with build-trt")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._inputs = [_Tensor(n, list(self.engine.get_tensor_shape(n))) for n in names if is_input[n]]
        outputs = [n for n in names if not is_input[n]]
        order = self.meta.get("output_order") or outputs
        self._outputs = [_Tensor(n, list(self.engine.get_tensor_shape(n))) for n in order if n in outputs]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.stream = torch.cuda.Stream(device=self.device)

    def get_inputs(self) -> list[_Tensor]:
        """Engine inputs (names as in the ONNX graph; -1 for dynamic dims)."""
        return list(self._inputs)

    def get_outputs(self) -> list[_Tensor]:
        """Engine outputs in ONNX order."""
        return list(self._outputs)

    def run(self, output_names: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Copy ``feed`` to the GPU, execute, and return the outputs as float32 numpy arrays."""
        import torch

        keep: list[torch.Tensor] = []
        # Input copies, output allocations and the engine run are all issued on the engine's stream, so the
        # engine never reads an input another stream is still copying (it ran on its own non-blocking stream
        # while torch copied on the default one: a race).
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            self.stream.wait_stream(torch.cuda.default_stream(self.device))
            for tensor in self._inputs:
                if tensor.name not in feed:
                    raise InputError(f"missing input '{tensor.name}' for {self.path.name}")
                value = torch.as_tensor(np.ascontiguousarray(feed[tensor.name])).to(
                    self.device, self._dtypes[tensor.name]).contiguous()
                keep.append(value)
                if not self.context.set_input_shape(tensor.name, tuple(value.shape)):
                    raise InputError(f"input '{tensor.name}' shape {tuple(value.shape)} is outside the engine's "
                                     "optimisation profile; rebuild with a wider --min/--max-points")
                self.context.set_tensor_address(tensor.name, value.data_ptr())
            results: dict[str, Any] = {}
            for tensor in self._outputs:
                shape = tuple(self.context.get_tensor_shape(tensor.name))
                if any(d < 0 for d in shape):
                    allocator = _make_output_allocator(self.trt, self.device)
                    self.context.set_output_allocator(tensor.name, allocator)
                    results[tensor.name] = allocator
                else:
                    out = torch.empty(shape, dtype=self._dtypes[tensor.name], device=self.device)
                    self.context.set_tensor_address(tensor.name, out.data_ptr())
                    results[tensor.name] = out
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise EdgeSamError(f"TensorRT execution of {self.path.name} failed")
            self.stream.synchronize()
        wanted = output_names or [t.name for t in self._outputs]
        return [self._to_numpy(name, results[name]) for name in wanted]

    def _to_numpy(self, name: str, result: Any) -> np.ndarray:
        import torch

        if isinstance(result, torch.Tensor):
            tensor = result
        else:  # an output allocator: reinterpret its bytes with the reported shape
            shape = result.shape or ()
            count = int(np.prod(shape)) if shape else 1
            dtype = self._dtypes[name]
            itemsize = torch.empty((), dtype=dtype).element_size()
            tensor = result.buffer[: count * itemsize].view(dtype).reshape(shape)
        return tensor.float().cpu().numpy()


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """Encoder and decoder engines of the pair ``path`` belongs to (from its sidecar or the file names)."""
    path = Path(path)
    pair = engine_meta(path).get("pair") or {}
    if "encoder" in pair and "decoder" in pair:
        return path.with_name(pair["encoder"]), path.with_name(pair["decoder"])
    for role, other in (("_encoder", "_decoder"), ("_decoder", "_encoder")):
        if role in path.name:
            sibling = path.with_name(path.name.replace(role, other, 1))
            return (path, sibling) if role == "_encoder" else (sibling, path)
    raise InputError(f"{path.name}: cannot find its encoder/decoder pair (expected '<name>_encoder_<precision>"
                     ".engine' with its '.json' sidecar, as written by 'edgesam build-trt')")


class TrtSamPredictor(ExportedSamPredictor):
    """:class:`ExportedSamPredictor` over TensorRT runners of an encoder/decoder engine pair.

    Args:
        encoder_path: the encoder engine (or the decoder: the pair is found through the sidecar).
        decoder_path: explicit decoder engine.
        device: CUDA device for the I/O buffers.

    ``mask_input`` and ``return_sam_masks`` are rejected as for ONNX (the decoder graph has neither).
    """

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path | None = None,
                 device: str = "cuda") -> None:
        if decoder_path is None:
            encoder_path, decoder_path = pair_paths(encoder_path)
        encoder, decoder = TrtRunner(encoder_path, device), TrtRunner(decoder_path, device)
        img_size = encoder.meta.get("img_size") or encoder.get_inputs()[0].shape[-1]
        is_hq = bool(encoder.meta.get("is_hq", len(encoder.get_outputs()) == 4))
        super().__init__(encoder, decoder, int(img_size), is_hq, paths=(Path(encoder_path), Path(decoder_path)))


def load_trt_predictor(path: str | Path, model: str | None = None, device: str = "cuda",
                       **options: Any) -> TrtSamPredictor:
    """``load_predictor`` factory for ``.engine`` files (encoder or decoder of a built pair).

    ``model`` is ignored (the engines define the model); ``device`` must be a CUDA device (``cpu`` is
    taken to mean the default GPU, since engines cannot run on the CPU).
    """
    target = str(device or "cuda")
    return TrtSamPredictor(path, device=target if target.startswith("cuda") else "cuda")
