"""``edgesam export-coreml``: the encoder and decoder as Core ML ML Programs (``.mlpackage``).

Converted with coremltools from the TorchScript trace of the same export form as ``export-executorch``:
the encoder takes ``image`` [1, 3, S, S] and returns ``image_embeddings`` (+ the three HQ features); the
decoder takes SAM's packed prompt (``point_coords`` [1, N, 2], ``point_labels`` [1, N], N in 1..max_points)
and returns ``scores`` and low-res ``masks``. Inputs and outputs stay float32 (the ONNX contract); the
compute precision is fp16 (Apple's default, what the Neural Engine runs) or fp32, and ``--w8`` stores the
weights as int8 (linear symmetric, per channel).

Conversion runs anywhere coremltools installs; running a model needs macOS, so the numeric check against
the float64 model (:class:`CoremlRunner` under ``check_parity``) runs only there, in the tests.
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import ConfigError, InputError
from edgesam_core.progress import NullProgress, Progress

SIDECAR_FORMAT = "edgesam-coreml-sidecar/1"
PRECISIONS = ("fp16", "fp32")


@dataclass
class CoremlOptions:
    """What ``export_coreml`` writes (mirrors ``edgesam export-coreml``)."""

    out_dir: Path = Path(".")
    name: str | None = None
    precision: str = "fp16"
    w8: bool = False
    max_points: int = 16

    def validate(self) -> None:
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"--precision must be one of {', '.join(PRECISIONS)} (got {self.precision})")
        if self.max_points < 2:
            problems.append(f"--max-points must be >= 2 (a box is two points; got {self.max_points})")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class CoremlResult:
    """Written packages by role and their sidecars."""

    files: dict[str, Path]
    sidecars: dict[str, Path]
    notes: list[str] = field(default_factory=list)


def spec_io(mlmodel: Any) -> dict[str, list[dict[str, Any]]]:
    """Inputs/outputs of a Core ML model's spec as ``{name, dtype, shape}`` (a range dim as ``"lo..hi"``)."""
    from coremltools.proto import FeatureTypes_pb2 as ft

    dtypes = {ft.ArrayFeatureType.FLOAT32: "float32", ft.ArrayFeatureType.FLOAT16: "float16",
              ft.ArrayFeatureType.INT32: "int32", ft.ArrayFeatureType.DOUBLE: "float64"}

    def describe(feature: Any) -> dict[str, Any]:
        array = feature.type.multiArrayType
        shape: list[Any] = list(array.shape)
        ranges = array.shapeRange.sizeRanges
        if len(ranges):
            shape = [r.lowerBound if r.lowerBound == r.upperBound else f"{r.lowerBound}..{r.upperBound}"
                     for r in ranges]
        return {"name": feature.name, "dtype": dtypes.get(array.dataType, str(array.dataType)), "shape": shape}

    description = mlmodel.get_spec().description
    return {"inputs": [describe(f) for f in description.input], "outputs": [describe(f) for f in description.output]}


def _convert(module: Any, example: tuple, inputs: list[Any], outputs: list[str], opts: CoremlOptions) -> Any:
    import coremltools as ct
    import torch

    traced = torch.jit.trace(module, example, check_trace=False)
    precision = ct.precision.FLOAT16 if opts.precision == "fp16" else ct.precision.FLOAT32
    mlmodel = ct.convert(traced, inputs=inputs, outputs=[ct.TensorType(name=n, dtype=np.float32) for n in outputs],
                         convert_to="mlprogram", compute_precision=precision,
                         minimum_deployment_target=ct.target.iOS16)
    if opts.w8:
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

        config = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric"))
        mlmodel = linear_quantize_weights(mlmodel, config=config)
    return mlmodel


