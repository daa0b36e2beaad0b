"""PyTorch -> ONNX export of the EdgeSAM encoder and prompt decoder, with a parity check and sidecars.

Exporter choice: ``torch.onnx.export(..., dynamo=False)``, the TorchScript-based tracer. On torch >= 2.9
the default is the dynamo exporter, which rejects the decoder's data-dependent token selection (upstream's
script fails under it) and names dynamic dimensions differently; the tracer reproduces upstream's graph and
I/O contract (``tests/fixtures/reference/onnx_io.md``). ``export_onnx`` passes ``dynamo=False`` explicitly so a
torch upgrade can never switch exporters silently.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesam_core.errors import (
    ConfigError,
    EdgeSamError,
    ExportParityError,
    MissingDependencyError,
)
from edgesam_core.progress import NullProgress, Progress

EXPORTER = "torch.onnx.export(dynamo=False) (TorchScript tracer)"
UPSAMPLE_MODES = ("bicubic", "bilinear")


#: Opset 20 exports tanh-GELU as one ``Gelu`` node, which ONNX Runtime runs ~1.5x faster than the ~9 elementwise
#: nodes of opset 17 (upstream's). The I/O contract is the same at either opset.
DEFAULT_OPSET = 20


@dataclass
class OnnxExportOptions:
    """What to export and how (mirrors ``edgesam export-onnx`` options)."""

    model_type: str = "edge_sam_dyt"
    out_dir: Path | None = None
    name: str | None = None
    opset: int = DEFAULT_OPSET
    upsample_mode: str = "bicubic"
    simplify: bool | None = None
    upsample: bool = False
    encoder: bool = True
    decoder: bool = True
    multi_box: bool = False
    tolerance: float = 1e-5
    fuse: bool = True
    #: ONNX Runtime specific rewrites (matrix-product upsampling, expanded SE gates). Off for graphs that other
    #: converters read (onnx2tf mistranslates them); ``--portable`` also picks opset 17.
    runtime_rewrites: bool = True
    #: Also write the decoder in two stages (``_decoder_image`` once per image, ``_decoder_prompts`` per batch of
    #: prompts), what the ONNX predictor runs when present. Not for HQ models; not with ``--portable``.
    staged_decoder: bool = True


@dataclass
class OnnxExportResult:
    """Written files by role (``encoder``, ``decoder``, ``decoder_multibox``), their sidecars, parity."""

    files: dict[str, Path]
    sidecars: dict[str, Path]
    parity: Any
    notes: list[str] = field(default_factory=list)


#: The two stages of the staged decoder, by role.
STAGE_ROLES = ("decoder_image", "decoder_prompts")


def output_paths(base: Path, multi_box: bool, staged: bool = False) -> dict[str, Path]:
    """``<base>_encoder.onnx`` / ``<base>_decoder.onnx`` (/ ``<base>_decoder_multibox.onnx``, / the staged
    decoder's ``<base>_decoder_image.onnx`` + ``<base>_decoder_prompts.onnx``)."""
    paths = {"encoder": base.with_name(base.name + "_encoder.onnx"),
             "decoder": base.with_name(base.name + "_decoder.onnx")}
    if multi_box:
        paths["decoder_multibox"] = base.with_name(base.name + "_decoder_multibox.onnx")
    if staged:
        for role in STAGE_ROLES:
            paths[role] = base.with_name(f"{base.name}_{role}.onnx")
    return paths


def torch_onnx_export(module: Any, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                      dynamic_axes: dict[str, dict[int, str]], opset: int) -> None:
    """Trace ``module`` to ``path`` with the TorchScript-based exporter (see module docstring)."""
    import torch

    with warnings.catch_warnings():
        # The legacy-exporter deprecation notice and tracer warnings about Python ints are expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)


def _finalize(tmp: Path, dst: Path, simplify: bool | None, notes: list[str], name: str | None = None) -> bool:
    """Check (and optionally simplify) the traced file, then move it into place; returns simplified.

    An onnxsim failure never loses the export: the unsimplified graph is kept and the failure is added
    to ``notes`` (``export_onnx`` turns it into an error at the end when ``--simplify`` was explicit).
    """
    from edgesam_core.deps import available, require

    onnx = require("onnx", purpose="ONNX export")
    try:
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model)
        simplified = False
        if simplify is not False and available("onnxsim"):
            try:
                candidate, ok = require("onnxsim").simplify(model)
                if not ok:
                    raise RuntimeError("onnxsim could not validate the simplified graph")
                onnx.checker.check_model(candidate)
                model, simplified = candidate, True
            except Exception as exc:  # noqa: BLE001 - onnxsim raises many types; the plain graph is kept
                reason = (str(exc).strip().splitlines() or [""])[0][:160]
                notes.append(f"{name or dst.name}: onnxsim failed ({type(exc).__name__}: {reason}); "
                             "kept the unsimplified graph")
        onnx.save(model, str(tmp))
        tmp.replace(dst)
    finally:
        if tmp.exists():
            tmp.unlink()
    return simplified


