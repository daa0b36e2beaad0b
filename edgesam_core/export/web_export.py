"""``edgesam export-web``: a self-contained static site that runs EdgeSAM in the visitor's browser.

The folder holds the page (``index.html``, ``web-app.mjs``, ``web-worker.mjs``, ``sam-web.mjs``, and the demo
page's ``demo.css`` and ``prompt-ui.js``),
the checked ONNX graphs (``model/``, as ``export-onnx`` writes them, so ``model/X_encoder.onnx`` also opens in
``edgesam segment``; the page loads the encoder and the staged decoder, or the contract decoder for HQ; with
``--int8`` an int8 encoder too), onnxruntime-web's files (``ort/``: WASM, and WebGPU unless left out) taken from the pinned
npm package, ``manifest.json`` (what the worker loads, with every file's SHA-256) and ``_headers`` (the
cross-origin isolation headers for hosts that read that file). Any static server can host it; served with
``Cross-Origin-Opener-Policy: same-origin`` and ``Cross-Origin-Embedder-Policy: require-corp`` (as
``edgesam demo --client-side`` does) the WASM backend runs multi-threaded.

The folder appears only complete: it is built as ``.<name>.partial`` beside ``out`` and renamed at the end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgesam_core.errors import InputError
from edgesam_core.export.npm_package import ORT_WEB, NpmPackage, ensure_package, extract_files
from edgesam_core.progress import NullProgress, Progress

PAGE_DIR = Path(__file__).parent / "web_page"
#: The demo page's files this page shares (its style sheet and prompt handling).
DEMO_STATIC_DIR = Path(__file__).parents[1] / "demo" / "static"
PAGE_FILES = ("index.html", "web-app.mjs", "web-worker.mjs", "sam-web.mjs")
SHARED_FILES = ("demo.css", "prompt-ui.js")
#: onnxruntime-web files per backend (the WASM build is also the WebGPU build's CPU fallback).
ORT_FILES = {
    "wasm": ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
    "webgpu": ("ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"),
}
#: Headers that make the page cross-origin isolated (SharedArrayBuffer, so WASM threads).
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MANIFEST_FORMAT = 1


@dataclass
class WebExportOptions:
    """What goes into the site (mirrors ``edgesam export-web``)."""

    model_type: str = "edge_sam_dyt"
    webgpu: bool = True
    int8: bool = False
    calib_dir: Path | None = None
    min_iou: float = 0.9
    tolerance: float = 1e-5
    #: A local ``.tgz`` or URL of the pinned onnxruntime-web tarball instead of the npm registry.
    ort_source: str | Path | None = None
    package: NpmPackage = ORT_WEB


@dataclass
class WebExportResult:
    """The built folder, its manifest and the ONNX parity report."""

    site: Path
    manifest: dict[str, Any]
    parity: Any
    int8: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def check_out_dir(out: Path) -> None:
    """A site never replaces anything: ``out`` must not exist, or be an empty folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty: choose a new --out (the site is never written "
                         "over existing files)")


