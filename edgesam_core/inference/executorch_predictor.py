"""ExecuTorch runner for ``edgesam export-executorch`` programs (``.pte``, XNNPACK delegate).

Each ``X.pte`` has a JSON sidecar ``X.pte.json`` naming the program's inputs and outputs (ONNX names), its role
and its pair. The decoder program takes SAM's packed prompt layout (``point_coords`` [1, N, 2],
``point_labels`` [1, N], N dynamic up to ``max_points``); :class:`ExecutorchRunner` packs the upstream
six-input feed the predictor builds, so it is exactly the prompt PyTorch embeds (no padding to a size).

The predictor is :class:`~edgesam_core.inference.exported_predictor.ExportedSamPredictor`; this module only
opens the runtime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import InputError
from edgesam_core.inference.exported_predictor import ExportedSamPredictor, pack_contract_feed

SIDECAR_FORMAT = "edgesam-executorch-sidecar/1"


def pte_sidecar_path(path: str | Path) -> Path:
    """``X.pte`` -> ``X.pte.json`` (``export-onnx`` owns ``X.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_pte_sidecar(path: str | Path) -> dict[str, Any]:
    """The sidecar ``X.pte.json`` of ``X.pte``.

    Raises:
        InputError: missing, unreadable or not an ExecuTorch sidecar.
    """
    path = Path(path)
    sidecar = pte_sidecar_path(path)
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{sidecar.name} not found next to {path.name}: keep the sidecar written by "
                         "'edgesam export-executorch' beside the program") from exc
    except ValueError as exc:
        raise InputError(f"{sidecar.name} is not valid JSON: {exc}") from exc
    if meta.get("format") != SIDECAR_FORMAT:
        raise InputError(f"{sidecar.name} is not an ExecuTorch sidecar (format {meta.get('format')!r}); "
                         "export again with 'edgesam export-executorch'")
    return meta


def set_threads(threads: int | None) -> None:
    """Size ExecuTorch's (process-wide) XNNPACK thread pool."""
    if threads:
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != int(threads):
            portable_lib._unsafe_reset_threadpool(int(threads))


class _Tensor:
    def __init__(self, name: str, shape: list[Any], dtype: str = "float32") -> None:
        self.name, self.shape, self.type = name, shape, dtype


class ExecutorchRunner:
    """Runs one ``.pte`` program with ONNX names (onnxruntime-like ``run``).

    Args:
        path: the ``.pte`` file (its ``.json`` sidecar beside it).
        threads: XNNPACK threads (process-wide; None keeps the current pool).

    Raises:
        InputError: missing file or sidecar, or a file ExecuTorch cannot load.
        MissingDependencyError: executorch is not installed.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        from edgesam_core import deps

        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"ExecuTorch program not found: {self.path}")
        self.meta = read_pte_sidecar(self.path)
        deps.require("executorch", extra="executorch", purpose="running ExecuTorch programs")
        from executorch.runtime import Runtime

        set_threads(threads)
        try:
            self._method = Runtime.get().load_program(self.path).load_method("forward")
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"ExecuTorch cannot load {self.path.name} ({exc}); export it again") from exc
        io = self.meta["io"]
        self._inputs = [_Tensor(t["name"], t["shape"], t.get("dtype", "float32")) for t in io["inputs"]]
        self._outputs = [_Tensor(t["name"], t["shape"], t.get("dtype", "float32")) for t in io["outputs"]]
        #: The decoder's largest prompt (points + padding point or box corners); None for the encoder.
        self.max_points: int | None = self.meta.get("max_points")

    def get_inputs(self) -> list[_Tensor]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Tensor]:
        return list(self._outputs)

    def prepare_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """An upstream-contract decoder feed (flags, box) -> the packed ``point_coords`` / ``point_labels``."""
        if self.max_points is None or "point_valid" not in feed:
            return dict(feed)
        return pack_contract_feed(dict(feed), self.max_points, self.path.name)

    def run(self, output_names: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the program; a decoder ``feed`` may use the upstream contract (packed first)."""
        import torch

        feed = self.prepare_feed(feed)
        args = []
        for tensor in self._inputs:
            if tensor.name not in feed:
                raise InputError(f"missing input '{tensor.name}' for {self.path.name}")
            args.append(torch.from_numpy(np.ascontiguousarray(feed[tensor.name], dtype=np.float32)))
        outputs = dict(zip((t.name for t in self._outputs), self._method.execute(args)))
        return [outputs[name].numpy() for name in (output_names or [t.name for t in self._outputs])]


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """Encoder and decoder ``.pte`` files of the pair that ``path`` (either one) belongs to."""
    path = Path(path)
    pair = read_pte_sidecar(path).get("pair") or {}
    if "encoder" not in pair or "decoder" not in pair:
        raise InputError(f"{pte_sidecar_path(path).name} does not name its encoder/decoder pair; export again")
    return path.with_name(pair["encoder"]), path.with_name(pair["decoder"])


class ExecutorchSamPredictor(ExportedSamPredictor):
    """:class:`ExportedSamPredictor` over the ExecuTorch runners of an exported ``.pte`` pair.

    Args:
        encoder_path: the encoder ``.pte`` (or the decoder: the pair is read from the sidecar).
        decoder_path: explicit decoder file (e.g. the fp32 decoder beside an int8 encoder).
        threads: XNNPACK threads.
    """

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path | None = None,
                 threads: int | None = None) -> None:
        if decoder_path is None:
            encoder_path, decoder_path = pair_paths(encoder_path)
        encoder, decoder = ExecutorchRunner(encoder_path, threads), ExecutorchRunner(decoder_path, threads)
        if encoder.meta.get("role") != "encoder" or decoder.meta.get("role") != "decoder":
            raise InputError(f"{Path(encoder_path).name} / {Path(decoder_path).name} are not an encoder and a "
                             "decoder program")
        super().__init__(encoder, decoder, int(encoder.meta["img_size"]), bool(encoder.meta.get("is_hq", False)),
                         packs_prompts=True,
                         paths=(Path(encoder_path), Path(decoder_path)))


def load_executorch_predictor(path: str | Path, model: str | None = None, device: str = "cpu",
                              **options: Any) -> ExecutorchSamPredictor:
    """``load_predictor`` factory for ``.pte`` files (encoder or decoder of an exported pair).

    ``model`` is ignored (the files define the model); XNNPACK runs on the CPU, so ``device`` must be cpu.
    """
    if not str(device or "cpu").startswith("cpu"):
        raise InputError(f"ExecuTorch (XNNPACK) programs run on the CPU; got device {device!r}: use --device cpu")
    return ExecutorchSamPredictor(path, threads=options.get("threads"))