def _export_encoder(model: Any, image: Any, dst: Path, opset: int, simplify: bool | None,
                    notes: list[str], name: str | None = None) -> bool:
    from edgesam_core.export.wrappers import (
        ENCODER_INPUTS,
        EncoderForExport,
        encoder_output_names,
    )

    tmp = dst.with_name(dst.name + ".tmp")
    torch_onnx_export(EncoderForExport(model).eval(), (image,), tmp, ENCODER_INPUTS,
                      encoder_output_names(model.is_hq), {}, opset)
    return _finalize(tmp, dst, simplify, notes, name)


def _export_decoder_stage(model: Any, embedding: Any, role: str, dst: Path, opts: OnnxExportOptions,
                          notes: list[str], name: str | None = None) -> bool:
    """One stage of the staged decoder (see ``DecoderImageStageForExport`` / ``DecoderPromptStageForExport``)."""
    import torch

    from edgesam_core.export.wrappers import (
        DECODER_OUTPUTS,
        IMAGE_STAGE_OUTPUTS,
        PROMPT_STAGE_INPUTS,
        DecoderImageStageForExport,
        DecoderPromptStageForExport,
    )

    image_stage = DecoderImageStageForExport(model).eval()
    tmp = dst.with_name(dst.name + ".tmp")
    if role == "decoder_image":
        torch_onnx_export(image_stage, (embedding,), tmp, ["image_embeddings"], IMAGE_STAGE_OUTPUTS, {}, opts.opset)
    else:
        s = float(model.img_size)
        coords = torch.tensor([[[0.2 * s, 0.3 * s], [0.5 * s, 0.5 * s], [0.1 * s, 0.1 * s]]]).repeat(2, 1, 1)
        labels = torch.tensor([[1.0, -1.0, 2.0], [0.0, 1.0, 3.0]])
        dyn = {"point_coords": {0: "num_prompts", 1: "num_points"}, "point_labels": {0: "num_prompts", 1: "num_points"},
               "scores": {0: "num_prompts"}, "masks": {0: "num_prompts"}}
        torch_onnx_export(DecoderPromptStageForExport(model).eval(), (*image_stage(embedding), coords, labels), tmp,
                          PROMPT_STAGE_INPUTS, DECODER_OUTPUTS, dyn, opts.opset)
    return _finalize(tmp, dst, opts.simplify, notes, name)


