"""On-device runtimes side by side: ONNX Runtime, ExecuTorch (XNNPACK) and LiteRT, fp32 and int8 encoders.

One process, 2 threads, interleaved rounds, medians. Every artifact is made here from the same weights:
``export-onnx`` (+ ``quantize``: int8 encoder), ``export-executorch`` (fp32, and ``--int8``: PT2E int8
encoder) and, when tensorflow + onnx2tf are installed, ``convert-tflite`` (fp32 and int8). Latency: the
encoder on one preprocessed photo, and one click through each runtime's decoder (fp32). TensorFlow and
ExecuTorch crash when loaded into one process (measured: a segfault lowering to XNNPACK), so LiteRT runs in
a worker process that does its own conversions and is sent each timed call in turn: the rounds stay
interleaved, each call is timed where it runs, and only one process computes at a time.

int8 fidelity, per runtime: the int8 encoder with the fp32 decoder against fp32 PyTorch on held-out
photos (mask IoU of point and box prompts, embedding cosine), for ``--model`` and ``--compare`` side by side
(EdgeSAM-DyT against the LayerNorm EdgeSAM by default). Random weights unless ``--checkpoint`` /
``--compare-checkpoint`` are given, with the prompt path spread by ``--spread`` so masks are neither empty nor
full (each fidelity row gives the reference masks' share of the image); the report says which. Calibration and held-out images come from
``--calib`` (sorted; the last ``--held-out`` are held out) or, without it, crops of the photos matplotlib ships.

    python benchmarks/bench_runtimes.py --out benchmarks/results/bench_runtimes_2threads.json
    python benchmarks/bench_runtimes.py --checkpoint edge_sam_dyt.pth --compare-checkpoint edge_sam.pth \\
        --calib photos/ --out runtimes.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import build_model, calibration_split, emit_json, scratch_dir  # noqa: E402


def _artifacts(model: Any, name: str, calib: Path, count: int, work: Path) -> dict[str, Any]:
    """ONNX Runtime and ExecuTorch fp32/int8 encoders and fp32 decoders, written under ``work``."""
    from edgesam_core.export.executorch_export import ExecutorchOptions, export_executorch
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.export.quantize import QuantizeOptions, quantize_pair

    out: dict[str, Any] = {}
    onnx_files = export_onnx(None, OnnxExportOptions(model_type=model.variant, out_dir=work / "onnx", name=name),
                             model=model).files
    int8 = quantize_pair(onnx_files["encoder"], QuantizeOptions(calib_dir=calib, out_dir=work / "onnx_int8",
                                                                max_calib=count, max_eval=1, prompts_per_image=1))
    out["onnx"] = {"fp32": onnx_files["encoder"], "int8": Path(int8.int8_encoder), "decoder": onnx_files["decoder"]}
    fp32 = export_executorch(None, None, ExecutorchOptions(out_dir=work / "pte", name=name), model=model)
    q = export_executorch(None, None, ExecutorchOptions(out_dir=work / "pte", name=name, int8=True, calib_dir=calib,
                                                        calib_count=count, eval_count=1, min_iou=0.0), model=model)
    out["executorch"] = {"fp32": fp32.files["encoder"], "int8": q.files["encoder"], "decoder": fp32.files["decoder"]}
    return out


def _litert_artifacts(model: Any, name: str, calib: Path, count: int, work: Path) -> dict[str, Any]:
    """LiteRT fp32/int8 encoders and the fp32 decoder (``convert-tflite`` of a portable ONNX export)."""
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.export.tflite import TfliteOptions, convert_tflite

    portable = export_onnx(None, OnnxExportOptions(model_type=model.variant, out_dir=work / "portable", name=name,
                                                   opset=17, runtime_rewrites=False, upsample_mode="bilinear"),
                           model=model).files
    result = convert_tflite(portable["encoder"], work / "tflite", options=TfliteOptions(
        precisions=("fp32", "int8"), num_points=3, calib_dir=calib, calib_count=count, check_parity=False))
    return {"fp32": result.files["fp32"]["encoder"], "int8": result.files["int8"]["encoder"],
            "decoder": result.files["fp32"]["decoder"]}


def _litert_worker(conn: Any, jobs: list[dict[str, Any]], held: list[str], prompts: int, threads: int) -> None:
    """Worker process (tensorflow, never executorch): convert, measure LiteRT's int8 fidelity per model, then
    time the calls the parent names until it sends None."""
    import copy as _copy

    torch.set_num_threads(threads)
    from edgesam_core.errors import EdgeSamError
    from edgesam_core.export.quantize import int8_fidelity
    from edgesam_core.inference import SamPredictor
    from edgesam_core.inference.exported_predictor import preprocess
    from edgesam_core.inference.image_io import load_image
    from edgesam_core.models import build_sam

    images = [load_image(p) for p in held]
    fidelity, cases = {}, {}
    for index, job in enumerate(jobs):
        model = build_sam(job["variant"], job["checkpoint"]).eval()
        try:
            files = _litert_artifacts(model, job["variant"], Path(job["calib"]), job["count"], Path(job["work"]))
        except EdgeSamError as exc:  # e.g. exact GELU: LiteRT has no builtin Erf (needs the Flex delegate)
            fidelity[job["variant"]] = {"status": "failed", "reason": str(exc)[:300]}
            continue
        candidate = _predictor("litert", files["int8"], files["decoder"], threads)
        fidelity[job["variant"]] = int8_fidelity(SamPredictor(_copy.deepcopy(model)), candidate, images, prompts)
        if index == 0:
            cases = _latency_cases("litert", files, images[0], threads, preprocess)
    conn.send((fidelity, sorted(cases)))
    while (name := conn.recv()) is not None:
        start = time.perf_counter()
        cases[name]()
        conn.send((time.perf_counter() - start) * 1000)


def _latency_cases(runtime: str, files: dict[str, Any], image: np.ndarray, threads: int, preprocess: Any
                   ) -> dict[str, Any]:
    """``{runtime}_{fp32,int8}_encoder`` on a preprocessed image and ``{runtime}_decoder_click``."""
    cases = {}
    for precision in ("fp32", "int8"):
        predictor = _predictor(runtime, files[precision], files["decoder"], threads)
        x = preprocess(image, predictor.img_size)[0]
        cases[f"{runtime}_{precision}_encoder"] = (lambda p=predictor, x=x: p.encoder.run(None, {"image": x}))
    predictor.set_image(image)
    click = {"point_coords": np.array([[image.shape[1] // 2, image.shape[0] // 2]]), "point_labels": np.array([1]),
             "num_multimask_outputs": 3}
    cases[f"{runtime}_decoder_click"] = (lambda p=predictor, c=click: p.predict(**c))
    return cases


def _predictor(runtime: str, encoder: Path, decoder: Path, threads: int) -> Any:
    if runtime == "onnx":
        from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

        return OnnxSamPredictor(encoder, decoder, threads=threads)
    if runtime == "executorch":
        from edgesam_core.inference.executorch_predictor import ExecutorchSamPredictor

        return ExecutorchSamPredictor(encoder, decoder, threads=threads)
    from edgesam_core.inference.tflite_predictor import TfliteSamPredictor

    return TfliteSamPredictor(encoder, decoder, threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edge_sam_dyt")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--compare", default="edge_sam", help="second model for the int8 fidelity table")
    parser.add_argument("--compare-checkpoint", default=None)
    parser.add_argument("--calib", type=Path, default=None)
    parser.add_argument("--held-out", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4, help="prompts of each kind per held-out image")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-litert", action="store_true")
    parser.add_argument("--spread", type=float, default=0.1,
                        help="random weights: N(0, spread) added to the prompt path, so masks are neither empty nor "
                             "full (0.05 leaves EdgeSAM-DyT's masks empty)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from edgesam_core.export.quantize import int8_fidelity
    from edgesam_core.inference import SamPredictor
    from edgesam_core.inference.exported_predictor import preprocess
    from edgesam_core.inference.image_io import load_image

    work = scratch_dir()
    litert = (not args.no_litert and importlib.util.find_spec("tensorflow") is not None
              and importlib.util.find_spec("onnx2tf") is not None)
    calib_dir, held_paths, n_calib = calibration_split(args.calib, work, args.held_out)
    held = [load_image(p) for p in held_paths]

    models = {args.model: args.checkpoint, args.compare: args.compare_checkpoint}
    built = {v: build_model(v, c, spread=0.0 if c else args.spread) for v, c in models.items()}
    worker = None
    if litert:  # started first: it converts while this process exports
        jobs = []
        for variant, model in built.items():
            torch.save(model.state_dict(), work / f"{variant}.pth")
            jobs.append({"variant": variant, "checkpoint": str(work / f"{variant}.pth"), "calib": str(calib_dir),
                         "count": n_calib, "work": str(work / variant / "litert")})
        parent, child = multiprocessing.get_context("spawn").Pipe()
        worker = multiprocessing.get_context("spawn").Process(
            target=_litert_worker, args=(child, jobs, [str(p) for p in held_paths], args.prompts,
                                         args.threads))
        worker.start()
        child.close()  # the worker holds the only other end: its death ends recv() with EOFError
    fidelity: dict[str, dict[str, Any]] = {}
    cases: dict[str, Any] = {}
    for index, (variant, model) in enumerate(built.items()):
        files = _artifacts(model, variant, calib_dir, n_calib, work / variant)
        reference = SamPredictor(copy.deepcopy(model))
        fidelity[variant] = {"weights": models[variant] or f"random (seed 0, prompt path spread {args.spread})"}
        for runtime, paths in files.items():
            candidate = _predictor(runtime, paths["int8"], paths["decoder"], args.threads)
            fidelity[variant][runtime] = int8_fidelity(reference, candidate, held, args.prompts)
        if index == 0:
            for runtime, paths in files.items():
                cases.update(_latency_cases(runtime, paths, held[0], args.threads, preprocess))
    if worker is not None:
        remote_fidelity, remote_cases = parent.recv()
        for variant, rows in remote_fidelity.items():
            fidelity[variant]["litert"] = rows
        for name in remote_cases:
            cases[name] = (lambda n=name: parent.send(n) or parent.recv())
    # Interleaved rounds; a LiteRT case returns the milliseconds its worker measured around the call itself.
    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for fn in cases.values():
            fn()
        for _ in range(args.rounds):
            for name, fn in cases.items():
                start = time.perf_counter()
                remote = fn()
                times[name].append(remote if name.startswith("litert") else (time.perf_counter() - start) * 1000)
    if worker is not None:
        parent.send(None)
        worker.join()
    runtimes = ["onnx", "executorch"] + (["litert"] if "litert_fp32_encoder" in cases else [])
    median = {k: round(statistics.median(v), 2) for k, v in times.items()}
    ratios = {k: round(v / median["onnx_fp32_encoder"], 3) for k, v in median.items() if k.endswith("_encoder")}
    ratios.update({f"{r}_int8/{r}_fp32": round(median[f"{r}_int8_encoder"] / median[f"{r}_fp32_encoder"], 3)
                   for r in runtimes})
    latency = {"median_ms": median, "all_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
               "ratios": ratios}
    result = {"settings": {"models": list(models), "rounds": args.rounds, "threads": args.threads,
                           "runtimes": runtimes, "image_hw": list(held[0].shape[:2]),
                           "calibration_images": n_calib, "held_out_images": len(held),
                           "images": str(args.calib) if args.calib else "crops of matplotlib's sample photos",
                           "int8": "encoder int8 (ORT: static QDQ; ExecuTorch: PT2E XNNPACK; LiteRT: onnx2tf), "
                                   "decoder fp32, against fp32 PyTorch"},
              "latency": latency, "int8_fidelity": fidelity}
    for name, value in latency["median_ms"].items():
        print(f"{name:32s} {value:9.1f} ms")
    for variant, rows in fidelity.items():
        for runtime, f in rows.items():
            if isinstance(f, dict) and "mask_iou" in f:
                print(f"{variant:14s} {runtime:11s} IoU point {f['mask_iou']['point']['mean']:.3f} box "
                      f"{f['mask_iou']['box']['mean']:.3f} cosine {f['embedding_cosine']['mean']} "
                      f"(non-finite embeddings: {f['embedding_cosine'].get('non_finite', 0)})")
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
