"""Convert the encoder/decoder ONNX pair to TFLite with onnx2tf (``edgesam convert-tflite``).

Pipeline per graph: make it static (:mod:`edgesam_core.export.onnx_static`: fixed decoder prompt layout of
``num_points`` points, constant folding, bicubic -> bilinear), convert with onnx2tf in a scratch folder,
move the chosen files into place, run them in the LiteRT interpreter next to ONNX Runtime and write a JSON
sidecar (``<file>.tflite.json``) with I/O layouts, notes, parity and latency.

Precisions (file suffix ``_fp32``/``_fp16``/``_int8``):

- ``fp32``, ``fp16``: onnx2tf's float32 and float16-weight models (float32 I/O);
- ``int8``: the encoder is fully integer-quantized (int8 weights and activations, float32 I/O) with
  calibration images from ``--calib`` run through the real preprocessing; the decoder gets dynamic-range
  quantization (int8 weights, float activations), which needs no prompt calibration and keeps the
  attention/softmax/tanh activations in float, where int8 hurts masks most.

onnx2tf transposes most 4-D tensors to NHWC; the sidecar records each tensor's layout so
:class:`~edgesam_core.inference.tflite_predictor.TfliteRunner` always speaks ONNX names and NCHW.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgesam_core import deps
from edgesam_core.errors import ConfigError, EdgeSamError, ExportParityError, InputError
from edgesam_core.export.runtime_pair import (
    OnnxPair,
    compare_with_onnxruntime,
    default_tolerance,
    resolve_onnx_pair,
)
from edgesam_core.export.sidecar import atomic_write_json, sha256_file
from edgesam_core.progress import NullProgress, Progress

PRECISIONS = ("fp32", "fp16", "int8")
#: onnx2tf output file suffix per (precision, role).
_ONNX2TF_FILES = {
    ("fp32", "encoder"): "_float32.tflite", ("fp32", "decoder"): "_float32.tflite",
    ("fp16", "encoder"): "_float16.tflite", ("fp16", "decoder"): "_float16.tflite",
    ("int8", "encoder"): "_integer_quant.tflite", ("int8", "decoder"): "_dynamic_range_quant.tflite",
}
#: Parity tolerance against ONNX Runtime for a pair without a float64 record (``max_abs <= tol *
#: max(1, max|ref|)``); with the record, the noise-floor rule with ``FLOOR_TOLERANCE`` applies (see
#: ``compare_with_onnxruntime``). int8 is reported, not gated, unless a tolerance is given.
DEFAULT_TOLERANCE = {"fp32": 5e-3, "fp16": 0.05, "int8": None}
DEFAULT_NUM_POINTS = 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass
class TfliteOptions:
    """What ``convert_tflite`` produces (mirrors ``edgesam convert-tflite``)."""

    precisions: tuple[str, ...] = ("fp32", "fp16")
    num_points: int = DEFAULT_NUM_POINTS
    calib_dir: Path | None = None
    calib_count: int = 32
    tolerance: float | None = None
    upsample_mode: str = "bilinear"
    check_parity: bool = True
    latency_runs: int = 5

    def validate(self) -> None:
        """Raise ConfigError for unusable options (all problems at once)."""
        problems = []
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            problems.append(f"precision must be among {', '.join(PRECISIONS)} (got {', '.join(self.precisions)})")
        if self.num_points < 1:
            problems.append(f"--num-points must be >= 1 (got {self.num_points})")
        if "int8" in self.precisions and self.calib_dir is None:
            problems.append("int8 needs calibration images: pass --calib DIR")
        if self.calib_dir is not None and not Path(self.calib_dir).is_dir():
            problems.append(f"--calib {self.calib_dir} is not a folder")
        if self.calib_count < 1:
            problems.append(f"--calib-count must be >= 1 (got {self.calib_count})")
        if problems:
            raise ConfigError("; ".join(problems))


@dataclass
class TfliteResult:
    """Written files by precision and role, their sidecars and the parity reports (dicts) per precision."""

    files: dict[str, dict[str, Path]]
    sidecars: dict[str, dict[str, Path]]
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    onnx: dict[str, Path] = field(default_factory=dict)


def require_tflite_stack() -> tuple[Any, Any]:
    """Import tensorflow and onnx2tf (quietly) or raise MissingDependencyError naming the extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = deps.require("tensorflow", extra="tflite", purpose="TFLite conversion")
    onnx2tf = deps.require("onnx2tf", extra="tflite", purpose="TFLite conversion")
    return tf, onnx2tf