def _export_decoder(model: Any, embedding: Any, interm: list | None, dst: Path, opts: OnnxExportOptions,
                    multi_box: bool, notes: list[str], name: str | None = None) -> bool:
    import torch

    from edgesam_core.export.wrappers import (
        DECODER_OUTPUTS,
        DecoderForExport,
        MultiBoxDecoderForExport,
        decoder_input_names,
    )

    s = float(model.img_size)
    coords = torch.tensor([[[0.2 * s, 0.3 * s], [0.5 * s, 0.5 * s], [0.6 * s, 0.2 * s],
                            [0.1 * s, 0.1 * s], [0.7 * s, 0.8 * s]]])
    labels = torch.tensor([[1.0, 0.0, 1.0, 2.0, 3.0]])
    dyn = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    if multi_box:
        wrapper = MultiBoxDecoderForExport(model, opts.upsample)
        boxes = torch.tensor([[0.1 * s, 0.1 * s, 0.6 * s, 0.7 * s], [0.3 * s, 0.2 * s, 0.9 * s, 0.5 * s]])
        args = (embedding, coords, labels, boxes, torch.tensor([[True]]))
        dyn.update({"boxes": {0: "num_boxes"}, "scores": {0: "num_boxes"}, "masks": {0: "num_boxes"}})
    else:
        wrapper = DecoderForExport(model, opts.upsample)
        boxes = torch.tensor([[[0.1 * s, 0.1 * s, 0.6 * s, 0.7 * s]]])
        args = (embedding, coords, labels, boxes, torch.tensor([[True]]), torch.tensor([[True]]))
    if model.is_hq:
        args = args + tuple(interm)
    tmp = dst.with_name(dst.name + ".tmp")
    torch_onnx_export(wrapper.eval(), args, tmp, decoder_input_names(model.is_hq, multi_box), DECODER_OUTPUTS,
                      dyn, opts.opset)
    return _finalize(tmp, dst, opts.simplify, notes, name)


def reparameterized_copy(model: Any, for_export: bool = True) -> tuple[Any, int]:
    """A copy of ``model`` in its export inference form (see :mod:`edgesam_core.models.inference_form`).

    RepViT BatchNorms and RepVGG branches folded, neck and DyT alphas folded, bicubic upsampling as matrix
    products, squeeze-excite gates expanded, decoder deconvolutions as 1x1 conv + pixel shuffle: smaller,
    faster graphs and fewer activations to calibrate for int8. Returns ``(copy, RepVGGDW blocks folded)``.
    """
    import copy

    from edgesam_core.models.inference_form import to_inference_form

    fused = copy.deepcopy(model).eval()
    done = to_inference_form(fused, for_export=for_export, decoder_rewrites=for_export)
    return fused, done["repvgg_blocks"]


def prepare_image(model: Any, image: Any) -> Any:
    """Resize (long side = img_size, PIL bilinear), normalise and pad an RGB uint8 HWC image: 1x3xSxS."""
    import numpy as np
    import torch

    from edgesam_core.data.transforms import ResizeLongestSide

    resized = ResizeLongestSide(model.img_size).apply_image(image)
    x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).contiguous()[None].float()
    return model.preprocess(x)


#: A float64 re-parameterised encoder must equal the float64 model to this (x max(1, |ref|)): folding is exact.
FOLD_TOLERANCE = 1e-8