def export_coreml(checkpoint: str | Path | None, model_type: str | None, opts: CoremlOptions,
                  model: Any | None = None, progress: Progress | None = None) -> CoremlResult:
    """Convert and write the encoder/decoder ``.mlpackage`` pair (each with a ``.mlpackage.json`` sidecar).

    Raises:
        ConfigError / InputError: bad options or inputs. MissingDependencyError: coremltools missing.
    """
    import torch

    from edgesam_core import deps
    from edgesam_core.export.executorch_export import _decoder_example
    from edgesam_core.export.onnx_export import prepare_image
    from edgesam_core.export.parity import synthetic_image
    from edgesam_core.export.sidecar import atomic_write_json, library_versions, sha256_file
    from edgesam_core.export.wrappers import (
        HQ_INTERM_NAMES,
        EncoderForExport,
        PackedPromptDecoderForExport,
        encoder_output_names,
    )
    from edgesam_core.models.inference_form import to_inference_form

    opts.validate()
    ct = deps.require("coremltools", extra="coreml", purpose="Core ML export")
    progress = progress or NullProgress()
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if model is None:
        if checkpoint is None or not checkpoint.is_file():
            raise InputError(f"Checkpoint not found: {checkpoint}")
        from edgesam_core.inference.artifact_loader import load_torch_predictor

        model = load_torch_predictor(checkpoint, model=model_type, fast=False).model
    model = model.eval()
    stem = opts.name or (checkpoint.stem if checkpoint else model.variant)
    suffix = f"_{opts.precision}{'_w8' if opts.w8 else ''}"
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {role: out_dir / f"{stem}_{role}{suffix}.mlpackage" for role in ("encoder", "decoder")}
    # Converted under a hidden name (coremltools wants the .mlpackage suffix), renamed once complete.
    staged = {role: path.with_name(f".partial-{path.name}") for role, path in files.items()}
    notes: list[str] = []
    task = progress.add_task("Converting to Core ML", total=2)
    form = copy.deepcopy(model)
    to_inference_form(form, for_export=True, decoder_rewrites=False)
    x = prepare_image(model, synthetic_image())
    s = int(model.img_size)
    try:
        with torch.no_grad():
            features = form.encode_image(x)  # builds the upsampling matrices: constants in the trace
            interm = tuple(features[1]) if model.is_hq else ()
            encoder = _convert(EncoderForExport(form).eval(), (x,),
                               [ct.TensorType(name="image", shape=(1, 3, s, s), dtype=np.float32)],
                               encoder_output_names(model.is_hq), opts)
            _save(encoder, staged["encoder"])
            progress.advance(task)
            example = _decoder_example(model)
            points = ct.RangeDim(lower_bound=1, upper_bound=opts.max_points, default=3)
            inputs = [ct.TensorType(name="image_embeddings", shape=tuple(example[0].shape), dtype=np.float32),
                      ct.TensorType(name="point_coords", shape=(1, points, 2), dtype=np.float32),
                      ct.TensorType(name="point_labels", shape=(1, points), dtype=np.float32)]
            inputs += [ct.TensorType(name=n, shape=tuple(t.shape), dtype=np.float32)
                       for n, t in zip(HQ_INTERM_NAMES, interm)]
            decoder = _convert(PackedPromptDecoderForExport(form, False).eval(), (*example, *interm), inputs,
                               ["scores", "masks"], opts)
            _save(decoder, staged["decoder"])
            progress.advance(task)
        notes.append("Core ML predictions need macOS: converted and the I/O checked here; the numbers are "
                     "checked by tests/export/test_coreml.py on macOS (CoremlRunner)")
        pair = {"encoder": files["encoder"].name, "decoder": files["decoder"].name}
        sidecars = {}
        for role, mlmodel in (("encoder", encoder), ("decoder", decoder)):
            _replace_dir(staged[role], files[role])
            sidecars[role] = atomic_write_json(files[role].with_name(files[role].name + ".json"), {
                "format": SIDECAR_FORMAT, "role": role, "file": files[role].name, "pair": pair,
                "model_type": model.variant, "is_hq": bool(model.is_hq), "img_size": s,
                "compute_precision": opts.precision, "weights": "int8 (linear symmetric)" if opts.w8 else "as computed",
                **({"max_points": opts.max_points} if role == "decoder" else {}),
                "io": spec_io(mlmodel),
                "checkpoint": checkpoint.name if checkpoint else None,
                "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
                "check": {"ran": False, "why": "Core ML predictions need macOS"},
                "versions": {**library_versions(), "coremltools": ct.__version__},
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            })
    finally:
        for path in staged.values():
            shutil.rmtree(path, ignore_errors=True)
        progress.finish(task)
    return CoremlResult(files, sidecars, notes)


def _save(mlmodel: Any, path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    mlmodel.save(str(path))


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the checked package ``src`` to ``dst``, replacing an older package there."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.rename(dst)


class CoremlRunner:
    """A ``.mlpackage`` as an onnxruntime-like runner (``run``), taking the upstream decoder feed too."""

    def __init__(self, path: str | Path) -> None:
        import coremltools as ct

        self.path = Path(path)
        self.model = ct.models.MLModel(str(self.path))
        self.io = spec_io(self.model)

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        from edgesam_core.inference.exported_predictor import pack_contract_feed

        if "point_valid" in feed:
            feed = pack_contract_feed(feed, graph=self.path.name)
        names = [t["name"] for t in self.io["inputs"]]
        outputs = self.model.predict({n: np.asarray(feed[n], np.float32) for n in names})
        return [np.asarray(outputs[n]) for n in (output_names or [t["name"] for t in self.io["outputs"]])]
