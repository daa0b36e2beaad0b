"""``edgesam export-executorch``: the encoder and decoder as ExecuTorch programs (``.pte``, XNNPACK delegate).

Both graphs go through ``torch.export`` and ``to_edge_transform_and_lower`` with the XNNPACK partitioner.
The encoder is fp32 or int8 (PT2E: XNNPACK's symmetric quantizer, per-channel weights, calibrated on the
user's images); the decoder stays fp32 and takes SAM's packed prompt layout with a dynamic number of points
(see :class:`~edgesam_core.export.wrappers.PackedPromptDecoderForExport`).

Every fp32 program is judged in ExecuTorch's runtime by the noise-floor rule of ``export-onnx`` against the
unmodified model in float64; an int8 encoder is judged by its masks: IoU against fp32 PyTorch on held-out
images for point and box prompts, and the embedding's cosine similarity. Files appear under their final
names only after they passed.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core.errors import ConfigError, ExportParityError, InputError
from edgesam_core.inference.executorch_predictor import SIDECAR_FORMAT, pte_sidecar_path
from edgesam_core.models.inference_form import spell_out_tanh_gelu, to_inference_form
from edgesam_core.progress import NullProgress, Progress

#: fp32 programs pass at this absolute term of the noise-floor rule (as ``export-onnx``).
DEFAULT_TOLERANCE = 1e-5


@dataclass
class ExecutorchOptions:
    """What ``export_executorch`` writes (mirrors ``edgesam export-executorch``)."""

    out_dir: Path = Path(".")
    name: str | None = None
    int8: bool = False
    calib_dir: Path | None = None
    calib_count: int = 16
    eval_count: int = 4
    prompts_per_image: int = 4
    min_iou: float = 0.5
    max_points: int = 16
    tolerance: float = DEFAULT_TOLERANCE
    threads: int = 2
    seed: int = 0

    def validate(self) -> None:
        """Raise ConfigError for unusable options (all problems at once)."""
        problems = []
        if self.int8 and self.calib_dir is None:
            problems.append("--int8 needs calibration images: pass --calib DIR")
        if self.calib_dir is not None and not Path(self.calib_dir).is_dir():
            problems.append(f"--calib {self.calib_dir} is not a folder")
        if self.max_points < 2:
            problems.append(f"--max-points must be >= 2 (a box is two points; got {self.max_points})")
        if not 0.0 <= self.min_iou <= 1.0:
            problems.append(f"--min-iou must lie in [0, 1] (got {self.min_iou})")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class ExecutorchResult:
    """Written programs by role, their sidecars, the fp32 parity report and the int8 fidelity (if any)."""

    files: dict[str, Path]
    sidecars: dict[str, Path]
    parity: Any
    int8: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def require_executorch() -> None:
    """Import executorch or raise MissingDependencyError naming the extra."""
    from edgesam_core import deps

    deps.require("executorch", extra="executorch", purpose="exporting ExecuTorch programs")


def lower_to_xnnpack(module: Any, args: tuple, dynamic_shapes: Any = None) -> bytes:
    """``torch.export`` ``module`` on ``args`` and lower it with the XNNPACK partitioner -> ``.pte`` bytes."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)
    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def quantize_int8(module: Any, example: tuple, calibration: list[tuple]) -> Any:
    """PT2E int8 of ``module``: XNNPACK's symmetric quantizer, per-channel weights, observers run on
    ``calibration`` inputs. Returns the converted (quantize/dequantize) module, ready to lower."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = torch.export.export(module, example, strict=False).module()
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for inputs in calibration:
            prepared(*inputs)
    return convert_pt2e(prepared)


def _decoder_example(model: Any) -> tuple:
    import torch

    dense_pe = model.prompt_encoder.get_dense_pe()
    embedding = torch.randn(1, *dense_pe.shape[1:])
    s = float(model.img_size)
    coords = torch.tensor([[[0.3 * s, 0.4 * s], [0.6 * s, 0.5 * s], [0.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, -1.0]])
    return embedding, coords, labels


def _io(model: Any, role: str, max_points: int) -> dict[str, list[dict[str, Any]]]:
    from edgesam_core.export.wrappers import HQ_INTERM_NAMES

    c, g = int(model.prompt_encoder.embed_dim), int(model.prompt_encoder.get_dense_pe().shape[-1])
    s = int(model.img_size)
    hq = [{"name": n, "shape": list(shape)} for n, shape in zip(HQ_INTERM_NAMES, _hq_shapes(model))]
    if role == "encoder":
        outs = [{"name": "image_embeddings", "shape": [1, c, g, g]}]
        return {"inputs": [{"name": "image", "shape": [1, 3, s, s]}],
                "outputs": outs + (hq if model.is_hq else [])}
    n = f"num_points (1..{max_points})"
    masks = 1 if model.is_hq else 4
    return {"inputs": [{"name": "image_embeddings", "shape": [1, c, g, g]},
                       {"name": "point_coords", "shape": [1, n, 2]},
                       {"name": "point_labels", "shape": [1, n]}] + (hq if model.is_hq else []),
            "outputs": [{"name": "scores", "shape": [1, masks]},
                        {"name": "masks", "shape": [1, masks, 4 * g, 4 * g]}]}


def _hq_shapes(model: Any) -> list[tuple[int, ...]]:
    if not model.is_hq:
        return []
    import torch

    with torch.no_grad():
        _, interm = model.encode_image(torch.zeros(1, 3, model.img_size, model.img_size))
    return [tuple(t.shape) for t in interm]


def _sidecar(role: str, path: Path, pair: dict[str, str], model: Any, checkpoint: Path | None,
             opts: ExecutorchOptions, precision: str, check: dict[str, Any]) -> dict[str, Any]:
    import importlib.metadata as md

    from edgesam_core.export.sidecar import library_versions, sha256_file

    versions = library_versions()
    for dist in ("executorch", "torchao"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return {
        "format": SIDECAR_FORMAT,
        "role": role,
        "file": path.name,
        "pair": pair,
        "model_type": model.variant,
        "is_hq": bool(model.is_hq),
        "img_size": int(model.img_size),
        "precision": precision,
        "delegate": "XnnpackPartitioner",
        **({"max_points": opts.max_points} if role == "decoder" else {}),
        "io": _io(model, role, opts.max_points),
        "checkpoint": checkpoint.name if checkpoint else None,
        "checkpoint_sha256": sha256_file(checkpoint) if checkpoint else None,
        "check": check,
        "versions": versions,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _images(calib_dir: Path, count: int) -> list[np.ndarray]:
    from edgesam_core.inference.image_io import list_images, load_image

    paths = list_images(calib_dir)[:count]
    if not paths:
        raise InputError(f"No readable image in {calib_dir}")
    return [load_image(p) for p in paths]


def export_executorch(checkpoint: str | Path | None, model_type: str | None, opts: ExecutorchOptions,
                      model: Any | None = None, progress: Progress | None = None) -> ExecutorchResult:
    """Export, check and write the encoder/decoder ``.pte`` pair (int8 encoder with ``opts.int8``).

    Args:
        checkpoint: weights file (None when ``model`` is given).
        model_type: the variant (recognised from the checkpoint when None).
        opts: export options.
        model: an already built ``Sam`` in eval mode (tests pass random-weight models).
        progress: progress reporter.

    Raises:
        ExportParityError: a program failed its check (nothing is left under the final names).
        ConfigError / InputError: bad options or inputs. MissingDependencyError: executorch missing.
    """
    import torch
    from torch.export import Dim

    from edgesam_core.export.onnx_export import check_parity, prepare_image
    from edgesam_core.export.parity import synthetic_image
    from edgesam_core.export.sidecar import atomic_write_json
    from edgesam_core.export.wrappers import EncoderForExport, PackedPromptDecoderForExport
    from edgesam_core.inference.executorch_predictor import ExecutorchRunner, ExecutorchSamPredictor

    opts.validate()
    require_executorch()
    progress = progress or NullProgress()
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if model is None:
        if checkpoint is None or not checkpoint.is_file():
            raise InputError(f"Checkpoint not found: {checkpoint}")
        from edgesam_core.inference.artifact_loader import load_torch_predictor

        model = load_torch_predictor(checkpoint, model=model_type, fast=False).model
    model = model.eval()
    stem = opts.name or (checkpoint.stem if checkpoint else model.variant)
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = "int8" if opts.int8 else "fp32"
    files = {"encoder": out_dir / f"{stem}_encoder{'_int8' if opts.int8 else ''}.pte",
             "decoder": out_dir / f"{stem}_decoder.pte"}
    staged = {role: path.with_name(f".{path.name}.partial") for role, path in files.items()}
    notes: list[str] = []

    task = progress.add_task("Exporting to ExecuTorch", total=4)
    # The exported form: RepViT re-parameterised, neck folded, the upsampling as matrix products (exact
    # rewrites, checked in float64 by export-onnx's tests), tanh-GELU spelled out; the decoder as written.
    form = copy.deepcopy(model)
    to_inference_form(form, for_export=True, decoder_rewrites=False)
    if spell_out_tanh_gelu(form):
        notes.append("GELU(approximate='tanh') exported as its formula: XNNPACK's GELU is the exact one")
    image = synthetic_image()
    x = prepare_image(model, image)
    int8_report: dict[str, Any] | None = None
    try:
        with torch.no_grad():
            # One run first: the matrix-product upsampling builds its matrices (with F.interpolate) on first
            # use; exported after that, they are constants instead of a bicubic kernel in the program.
            features = form.encode_image(x)
            encoder = EncoderForExport(form).eval()
            if opts.int8:
                progress.update(task, description="Calibrating the int8 encoder")
                from edgesam_core.export.tflite import calibration_images

                calib = calibration_images(Path(opts.calib_dir), int(model.img_size), opts.calib_count)
                encoder = quantize_int8(encoder, (x,), [(torch.from_numpy(c[None]),) for c in calib])
                notes.append(f"int8 encoder calibrated on {len(calib)} image(s) from {opts.calib_dir}")
            staged["encoder"].write_bytes(lower_to_xnnpack(encoder, (x,)))
            progress.advance(task)
            progress.update(task, description="Lowering the decoder")
            points = Dim("num_points", min=1, max=opts.max_points)
            example = _decoder_example(model)
            interm = tuple(features[1]) if model.is_hq else ()
            # (torch.export sees the HQ features, forward's *interm, as one tuple input.)
            shapes = ({}, {1: points}, {1: points}) + ((tuple({} for _ in interm),) if interm else ())
            staged["decoder"].write_bytes(lower_to_xnnpack(PackedPromptDecoderForExport(form, False).eval(),
                                                           (*example, *interm), shapes))
            progress.advance(task)

        progress.update(task, description="Checking in ExecuTorch")
        open_runner = lambda path: ExecutorchRunner(path, opts.threads)  # noqa: E731
        graphs = {"decoder": staged["decoder"]} if opts.int8 else dict(staged)
        # The packed-prompt decoder takes the same feeds as the ONNX contract decoder (the runner packs them).
        staged_pair = {role: path.name for role, path in staged.items()}
        for role, path in staged.items():
            atomic_write_json(pte_sidecar_path(path), _sidecar(role, path, staged_pair, model, None, opts,
                                                               precision, {"pending": True}))
        report = check_parity(model, graphs, False, opts.tolerance, image=image, open_runner=open_runner)
        progress.advance(task)
        if not report.passed:
            raise ExportParityError(f"ExecuTorch program is farther from the float64 model than fp32 noise allows: "
                                    f"{report.describe(report.worst)}")
        if opts.int8:
            progress.update(task, description="Measuring int8 fidelity")
            from edgesam_core.export.quantize import int8_fidelity
            from edgesam_core.inference.predictor import SamPredictor

            held = _images(Path(opts.calib_dir), opts.calib_count + opts.eval_count)[opts.calib_count:]
            if not held:
                held = [image]
                notes.append("no held-out image beyond the calibration set: fidelity measured on a synthetic image")
            reference = SamPredictor(copy.deepcopy(model))
            candidate = ExecutorchSamPredictor(staged["encoder"], staged["decoder"], threads=opts.threads)
            int8_report = int8_fidelity(reference, candidate, held, opts.prompts_per_image, opts.seed)
            int8_report["min_iou"] = opts.min_iou
            worst = min(int8_report["mask_iou"]["point"]["mean"], int8_report["mask_iou"]["box"]["mean"])
            if int8_report["embedding_cosine"].get("non_finite"):
                worst = 0.0  # a NaN embedding is a failed quantisation whatever the masks say
            int8_report["passed"] = bool(worst >= opts.min_iou)
            if not int8_report["passed"]:
                raise ExportParityError(f"int8 encoder masks agree with fp32 PyTorch at mean IoU {worst:.3f} < "
                                        f"--min-iou {opts.min_iou:g}; calibrate on more images like yours "
                                        "or use the fp32 program")
        progress.advance(task)
        pair = {"encoder": files["encoder"].name, "decoder": files["decoder"].name}
        sidecars = {}
        for role, path in files.items():
            check = ({"int8_fidelity": int8_report} if role == "encoder" and opts.int8
                     else {"parity": report.for_graph(role).to_dict()})
            staged[role].replace(path)
            sidecars[role] = atomic_write_json(pte_sidecar_path(path), _sidecar(
                role, path, pair, model, checkpoint, opts, precision if role == "encoder" else "fp32", check))
    finally:
        for path in staged.values():
            for leftover in (path, pte_sidecar_path(path)):
                if leftover.exists():
                    leftover.unlink()
        progress.finish(task)
    return ExecutorchResult(files, sidecars, report, int8_report, notes)