def check_parity(model: Any, files: dict[str, Path], upsample: bool, tolerance: float,
                 image: Any | None = None, open_runner: Any = None) -> Any:
    """Run onnxruntime on fixed inputs and judge it against the unmodified model in float64.

    ``open_runner(path)`` opens a graph as an onnxruntime-like runner (default: an ONNX Runtime session);
    other runtimes (ExecuTorch) pass theirs and take the same feeds.

    The noise floor of each output is how far fp32 PyTorch lands from float64 on the same input: the plain
    model, the same with a runtime's few ulps of error injected after every layer (ONNX Runtime's kernels
    round a little differently), and for the encoder also the re-parameterised model (folding BatchNorm
    scales into the weights changes fp32 rounding, not the function; that the fold is exact is checked in
    float64). Returns a ``ParityReport`` (see its rule).
    """
    import copy

    import numpy as np
    import torch

    from edgesam_core.export import parity as P
    from edgesam_core.inference.onnx_predictor import create_session

    open_graph = open_runner or create_session
    report = P.ParityReport(tolerance)
    image = P.synthetic_image() if image is None else image
    x = prepare_image(model, image)
    model64 = copy.deepcopy(model).double().eval()

    def split(features: Any) -> tuple[Any, list | None]:
        return (features[0], list(features[1])) if model.is_hq else (features, None)

    def arrays(features: Any) -> list[np.ndarray]:
        embedding, interm = split(features)
        return [t.detach().numpy() for t in [embedding, *(interm or [])]]

    with torch.no_grad():
        features = model.encode_image(x)
        embedding, interm = split(features)
        if "encoder" in files:
            ref64 = arrays(model64.encode_image(x.double()))
            plain32 = arrays(features)
            fused32 = arrays(reparameterized_copy(model)[0].encode_image(x))
            noisy32 = arrays(P.with_runtime_noise(model).encode_image(x))
            fused64 = arrays(reparameterized_copy(model64)[0].encode_image(x.double()))
    emb_np = embedding.numpy()
    interm_np = [t.numpy() for t in interm] if interm else None
    if "encoder" in files:
        outs = open_graph(files["encoder"]).run(None, {"image": x.numpy()})
        names = ["image_embeddings"] + [f"interm_embeddings_{i}" for i in range(len(interm_np or []))]
        for i, name in enumerate(names):
            report.add("encoder", "synthetic", name, outs[i], ref64[i], fp32=[plain32[i], fused32[i], noisy32[i]])
            report.add("encoder", "fold (float64)", name, fused64[i], ref64[i], absolute=FOLD_TOLERANCE)

    def decode(graph: str, session: Any, case_name: str, feed: dict, coords: Any, labels: Any, boxes: Any) -> None:
        scores, masks = session.run(None, feed)
        ref = P.torch_decode(model64, embedding, interm, coords, labels, boxes, upsample)
        f32 = P.torch_decode(model, embedding, interm, coords, labels, boxes, upsample)
        noisy = P.torch_decode(noisy_model, embedding, interm, coords, labels, boxes, upsample)
        report.add(graph, case_name, "scores", scores, ref[0], fp32=[f32[0], noisy[0]])
        report.add(graph, case_name, "masks", masks, ref[1], fp32=[f32[1], noisy[1]])

    noisy_model = P.with_runtime_noise(model)

    if "decoder" in files:
        session = open_graph(files["decoder"])
        for case_name, case in P.prompt_cases(model.img_size).items():
            decode("decoder", session, case_name, P.decoder_feed(case, emb_np, interm_np), case["coords"],
                   case["labels"], case["box"])
    if "decoder_prompts" in files:
        from edgesam_core.inference.onnx_predictor import pack_prompts

        context = open_graph(files["decoder_image"]).run(None, {"image_embeddings": emb_np})
        stage = open_graph(files["decoder_prompts"])
        names = [i.name for i in stage.get_inputs()]
        cases = dict(P.prompt_cases(model.img_size))
        s = float(model.img_size)
        # Several prompt sets in one call: the batch the automatic mask generator sends.
        grid = np.array([[[0.25 * s, 0.3 * s]], [[0.6 * s, 0.55 * s]], [[0.8 * s, 0.2 * s]]], np.float32)
        cases["3 points batched"] = {"coords": grid, "labels": np.ones((3, 1), np.float32), "box": None}
        for case_name, case in cases.items():
            coords, labels = pack_prompts(case["coords"], case["labels"], case["box"])
            feed = dict(zip(names, [*context, coords, labels]))
            scores, masks = stage.run(None, feed)
            ref = P.torch_decode(model64, embedding, None, case["coords"], case["labels"], case["box"], False)
            f32 = P.torch_decode(model, embedding, None, case["coords"], case["labels"], case["box"], False)
            noisy = P.torch_decode(noisy_model, embedding, None, case["coords"], case["labels"], case["box"], False)
            report.add("decoder_prompts", case_name, "scores", scores, ref[0], fp32=[f32[0], noisy[0]])
            report.add("decoder_prompts", case_name, "masks", masks, ref[1], fp32=[f32[1], noisy[1]])
    if "decoder_multibox" in files:
        session = open_graph(files["decoder_multibox"])
        s = float(model.img_size)
        boxes = np.array([[0.1, 0.1, 0.5, 0.6], [0.3, 0.2, 0.9, 0.5], [0.05, 0.4, 0.6, 0.95]], np.float32) * s
        pts = np.array([[[0.35 * s, 0.4 * s]]], np.float32)
        lab = np.ones((1, 1), np.float32)
        for case_name, valid in (("3 boxes", False), ("3 boxes+point", True)):
            feed = {"image_embeddings": emb_np, "point_coords": pts, "point_labels": lab, "boxes": boxes,
                    "point_valid": np.array([[valid]])}
            for i, arr in enumerate(interm_np or []):
                feed[f"interm_embeddings_{i}"] = arr
            decode("decoder_multibox", session, case_name, feed, pts if valid else None,
                   lab if valid else None, boxes)
    return report