def calibration_images(calib_dir: Path, img_size: int, count: int) -> np.ndarray:
    """Up to ``count`` images from ``calib_dir`` (sorted), preprocessed exactly as for inference: Nx3xSxS.

    Raises:
        InputError: the folder holds no readable image.
    """
    from PIL import Image

    from edgesam_core.inference.onnx_predictor import preprocess

    paths = sorted(p for p in Path(calib_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    batch = []
    for path in paths:
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except OSError:
            continue
        batch.append(preprocess(rgb, img_size)[0][0])
    if not batch:
        raise InputError(f"No readable image ({', '.join(IMAGE_SUFFIXES)}) in {calib_dir}")
    return np.stack(batch).astype(np.float32)


def _io_layouts(onnx_model: Any, interpreter: Any) -> dict[str, list[dict[str, Any]]]:
    """ONNX name/shape plus the layout the TFLite tensor uses, for every input and output."""
    from edgesam_core.inference.tflite_predictor import _output_order, input_name

    def dims(value: Any) -> list[int]:
        return [int(d.dim_value) for d in value.type.tensor_type.shape.dim]

    def layout(onnx_shape: list[int], tfl_shape: list[int], name: str) -> str:
        if len(onnx_shape) == 4 and list(tfl_shape) == onnx_shape and \
                onnx_shape == [onnx_shape[i] for i in (0, 2, 3, 1)]:
            return "ambiguous"  # C == H == W: settled numerically by _settle_layouts
        if list(tfl_shape) == onnx_shape:
            return "nchw" if len(onnx_shape) == 4 else "same"
        if len(onnx_shape) == 4 and list(tfl_shape) == [onnx_shape[i] for i in (0, 2, 3, 1)]:
            return "nhwc"
        raise EdgeSamError(f"onnx2tf produced an unexpected shape {list(tfl_shape)} for '{name}' "
                           f"(ONNX {onnx_shape}); cannot map its layout")

    by_name = {input_name(d["name"]): d for d in interpreter.get_input_details()}
    inputs = []
    for value in onnx_model.graph.input:
        if value.name not in by_name:
            raise EdgeSamError(f"converted model lacks input '{value.name}' (inputs: {', '.join(by_name)})")
        shape = dims(value)
        tfl = [int(x) for x in by_name[value.name]["shape"]]
        inputs.append({"name": value.name, "onnx_shape": shape, "tflite_shape": tfl,
                       "layout": layout(shape, tfl, value.name)})
    outputs = []
    for value, detail in zip(onnx_model.graph.output, _output_order(interpreter.get_output_details())):
        shape = dims(value)
        tfl = [int(x) for x in detail["shape"]]
        outputs.append({"name": value.name, "onnx_shape": shape, "tflite_shape": tfl,
                        "layout": layout(shape, tfl, value.name)})
    return {"inputs": inputs, "outputs": outputs}


def _settle_layouts(runner: Any, reference: Any, feed: dict[str, np.ndarray]) -> None:
    """Pick NCHW or NHWC for tensors whose shape cannot tell (C == H == W) by matching ONNX Runtime."""
    import itertools

    tensors = [t for t in [*runner.get_inputs(), *runner.get_outputs()] if t.layout == "ambiguous"]
    if not tensors:
        return
    live = {t.name: t for t in [*runner._inputs, *runner._outputs]}
    ref = reference.run(None, feed)
    best: tuple[float, tuple[str, ...]] | None = None
    for combo in itertools.product(("nchw", "nhwc"), repeat=len(tensors)):
        for tensor, choice in zip(tensors, combo):
            live[tensor.name].layout = choice
        got = runner.run(None, feed)
        err = max(float(np.abs(g - r).max()) if g.shape == r.shape else float("inf") for g, r in zip(got, ref))
        if best is None or err < best[0]:
            best = (err, combo)
    for tensor, choice in zip(tensors, best[1]):
        live[tensor.name].layout = choice


def _write_layouts(sidecar: Path, runner: Any) -> None:
    meta = _read_json(sidecar)
    layouts = {t.name: t.layout for t in [*runner._inputs, *runner._outputs]}
    for group in ("inputs", "outputs"):
        for tensor in meta["io"][group]:
            tensor["layout"] = layouts[tensor["name"]]
    atomic_write_json(sidecar, meta)


def _run_onnx2tf(onnx2tf: Any, static_path: Path, work: Path, role: str, precisions: tuple[str, ...],
                 replacements: list[dict[str, Any]], calib: np.ndarray | None) -> None:
    import json

    kwargs: dict[str, Any] = {
        "input_onnx_file_path": str(static_path),
        "output_folder_path": str(work),
        "copy_onnx_input_output_names_to_tflite": True,
        "non_verbose": True,
        # Our graph is already folded; onnx2tf's own onnxsim pass can fuse ops it cannot convert.
        "not_use_onnxsim": True,
        # The encoder input stays NCHW like the ONNX graph (no onnx2tf test-image download is triggered).
        "keep_ncw_or_nchw_or_ncdhw_input_names": ["image"],
        "keep_shape_absolutely_input_names": ["point_coords", "point_labels"],
    }
    if replacements:
        rep = work / "param_replacement.json"
        rep.write_text(json.dumps({"format_version": 1, "operations": replacements}))
        kwargs["param_replacement_file"] = str(rep)
    if "int8" in precisions:
        if role == "encoder":
            npy = work / "calib_image.npy"
            np.save(npy, calib)
            kwargs["output_integer_quantized_tflite"] = True
            # Calibration data is already normalised by the real preprocessing.
            kwargs["custom_input_op_name_np_data_path"] = [["image", str(npy), np.zeros((1, 1, 1, 1), np.float32),
                                                            np.ones((1, 1, 1, 1), np.float32)]]
        else:
            kwargs["output_dynamic_range_quantized_tflite"] = True
    # onnx2tf prints to stdout and calls sys.exit on failure; keep stdout for results and map the exit.
    try:
        with contextlib.redirect_stdout(sys.stderr):
            onnx2tf.convert(**kwargs)
    except SystemExit as exc:
        raise EdgeSamError(f"onnx2tf failed to convert the {role} graph (exit {exc.code}); see its log above") from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeSamError(f"onnx2tf failed to convert the {role} graph: {type(exc).__name__}: {first[:300]}") from exc


def _latency_ms(runner: Any, feed: dict[str, np.ndarray], runs: int) -> float:
    runner.run(None, feed)  # warm-up
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        runner.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {}
    for dist in ("tensorflow", "tensorflow-cpu", "onnx2tf", "ai-edge-litert", "onnx", "onnxruntime", "edgesam"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions


def convert_tflite(source: str | Path, output_dir: str | Path | None = None, *, variant: str | None = None,
                   name: str | None = None, options: TfliteOptions | None = None,
                   progress: Progress | None = None) -> TfliteResult:
    """Convert an ONNX pair (or a checkpoint, exported first) to TFLite and check it against ONNX Runtime.

    Args:
        source: ``<name>_encoder.onnx``/``<name>_decoder.onnx`` (either) or a PyTorch checkpoint.
        output_dir: where the ``.tflite`` files go (default: beside the ONNX files).
        variant: model variant of a checkpoint (default ``edge_sam_dyt``).
        name: file stem (default: the pair's name).
        options: precisions, static point count, calibration, tolerance.
        progress: progress reporter.

    Returns:
        Files, sidecars, parity and latency per precision.

    Raises:
        MissingDependencyError: tensorflow/onnx2tf missing (checked first).
        ConfigError: bad options. EdgeSamError: a conversion step failed.
        ExportParityError: files written but an fp32/fp16 model (or int8 with an explicit tolerance)
            differs from ONNX Runtime by more than the tolerance.
    """
    from edgesam_core.export.onnx_static import (
        prepare_static_graph,
        reshape_to_conv_fixes,
    )
    from edgesam_core.inference.tflite_predictor import (
        TfliteRunner,
        make_interpreter,
        sidecar_for,
    )

    options = options or TfliteOptions()
    options.validate()
    _, onnx2tf = require_tflite_stack()
    onnx = deps.require("onnx", purpose="TFLite conversion")
    progress = progress or NullProgress()
    pair: OnnxPair = resolve_onnx_pair(source, output_dir, variant=variant, upsample_mode=options.upsample_mode,
                                       simplify=False, progress=progress, portable=True)
    out_dir = Path(output_dir) if output_dir else pair.encoder.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or pair.name
    calib = None
    if "int8" in options.precisions:
        calib = calibration_images(Path(options.calib_dir), int(pair.metadata["img_size"]), options.calib_count)

    files: dict[str, dict[str, Path]] = {p: {} for p in options.precisions}
    io: dict[tuple[str, str], dict[str, Any]] = {}
    notes: dict[str, list[str]] = {}
    static_encoder = b""
    task = progress.add_task("Converting to TFLite", total=2)
    for role in ("encoder", "decoder"):
        progress.update(task, description=f"Converting the {role} to TFLite")
        try:
            static = prepare_static_graph(onnx.load(str(pair.path(role))), role, options.num_points)
        except ValueError as exc:
            raise InputError(f"{pair.path(role).name}: {exc}") from exc
        notes[role] = static.notes
        if role == "encoder":
            static_encoder = static.model.SerializeToString()
            if static.notes:
                pair.metadata["upsample_mode"] = "bilinear"
                notes[role].append(_substitution_effect(pair, static_encoder))
        with tempfile.TemporaryDirectory(prefix=f".{stem}_{role}_", dir=out_dir) as tmp:
            work = Path(tmp)
            static_path = work / f"{role}.onnx"
            onnx.save(static.model, str(static_path))
            _run_onnx2tf(onnx2tf, static_path, work, role, options.precisions,
                         reshape_to_conv_fixes(static.model), calib)
            for precision in options.precisions:
                produced = work / f"{role}{_ONNX2TF_FILES[(precision, role)]}"
                if not produced.is_file():
                    raise EdgeSamError(f"onnx2tf did not write {produced.name} for the {role} ({precision})")
                interpreter = make_interpreter(produced)
                try:
                    interpreter.allocate_tensors()
                except (RuntimeError, ValueError) as exc:
                    first = str(exc).strip().splitlines()[0]
                    raise EdgeSamError(f"the converted {role} ({precision}) does not run in LiteRT: {first}") from exc
                io[(precision, role)] = _io_layouts(static.model, interpreter)
                dst = out_dir / f"{stem}_{role}_{precision}.tflite"
                shutil.copyfile(produced, dst.with_name(dst.name + ".tmp"))
                os.replace(dst.with_name(dst.name + ".tmp"), dst)
                files[precision][role] = dst
        progress.advance(task)
    progress.finish(task)

    result = TfliteResult(files, {p: {} for p in options.precisions}, onnx={"encoder": pair.encoder,
                                                                            "decoder": pair.decoder})
    failures = []
    for precision in options.precisions:
        # Sidecars first: the runners read their I/O layout from them.
        base = {**pair.metadata, "format": "tflite", "precision": precision,
                "pair": {r: p.name for r, p in files[precision].items()}, "library_versions": _library_versions()}
        for role, path in files[precision].items():
            meta = {**base, "role": role, "file": path.name, "source_onnx": pair.path(role).name,
                    "num_points": options.num_points if role == "decoder" else None,
                    "io": io[(precision, role)], "notes": notes[role],
                    "quantization": _quant_note(precision, role), "bytes": path.stat().st_size,
                    "sha256": sha256_file(path)}
            result.sidecars[precision][role] = atomic_write_json(sidecar_for(path), meta)
        _settle_all_layouts(pair, result.sidecars[precision], files[precision], static_encoder)
        if not options.check_parity:
            continue
        progress.log(f"checking TFLite {precision} against the float64 model's noise floor ...")
        tolerance = (options.tolerance if options.tolerance is not None
                     else default_tolerance(pair, DEFAULT_TOLERANCE[precision]))
        runners = {role: TfliteRunner(path) for role, path in files[precision].items()}
        # A swapped encoder op (bilinear for bicubic) makes the prepared graph the encoder reference: its
        # figures measure the conversion; the swap's own effect is in the notes.
        report = compare_with_onnxruntime(pair, runners, tolerance=tolerance if tolerance is not None else float("inf"),
                                          references={"encoder": static_encoder} if notes["encoder"] else None,
                                          precision=precision)
        result.parity[precision] = _summary(report.to_dict(), tolerance)
        result.latency_ms[precision] = _measure_latency(pair, runners, options.latency_runs)
        for role, sidecar in result.sidecars[precision].items():
            meta = _read_json(sidecar)
            meta["parity"] = _summary(report.for_graph(role).to_dict(), tolerance)
            if role == "decoder" and report.padding:
                worst = max(report.padding, key=lambda p: p["max_abs_change"])
                agreements = [p["mask_agreement"] for p in report.padding if p["mask_agreement"] is not None]
                meta["notes"] = [*meta.get("notes", []), (
                    f"prompts are padded to {options.num_points} points with label -1, which SAM's decoder "
                    f"attends to: on the parity prompts that changes logits by up to {worst['max_abs_change']:.3g} "
                    f"({worst['case']}/{worst['output']}) and keeps mask IoU >= {min(agreements, default=1.0):.3f} "
                    "against the prompt as given (ONNX Runtime); convert with --num-points equal to your prompt "
                    "size to avoid it")]
            meta["latency_ms"] = result.latency_ms[precision].get(role)
            atomic_write_json(sidecar, meta)
        if tolerance is not None and not report.passed:
            worst = report.worst
            failures.append(f"{precision}: {report.describe(worst)}")
    if failures:
        raise ExportParityError(f"TFLite is outside the noise-floor rule ({'; '.join(failures)}); files kept in {out_dir}")
    return result


def _settle_all_layouts(pair: OnnxPair, sidecars: dict[str, Path], files: dict[str, Path],
                        static_encoder: bytes) -> None:
    """Resolve ambiguous tensor layouts of both graphs against ONNX Runtime and record them."""
    from edgesam_core.export import parity as P
    from edgesam_core.export.runtime_pair import _session, encoder_input
    from edgesam_core.inference.tflite_predictor import TfliteRunner

    metas = {role: _read_json(path) for role, path in sidecars.items()}
    if not any(t["layout"] == "ambiguous" for m in metas.values() for g in ("inputs", "outputs")
               for t in m["io"][g]):
        return
    img_size = int(pair.metadata["img_size"])
    encoder_ref = _session(static_encoder)
    x = encoder_input(img_size)
    runner = TfliteRunner(files["encoder"])
    _settle_layouts(runner, encoder_ref, {"image": x})
    _write_layouts(sidecars["encoder"], runner)
    feats = encoder_ref.run(None, {"image": x})
    runner = TfliteRunner(files["decoder"])
    case = P.prompt_cases(img_size)["box+points"]
    feed = runner.prepare_feed(P.decoder_feed(case, feats[0], feats[1:] if pair.metadata.get("is_hq") else None))
    _settle_layouts(runner, _session(pair.decoder), feed)
    _write_layouts(sidecars["decoder"], runner)


def _substitution_effect(pair: OnnxPair, static_encoder: bytes) -> str:
    """How far the prepared encoder (bilinear) is from the original ONNX encoder on the parity image."""
    from edgesam_core.export.runtime_pair import _session, encoder_input

    x = encoder_input(int(pair.metadata["img_size"]))
    original = _session(pair.encoder).run(None, {"image": x})[0]
    prepared = _session(static_encoder).run(None, {"image": x})[0]
    diff = np.abs(original.astype(np.float64) - prepared)
    return (f"prepared vs original ONNX encoder on the parity image: max abs {diff.max():.3g}, mean abs "
            f"{diff.mean():.3g} (embedding max abs {np.abs(original).max():.3g})")


def _summary(report: dict[str, Any], tolerance: float | None) -> dict[str, Any]:
    """Parity dict for JSON; an ungated (int8) report has no tolerance and no pass/fail."""
    report = dict(report)
    report["gated"] = tolerance is not None
    if tolerance is None:
        report["tolerance"] = None
        report["passed"] = None
        report["entries"] = [{**e, "passed": None} for e in report.get("entries", [])]
    return report


def _quant_note(precision: str, role: str) -> str:
    if precision == "fp32":
        return "none (float32)"
    if precision == "fp16":
        return "float16 weights, float32 I/O"
    if role == "encoder":
        return "full integer: int8 weights and activations (calibrated), float32 I/O"
    return "dynamic range: int8 weights, float activations"


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(Path(path).read_text())


def _measure_latency(pair: OnnxPair, runners: dict[str, Any], runs: int) -> dict[str, float]:
    """Median single-call latency (ms) of each runner on the parity inputs."""
    from edgesam_core.export import parity as P
    from edgesam_core.export.runtime_pair import encoder_input

    x = encoder_input(int(pair.metadata["img_size"]))
    latency = {"encoder": round(_latency_ms(runners["encoder"], {"image": x}, runs), 3)}
    feats = runners["encoder"].run(None, {"image": x})
    case = next(iter(P.prompt_cases(int(pair.metadata["img_size"])).values()))
    feed = P.decoder_feed(case, feats[0], feats[1:] if pair.metadata.get("is_hq") else None)
    latency["decoder"] = round(_latency_ms(runners["decoder"], feed, runs), 3)
    return latency
