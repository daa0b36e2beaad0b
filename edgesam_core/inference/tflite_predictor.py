"""``TfliteSamPredictor``: the ``SamPredictor`` API on ``edgesam convert-tflite`` artifacts (LiteRT).

Each ``.tflite`` file has a JSON sidecar (``<file>.tflite.json``) that names its ONNX twin's inputs and
outputs, their ONNX (NCHW) shapes and the layout the TFLite tensor actually uses: onnx2tf turns most 4-D
tensors into NHWC, so :class:`TfliteRunner` transposes on the way in and out and callers always see ONNX
names and NCHW arrays. The decoder was converted with a fixed prompt layout of ``num_points`` points, so
every prompt is packed into that layout (box = two corner points labelled 2/3, padding label -1).

The predictor is :class:`~edgesam_core.inference.exported_predictor.ExportedSamPredictor` (shared by every
exported runtime); this module only provides the LiteRT runner.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import InputError
from edgesam_core.inference.exported_predictor import ExportedSamPredictor


def sidecar_for(path: str | Path) -> Path:
    """``X.tflite`` -> ``X.tflite.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of an artifact.

    Raises:
        InputError: missing or unreadable sidecar.
    """
    sidecar = sidecar_for(path)
    try:
        return json.loads(sidecar.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"{sidecar.name} not found next to {Path(path).name}: keep the sidecar written by "
                         "'edgesam convert-tflite' beside the model") from exc
    except ValueError as exc:
        raise InputError(f"{sidecar.name} is not valid JSON: {exc}") from exc


def make_interpreter(path: str | Path, threads: int | None = None) -> Any:
    """A LiteRT interpreter (``ai_edge_litert``), falling back to ``tf.lite.Interpreter``.

    Raises:
        MissingDependencyError: neither package is installed.
    """
    from edgesam_core import deps

    kwargs = {"model_path": str(path)}
    if threads:
        kwargs["num_threads"] = int(threads)
    if deps.available("ai_edge_litert.interpreter"):
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(**kwargs)
    tf = deps.require("tensorflow", extra="tflite", purpose="running TFLite models")
    return tf.lite.Interpreter(**kwargs)


class _Tensor:
    def __init__(self, name: str, shape: list[int], layout: str, dtype: str = "float32") -> None:
        self.name, self.shape, self.layout, self.type = name, shape, layout, dtype


def _to_tflite(array: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 2, 3, 1)) if layout == "nhwc" else array


def _from_tflite(array: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(array.transpose(0, 3, 1, 2)) if layout == "nhwc" else array


def _output_order(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # onnx2tf names the outputs Identity, Identity_1, ... (quantized files: StatefulPartitionedCall:0, :1,
    # ...) in ONNX output order.
    def key(d: dict[str, Any]) -> int:
        match = re.search(r"[_:](\d+)$", d["name"])
        return int(match.group(1)) if match else 0

    return sorted(details, key=key)


def input_name(detail_name: str) -> str:
    """ONNX input name of a TFLite input tensor (``serving_default_image:0`` -> ``image``)."""
    name = detail_name.removeprefix("serving_default_")
    return re.sub(r":\d+$", "", name)


class TfliteRunner:
    """Runs one converted graph with ONNX names and NCHW arrays (onnxruntime-like ``run``).

    Args:
        path: the ``.tflite`` file (its ``.tflite.json`` sidecar must sit beside it).
        threads: interpreter threads (None: LiteRT default).
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"TFLite file not found: {self.path}")
        self.meta = read_sidecar(self.path)
        self.interpreter = make_interpreter(self.path, threads)
        self.interpreter.allocate_tensors()
        io = self.meta.get("io", {})
        self._inputs = [_Tensor(t["name"], t["onnx_shape"], t["layout"]) for t in io.get("inputs", [])]
        self._outputs = [_Tensor(t["name"], t["onnx_shape"], t["layout"]) for t in io.get("outputs", [])]
        by_name = {input_name(d["name"]): d for d in self.interpreter.get_input_details()}
        missing = [t.name for t in self._inputs if t.name not in by_name]
        if missing:
            raise InputError(f"{self.path.name} has no input(s) {', '.join(missing)}; does its sidecar belong to it?")
        self._input_index = {t.name: by_name[t.name]["index"] for t in self._inputs}
        self._input_dtype = {t.name: by_name[t.name]["dtype"] for t in self._inputs}
        outputs = _output_order(self.interpreter.get_output_details())
        if len(outputs) != len(self._outputs):
            raise InputError(f"{self.path.name} has {len(outputs)} outputs but its sidecar lists {len(self._outputs)}")
        self._output_index = {t.name: d["index"] for t, d in zip(self._outputs, outputs)}
        #: Static number of decoder points (None for the encoder).
        self.num_points: int | None = self.meta.get("num_points")

    def get_inputs(self) -> list[_Tensor]:
        """Graph inputs with ONNX names and NCHW shapes."""
        return list(self._inputs)

    def get_outputs(self) -> list[_Tensor]:
        """Graph outputs with ONNX names and NCHW shapes."""
        return list(self._outputs)

    def prepare_feed(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pack a general decoder feed into this graph's fixed prompt layout (identity for the encoder)."""
        if self.num_points is None:
            return dict(feed)
        from edgesam_core.export.runtime_pair import pack_static_prompts

        return pack_static_prompts(feed, int(self.num_points))

    def run(self, output_names: list[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph; ``feed`` may carry extra decoder keys (boxes, validity flags), packed first."""
        if self.num_points is not None and "boxes_valid" in feed:
            feed = self.prepare_feed(feed)
        for tensor in self._inputs:
            if tensor.name not in feed:
                raise InputError(f"missing input '{tensor.name}' for {self.path.name}")
            value = np.asarray(feed[tensor.name]).astype(self._input_dtype[tensor.name], copy=False)
            self.interpreter.set_tensor(self._input_index[tensor.name], _to_tflite(value, tensor.layout))
        self.interpreter.invoke()
        wanted = output_names or [t.name for t in self._outputs]
        layouts = {t.name: t.layout for t in self._outputs}
        return [_from_tflite(self.interpreter.get_tensor(self._output_index[name]), layouts[name]).astype(
            np.float32, copy=False) for name in wanted]


def pair_paths(path: str | Path) -> tuple[Path, Path]:
    """Encoder and decoder ``.tflite`` files of the pair that ``path`` (either one) belongs to."""
    path = Path(path)
    meta = read_sidecar(path)
    pair = meta.get("pair") or {}
    if "encoder" not in pair or "decoder" not in pair:
        raise InputError(f"{sidecar_for(path).name} does not name its encoder/decoder pair; reconvert the model")
    return path.with_name(pair["encoder"]), path.with_name(pair["decoder"])


class TfliteSamPredictor(ExportedSamPredictor):
    """:class:`ExportedSamPredictor` over LiteRT runners of a converted ``.tflite`` encoder/decoder pair.

    Args:
        encoder_path: the encoder ``.tflite`` (or the decoder: the pair is read from the sidecar).
        decoder_path: explicit decoder file.
        threads: interpreter threads.

    Prompts may hold at most ``num_points`` points, a box counting as two (see the sidecar);
    ``mask_input`` and ``return_sam_masks`` are rejected as for ONNX.
    """

    def __init__(self, encoder_path: str | Path, decoder_path: str | Path | None = None,
                 threads: int | None = None) -> None:
        if decoder_path is None:
            encoder_path, decoder_path = pair_paths(encoder_path)
        encoder, decoder = TfliteRunner(encoder_path, threads), TfliteRunner(decoder_path, threads)
        self.num_points = decoder.num_points
        super().__init__(encoder, decoder, int(encoder.meta["img_size"]), bool(encoder.meta.get("is_hq", False)),
                         packs_prompts=True,
                         paths=(Path(encoder_path), Path(decoder_path)))


def load_tflite_predictor(path: str | Path, model: str | None = None, device: str = "cpu",
                          **options: Any) -> TfliteSamPredictor:
    """``load_predictor`` factory for ``.tflite`` files (encoder or decoder of a converted pair).

    ``model`` is ignored (the files define the model); LiteRT runs on the CPU, so ``device`` must be cpu.
    """
    if not str(device or "cpu").startswith("cpu"):
        raise InputError(f"TFLite models run on the CPU here; got device {device!r}: use --device cpu")
    return TfliteSamPredictor(path, threads=options.get("threads"))
