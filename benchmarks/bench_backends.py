"""Encoder/decoder latency and memory of PyTorch, ONNX Runtime fp32/int8 and TFLite fp32/int8 on this CPU.

Usage::

    python benchmarks/bench_backends.py --model edge_sam_dyt --out bench_backends.json
    python benchmarks/bench_backends.py --quant-compare edge_sam_dyt,edge_sam --out quant_dyt_vs_ln.json

TFLite rows need the ``tflite`` extra (tensorflow, onnx2tf); without it they are reported as not measured,
with the reason, and ``--require-tflite`` turns that into a failure. The int8 TFLite encoder is calibrated
on the same images as the ONNX Runtime int8 one; the int8 TFLite decoder is dynamic-range (int8 weights,
float activations), as ``edgesam convert-tflite`` writes it.

Each backend runs in its own subprocess so its peak RSS is its own. Latency is the median of ``--runs``
calls after ``--warmup`` calls with ``--threads`` intra-op threads (torch and onnxruntime alike). Without
``--checkpoint`` the weights are random (``torch.manual_seed(--seed)``): speed and memory do not depend on
the values, but int8 fidelity does, so ``--quant-compare`` numbers only say how each architecture
quantises at initialisation, not how the trained models do. Calibration and evaluation images are
deterministic synthetic images unless ``--calib``/``--eval`` are given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import build_model, emit_json  # noqa: E402 - after the path set-up


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB.

    Linux's VmHWM belongs to the current address space, so it is this worker's own peak; ``ru_maxrss``
    would carry over the parent's peak across fork + exec.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _worker(args: argparse.Namespace) -> dict:
    """Time one backend in this (fresh) process and report its memory."""
    import numpy as np
    import psutil

    from edgesam_core.export.parity import decoder_feed, synthetic_image
    from edgesam_core.export.quantize import median_latency_ms

    image = synthetic_image(768, 1024)
    prompt = {"coords": np.array([[[400.0, 300.0]]], np.float32), "labels": np.ones((1, 1), np.float32), "box": None}
    rss_start = psutil.Process().memory_info().rss / 2**20
    if args.worker == "torch":
        import torch

        from edgesam_core.export.onnx_export import prepare_image

        torch.set_num_threads(args.threads)
        model = build_model(args.model, args.checkpoint, args.seed, args.spread)
        x = prepare_image(model, image)
        with torch.no_grad():
            features = model.encode_image(x)
            emb, interm = (features[0], list(features[1])) if model.is_hq else (features, None)
            points = (torch.tensor([[[400.0, 300.0]]]), torch.ones(1, 1))
            pe = model.prompt_encoder.get_dense_pe()

            def decode():
                sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
                return model.mask_decoder(emb, pe, sparse, dense, num_multimask_outputs=4, interm_embeddings=interm)

            enc = median_latency_ms(lambda: model.encode_image(x), args.runs, args.warmup)
            dec = median_latency_ms(decode, args.runs, args.warmup)
    else:
        from edgesam_core.inference.onnx_predictor import create_session, preprocess

        if args.worker == "tflite":
            from edgesam_core.inference.tflite_predictor import TfliteRunner

            encoder, decoder = TfliteRunner(args.encoder, args.threads), TfliteRunner(args.decoder, args.threads)
        else:
            encoder = create_session(args.encoder, args.threads, ["CPUExecutionProvider"])
            decoder = create_session(args.decoder, args.threads, ["CPUExecutionProvider"])
        x, _ = preprocess(image, int(encoder.get_inputs()[0].shape[-1]))
        outs = encoder.run(None, {"image": x})
        feed = decoder_feed(prompt, outs[0], outs[1:] or None)
        enc = median_latency_ms(lambda: encoder.run(None, {"image": x}), args.runs, args.warmup)
        dec = median_latency_ms(lambda: decoder.run(None, feed), args.runs, args.warmup)
    return {"encoder_ms": enc, "decoder_ms": dec, "rss_start_mb": rss_start,
            "rss_end_mb": psutil.Process().memory_info().rss / 2**20, "peak_rss_mb": _peak_rss_mb()}


def _run_worker(kind: str, args: argparse.Namespace, encoder: Path | None = None, decoder: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--model", args.model, "--threads", str(args.threads),
           "--runs", str(args.runs), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--spread", str(args.spread)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint]
    if encoder:
        cmd += ["--encoder", str(encoder), "--decoder", str(decoder)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _image_dirs(args: argparse.Namespace, work: Path) -> tuple[Path, Path | None]:
    if args.calib:
        return Path(args.calib), Path(args.eval) if args.eval else None
    from PIL import Image

    from edgesam_core.export.parity import synthetic_image

    folder = work / "synthetic_images"
    folder.mkdir(exist_ok=True)
    for i in range(args.images):
        h, w = (480 + 37 * i) % 900 + 240, (640 + 53 * i) % 1000 + 320
        Image.fromarray(synthetic_image(h, w, seed=i)).save(folder / f"synthetic_{i:03d}.png")
    return folder, None


def _export_and_quantize(args: argparse.Namespace, variant: str, work: Path) -> tuple[dict, object]:
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.export.quantize import QuantizeOptions, quantize_pair

    model = build_model(variant, args.checkpoint, args.seed, args.spread)
    result = export_onnx(None, OnnxExportOptions(model_type=variant, out_dir=work, name=variant), model=model)
    calib, held = _image_dirs(args, work)
    report = quantize_pair(result.files["encoder"], QuantizeOptions(
        calib_dir=calib, eval_dir=held, threads=args.threads, latency_runs=args.runs, warmup_runs=args.warmup,
        seed=args.seed))
    return result.files, report


def _tflite_rows(args: argparse.Namespace, work: Path) -> dict:
    """Convert the model to TFLite fp32 + int8 and time both, or say why they were not measured.

    onnx2tf needs the unsimplified graph (onnxsim fuses attention into an op it cannot read) with the
    bilinear neck (TFLite has no bicubic resize), so the model is exported again for it.
    """
    from edgesam_core.errors import MissingDependencyError
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.export.tflite import TfliteOptions, convert_tflite, require_tflite_stack

    try:
        require_tflite_stack()
    except MissingDependencyError as exc:
        if args.require_tflite:
            raise
        return {"tflite_fp32": {"not_measured": str(exc)}, "tflite_int8": {"not_measured": str(exc)}}
    calib, _ = _image_dirs(args, work)
    model = build_model(args.model, args.checkpoint, args.seed, args.spread)
    exported = export_onnx(None, OnnxExportOptions(model_type=args.model, out_dir=work / "tflite", name=args.model,
                                                   simplify=False, upsample_mode="bilinear", opset=17,
                                                   runtime_rewrites=False), model=model)
    result = convert_tflite(exported.files["encoder"], work / "tflite", options=TfliteOptions(
        precisions=("fp32", "int8"), calib_dir=calib, calib_count=args.images, latency_runs=1))
    rows = {}
    for precision in ("fp32", "int8"):
        files = result.files[precision]
        row = _run_worker("tflite", args, files["encoder"], files["decoder"])
        parity = result.parity.get(precision) or {}
        row["parity_vs_onnxruntime"] = {k: parity.get(k) for k in ("max_abs", "tolerance", "passed")}
        rows[f"tflite_{precision}"] = row
    return rows


def _environment(args: argparse.Namespace) -> dict:
    import importlib.metadata as md

    import psutil

    versions = {}
    for dist in ("torch", "onnx", "onnxruntime", "tensorflow", "onnx2tf", "ai-edge-litert"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return {"cpu": platform.processor() or platform.machine(), "logical_cpus": psutil.cpu_count(),
            "threads": args.threads, "runs": args.runs, "warmup": args.warmup, "versions": versions,
            "weights": args.checkpoint or f"random, torch.manual_seed({args.seed}), decoder spread {args.spread}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="edge_sam_dyt")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread", type=float, default=0.0,
                        help="noise added to random decoder weights so masks depend on prompts (e.g. 0.1)")
    parser.add_argument("--images", type=int, default=12, help="synthetic images when --calib is not given")
    parser.add_argument("--calib", default=None)
    parser.add_argument("--eval", default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--quant-compare", default=None, help="comma-separated variants, e.g. edge_sam_dyt,edge_sam")
    parser.add_argument("--skip-tflite", action="store_true", help="leave out the TFLite fp32/int8 rows")
    parser.add_argument("--require-tflite", action="store_true",
                        help="fail instead of reporting TFLite as not measured when the tflite extra is missing")
    parser.add_argument("--out", default=None, help="JSON output file (default: stdout only)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--encoder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--decoder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result: dict = {"environment": _environment(args)}
        if args.quant_compare:
            result["note"] = ("random weights: int8 fidelity of untrained models; the DyT-vs-LayerNorm claim "
                              "needs trained checkpoints (--checkpoint) to be conclusive")
            result["variants"] = {}
            for variant in [v.strip() for v in args.quant_compare.split(",") if v.strip()]:
                _, report = _export_and_quantize(args, variant, work / variant)
                result["variants"][variant] = report.to_dict()
        else:
            files, report = _export_and_quantize(args, args.model, work)
            result["model"] = args.model
            result["backends"] = {
                "pytorch": _run_worker("torch", args),
                "onnxruntime_fp32": _run_worker("ort", args, files["encoder"], files["decoder"]),
                "onnxruntime_int8": _run_worker("ort", args, Path(report.int8_encoder), Path(report.int8_decoder)),
            }
            result["int8_fidelity"] = {k: v for k, v in report.to_dict().items()
                                       if k.startswith(("embedding_", "mask_iou_")) or k == "size_bytes"}
            if not args.skip_tflite:
                result["backends"].update(_tflite_rows(args, work))
        emit_json(result, args.out)


if __name__ == "__main__":
    main()