def export_web(checkpoint: str | Path | None, out: str | Path, opts: WebExportOptions, model: Any | None = None,
               progress: Progress | None = None) -> WebExportResult:
    """Build the static site in ``out`` (see the module docstring).

    Args:
        checkpoint: weights (upstream format); may be None when ``model`` is given (tests).
        out: the folder to create.
        opts: site options.
        model: an already built ``Sam`` instead of ``checkpoint``.
        progress: progress reporter.

    Raises:
        InputError: ``out`` is not empty, onnxruntime-web is not the pinned package, --int8 without --calib or
            below --min-iou. ExportParityError: the ONNX graphs fail the float64 noise-floor rule (no site).
    """
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.export.sidecar import atomic_write_json, sha256_file

    progress = progress or NullProgress()
    out = Path(out)
    check_out_dir(out)
    if opts.int8 and opts.calib_dir is None:
        raise InputError("--int8 needs calibration photos: pass --calib DIR (a folder of your own images)")
    ort_tgz = ensure_package(opts.package, opts.ort_source, progress)
    staging = out.parent / f".{out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # an interrupted build of ours
    try:
        model_dir = staging / "model"
        name = Path(checkpoint).stem if checkpoint is not None else (model.variant if model is not None else "model")
        result = export_onnx(checkpoint, OnnxExportOptions(model_type=opts.model_type, out_dir=model_dir, name=name,
                                                           tolerance=opts.tolerance), model=model, progress=progress)
        graphs = _graphs(result.files)
        int8_report = None
        if opts.int8:
            int8_report, graphs["encoder"], int8_decoder = _int8_encoder(result.files["encoder"], opts, progress)
            for path in (int8_decoder, int8_decoder.with_suffix(".json")):  # the page runs the fp32 decoder
                path.unlink(missing_ok=True)
        backends = ["wasm", "webgpu"] if opts.webgpu else ["wasm"]
        ort_dir = staging / "ort"
        extract_files(ort_tgz, {f"package/dist/{f}": ort_dir / f for b in backends for f in ORT_FILES[b]}
                      | {"package/package.json": ort_dir / "package.json"})
        for folder, files in ((PAGE_DIR, PAGE_FILES), (DEMO_STATIC_DIR, SHARED_FILES)):
            for file in files:
                shutil.copyfile(folder / file, staging / file)
        (staging / "_headers").write_text("/*\n" + "".join(f"  {k}: {v}\n" for k, v in ISOLATION_HEADERS.items()))
        manifest = {
            "format": MANIFEST_FORMAT,
            "model": opts.model_type,
            "checkpoint": str(Path(checkpoint).name) if checkpoint is not None else None,
            "img_size": int(_img_size(model_dir / graphs["encoder"])),
            "is_hq": "decoder_prompts" not in graphs,
            "int8_encoder": bool(opts.int8),
            "webgpu": bool(opts.webgpu),
            "graphs": {role: f"model/{file}" for role, file in graphs.items()},
            "ort_web": {"version": opts.package.version, "integrity": opts.package.integrity},
            "parity": {"passed": bool(result.parity.passed)},
            "files": {str(p.relative_to(staging)): sha256_file(p) for p in sorted(staging.rglob("*")) if p.is_file()},
        }
        if int8_report is not None:
            manifest["int8"] = int8_report
        atomic_write_json(staging / "manifest.json", manifest)
        if out.exists():
            _move_into(staging, out)
        else:
            staging.replace(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return WebExportResult(out, manifest, result.parity, int8_report, list(result.notes))


def _graphs(files: dict[str, Path]) -> dict[str, str]:
    """Roles the page loads -> file names: the staged decoder when there is one, else the contract decoder."""
    if "decoder_image" in files and "decoder_prompts" in files:
        return {"encoder": files["encoder"].name, "decoder_image": files["decoder_image"].name,
                "decoder_prompts": files["decoder_prompts"].name}
    return {"encoder": files["encoder"].name, "decoder": files["decoder"].name}


def _int8_encoder(fp32_encoder: Path, opts: WebExportOptions,
                  progress: Progress) -> tuple[dict[str, Any], str, Path]:
    """Quantise the encoder (the decoder stays fp32 in the page) and hold it to ``opts.min_iou``."""
    from edgesam_core.export.quantize import QuantizeOptions, quantize_pair

    report = quantize_pair(fp32_encoder, QuantizeOptions(calib_dir=Path(opts.calib_dir)), progress)
    iou = float(report.mask_iou_int8_encoder_only_mean)
    if not iou >= opts.min_iou:
        raise InputError(f"the int8 encoder keeps mask IoU {iou:.3f} against fp32 on held-out photos, below "
                         f"--min-iou {opts.min_iou:g}: give more --calib photos or drop --int8")
    summary = {"mask_iou_vs_fp32": round(iou, 4), "embedding_cosine_mean": round(report.embedding_cosine_mean, 5),
               "calib_images": report.calib_images, "eval_images": report.eval_images}
    return summary, Path(report.int8_encoder).name, Path(report.int8_decoder)


def _img_size(encoder: Path) -> int:
    import onnx

    graph = onnx.load(str(encoder), load_external_data=False).graph
    return int(graph.input[0].type.tensor_type.shape.dim[-1].dim_value)


def _move_into(staging: Path, out: Path) -> None:
    """``out`` is an existing empty folder: move the built files into it."""
    for item in staging.iterdir():
        item.replace(out / item.name)
    staging.rmdir()


def read_manifest(site: str | Path) -> dict[str, Any]:
    """The manifest of a built site.

    Raises:
        InputError: ``site`` is not a folder written by ``edgesam export-web``.
    """
    path = Path(site) / "manifest.json"
    if not path.is_file():
        raise InputError(f"{site} is not a site built by 'edgesam export-web' (no manifest.json); build one with "
                         "'edgesam export-web CHECKPOINT --out SITE'")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); build the site again") from exc
    if manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path} has format {manifest.get('format')!r}, this edgesam reads {MANIFEST_FORMAT}: "
                         "build the site again")
    return manifest