def _sidecar(role: str, path: Path, model: Any, checkpoint: Path | None, ckpt_sha: str | None,
             opts: OnnxExportOptions, simplified: bool, parity: Any, fused: int) -> dict[str, Any]:
    from edgesam_core.deps import require
    from edgesam_core.export.sidecar import io_spec, library_versions

    onnx = require("onnx")
    grid = 4 * int(model.prompt_encoder.get_dense_pe().shape[-1])
    return {
        "format": "edgesam-onnx-sidecar/1",
        "role": role,
        "file": path.name,
        "model_type": model.variant,
        "is_hq": bool(model.is_hq),
        "img_size": int(model.img_size),
        "mask_size": int(model.img_size) if opts.upsample else grid,
        "checkpoint": checkpoint.name if checkpoint else None,
        "checkpoint_sha256": ckpt_sha,
        "opset": opts.opset,
        "exporter": EXPORTER,
        # What the exported encoder really uses (a model passed in keeps its own mode).
        "upsample_mode": getattr(model.image_encoder, "upsample_mode", None),
        "upsample_masks": opts.upsample,
        "simplified": simplified,
        "fused_repvgg_blocks": fused,
        "io": io_spec(onnx.load(str(path), load_external_data=False)),
        # The image stage is checked through the prompt stage it feeds.
        "parity": parity.for_graph("decoder_prompts" if role == "decoder_image" else role).to_dict(),
        "tolerance": opts.tolerance,
        "versions": library_versions(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def export_onnx(checkpoint: str | Path | None, opts: OnnxExportOptions, model: Any | None = None,
                progress: Progress | None = None, decoder_source: Any = None) -> OnnxExportResult:
    """Export encoder and/or decoder graphs, check them against PyTorch, write sidecars.

    Args:
        checkpoint: weights file; may be None when ``model`` is given (then ``opts.name`` or the
            variant names the files).
        opts: export options.
        model: an already built ``Sam`` (tests pass random-weight models); built from ``checkpoint``
            with ``opts.upsample_mode`` otherwise.
        progress: progress reporter.
        decoder_source: prompt encoder + mask decoder (SAM checkpoint) for an encoder-only ``checkpoint``.

    Returns:
        The written files, sidecars and the parity report.

    Raises:
        ExportParityError: files written but ONNX and PyTorch differ by more than ``opts.tolerance``.
    """
    import torch

    from edgesam_core.export.parity import synthetic_image
    from edgesam_core.export.sidecar import atomic_write_json, sha256_file, sidecar_path

    progress = progress or NullProgress()
    if opts.upsample_mode not in UPSAMPLE_MODES:
        raise ConfigError(f"Unknown upsample mode '{opts.upsample_mode}': use one of {', '.join(UPSAMPLE_MODES)}")
    if not (opts.encoder or opts.decoder):
        raise ConfigError("Nothing to export: drop one of --encoder-only/--decoder-only")
    from edgesam_core.deps import available

    if opts.simplify and not available("onnxsim"):
        raise MissingDependencyError("--simplify needs onnxsim: pip install onnxsim (or pass --no-simplify)",
                                     extra="onnx")
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if model is None:
        if checkpoint is None:
            raise ConfigError("export_onnx needs a checkpoint or a built model")
        from edgesam_core.models import build_sam

        model = build_sam(opts.model_type, checkpoint, upsample_mode=opts.upsample_mode,
                          decoder_source=decoder_source)
    model = model.eval()
    out_dir = Path(opts.out_dir) if opts.out_dir else (checkpoint.parent if checkpoint else Path.cwd())
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = opts.name or (checkpoint.stem if checkpoint else model.variant)
    staged_decoder = opts.staged_decoder and opts.runtime_rewrites and opts.decoder and not model.is_hq
    planned = output_paths(out_dir / stem, opts.multi_box and opts.decoder, staged_decoder)
    if not opts.encoder:
        planned.pop("encoder")
    if not opts.decoder:
        planned.pop("decoder")

    notes: list[str] = []
    simplified: dict[str, bool] = {}
    # Graphs are written under hidden staging names, checked there, and moved to their final names only
    # after the check and the sidecars are done: an interrupted export leaves nothing that looks complete.
    staged = {role: path.with_name(f".{path.name}.partial") for role, path in planned.items()}
    sidecars: dict[str, Path] = {}
    try:
        # The graphs come from a re-parameterised copy; parity is checked against the untouched model.
        export_model, fused = reparameterized_copy(model, opts.runtime_rewrites) if opts.fuse else (model, 0)
        task = progress.add_task("Exporting ONNX", total=len(planned) + 1)
        x = prepare_image(model, synthetic_image())
        with torch.no_grad():
            features = model.encode_image(x)
        embedding, interm = (features[0], list(features[1])) if model.is_hq else (features, None)
        for role, path in staged.items():
            progress.update(task, description=f"Exporting {planned[role].name}")
            with torch.no_grad():
                if role == "encoder":
                    simplified[role] = _export_encoder(export_model, x, path, opts.opset, opts.simplify, notes,
                                                       planned[role].name)
                elif role in STAGE_ROLES:
                    simplified[role] = _export_decoder_stage(export_model, embedding, role, path, opts, notes,
                                                             planned[role].name)
                else:
                    simplified[role] = _export_decoder(export_model, embedding, interm, path, opts,
                                                       role == "decoder_multibox", notes, planned[role].name)
            progress.advance(task)
        progress.update(task, description="Checking ONNX against the float64 model")
        report = check_parity(model, staged, opts.upsample, opts.tolerance)
        progress.advance(task)
        progress.finish(task)

        ckpt_sha = sha256_file(checkpoint) if checkpoint and checkpoint.is_file() else None
        for role, path in planned.items():
            meta = _sidecar(role, staged[role], model, checkpoint, ckpt_sha, opts, simplified[role], report, fused)
            meta["file"] = path.name
            meta["notes"] = [n for n in notes if n.startswith(path.name)]
            sidecars[role] = atomic_write_json(sidecar_path(path), meta)
        for role, path in planned.items():
            staged[role].replace(path)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    result = OnnxExportResult(planned, sidecars, report, notes)
    if not report.passed:
        worst = report.worst
        error = ExportParityError(
            f"ONNX differs from the float64 model beyond fp32 noise: {report.describe(worst)}; files kept in "
            f"{out_dir} (see {sidecars[worst.graph].name})")
        # The CLI still prints the parity table for a failed check.
        error.result = result  # type: ignore[attr-defined]
        raise error
    if opts.simplify and any("onnxsim failed" in n for n in notes):
        error = EdgeSamError(f"--simplify was requested but onnxsim failed; the unsimplified, parity-checked "
                             f"graphs are in {out_dir} (rerun with --no-simplify to accept them)")
        error.result = result  # type: ignore[attr-defined]
        raise error
    return result
