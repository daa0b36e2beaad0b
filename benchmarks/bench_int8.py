"""ONNX Runtime int8 encoder against the fp32 encoder it was made from, and against the previous int8 recipe.

One process, 2 threads, interleaved rounds, medians. Full-size EdgeSAM-DyT (random weights unless
``--checkpoint``, prompt path spread so masks are neither empty nor full), exported by ``export-onnx`` and
quantised by ``quantize`` on crops of matplotlib's sample photos (``--calib`` for your own). Three encoders on
the same preprocessed photo:

- ``fp32``: the exported encoder;
- ``int8``: today's ``quantize`` (GELUs as ``x * sigmoid(1.702 x)`` on uint8 lookup tables, squeeze-excite
  means as ``GlobalAveragePool``: all run on uint8 by ONNX Runtime);
- ``int8_previous``: the recipe before the GELU rewrite (``quantize --exact-gelu``: each GELU in float32
  between a dequantisation and a quantisation).

Also the int8 fidelity of both against fp32 PyTorch on held-out photos (mask IoU, embedding cosine), and an
ONNX Runtime profile of today's int8 encoder by operator type (where the time goes).

    python benchmarks/bench_int8.py --out benchmarks/results/bench_int8_2threads.json
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import build_model, calibration_split, emit_json, ort_session, scratch_dir  # noqa: E402


def _profile_by_op(path: Path, x: np.ndarray, threads: int, runs: int = 3) -> dict[str, float]:
    """Milliseconds per run of each operator type (ONNX Runtime's profiler, after one warm-up run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(None, {"image": x})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    return {op: round(us / 1000 / (runs + 1), 2) for op, us in per_op.most_common()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edge_sam_dyt")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--calib", type=Path, default=None, help="images (sorted; the last --held-out held out)")
    parser.add_argument("--held-out", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spread", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from edgesam_core.export import quantize
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.inference import SamPredictor
    from edgesam_core.inference.exported_predictor import preprocess
    from edgesam_core.inference.image_io import load_image
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    work = scratch_dir()
    calib, held_paths, n_calib = calibration_split(args.calib, work, args.held_out)
    held = [load_image(p) for p in held_paths]
    model = build_model(args.model, args.checkpoint, spread=0.0 if args.checkpoint else args.spread)
    files = export_onnx(None, OnnxExportOptions(model_type=model.variant, out_dir=work / "onnx", name="m"),
                        model=model).files

    def int8(out: str, exact_gelu: bool) -> Path:
        opts = quantize.QuantizeOptions(calib_dir=calib, out_dir=work / out, max_calib=n_calib, max_eval=1,
                                        prompts_per_image=1, latency_runs=1, warmup_runs=0, exact_gelu=exact_gelu)
        return Path(quantize.quantize_pair(files["encoder"], opts).int8_encoder)

    encoders = {"fp32": files["encoder"], "int8": int8("int8", False), "int8_previous": int8("int8_previous", True)}

    reference = SamPredictor(copy.deepcopy(model))
    fidelity = {name: quantize.int8_fidelity(reference, OnnxSamPredictor(path, files["decoder"], threads=args.threads),
                                             held, args.prompts)
                for name, path in encoders.items() if name != "fp32"}
    x = preprocess(held[0], model.image_encoder.img_size)[0]
    sessions = {name: ort_session(path, args.threads) for name, path in encoders.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for session in sessions.values():
        session.run(None, {"image": x})
    for _ in range(args.rounds):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"image": x})
            times[name].append((time.perf_counter() - start) * 1000)
    median = {name: round(statistics.median(v), 2) for name, v in times.items()}
    result = {
        "settings": {"model": args.model, "weights": args.checkpoint or f"random (seed 0, prompt spread {args.spread})",
                     "rounds": args.rounds, "threads": args.threads, "image_hw": list(held[0].shape[:2]),
                     "calibration_images": n_calib, "held_out_images": len(held)},
        "median_ms": median,
        "all_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "ratios": {"int8/fp32": round(median["int8"] / median["fp32"], 3),
                   "int8_previous/fp32": round(median["int8_previous"] / median["fp32"], 3),
                   "int8/int8_previous": round(median["int8"] / median["int8_previous"], 3)},
        "int8_fidelity_vs_fp32_pytorch": fidelity,
        "profile_ms_by_op": {name: _profile_by_op(encoders[name], x, args.threads)
                             for name in ("int8", "int8_previous")},
    }
    for name, value in median.items():
        print(f"{name:14s} {value:8.1f} ms")
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
