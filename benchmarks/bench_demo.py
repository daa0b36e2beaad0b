"""Click-to-mask latency of ``edgesam demo`` over HTTP on this CPU: the full round trip a browser sees.

Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_demo.py --out bench_demo.json
    OMP_NUM_THREADS=2 python benchmarks/bench_demo.py --onnx --clicks 40 --out bench_demo.json

The model is full-size ``edge_sam_dyt`` with random weights (``torch.manual_seed(--seed)``, decoder
perturbed by ``--spread`` so masks depend on the click and have realistic, partial shapes; latency does not
depend on the values otherwise) saved as a checkpoint and opened the way the CLI opens it. A
1024x768 synthetic image is uploaded once; then ``--clicks`` single foreground clicks at different places
(after ``--warmup`` clicks) go through one keep-alive HTTP connection, like the page's ``fetch``. Each
round trip is timed from sending the request to having parsed the JSON answer that carries the PNG
mask(s). ``decode_ms`` is the server's own prompt-encoder + mask-decoder + upscaling time, ``server_ms``
adds mask selection, PNG/RLE encoding; the rest is HTTP and JSON. ``--onnx`` repeats it with the ONNX
Runtime pair exported from the same weights.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import build_model, emit_json  # noqa: E402 - after the path set-up


def _stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {"median": round(statistics.median(ordered), 2), "p90": round(p90, 2), "min": round(ordered[0], 2),
            "max": round(ordered[-1], 2), "n": len(ordered)}


def _cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat; None elsewhere): other work on the machine."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(1.0 - (idle1 - idle0) / max(1, total1 - total0), 3)


def _clicks(width: int, height: int, count: int) -> list[list[float]]:
    """``count`` deterministic click positions spread over the image (a 7x5 grid, cycled)."""
    grid = [[width * (i + 0.5) / 7, height * (j + 0.5) / 5] for j in range(5) for i in range(7)]
    return [grid[k % len(grid)] for k in range(count)]


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, content_type: str) -> dict[str, Any]:
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    payload = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {payload}")
    return payload


def _measure(session: Any, image_png: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """Serve ``session``, upload once, time the clicks of each mode."""
    from edgesam_core.demo.server import serve

    with serve(session, port=0) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
        start = time.perf_counter()
        info = _post(conn, "/api/image", image_png, "image/png")
        upload_ms = (time.perf_counter() - start) * 1000.0
        report: dict[str, Any] = {"upload_round_trip_ms": round(upload_ms, 1), "encode_ms": info["encode_ms"],
                                  "modes": {}}
        for mode in args.modes.split(","):
            multimask = mode == "multimask"
            points = _clicks(info["width"], info["height"], args.warmup + args.clicks)
            round_trip, decode, server_ms, sizes, areas = [], [], [], [], []
            for k, point in enumerate(points):
                body = json.dumps({"image_id": info["image_id"], "points": [point], "labels": [1],
                                   "multimask": multimask}).encode()
                start = time.perf_counter()
                answer = _post(conn, "/api/segment", body, "application/json")
                elapsed = (time.perf_counter() - start) * 1000.0
                if k < args.warmup:
                    continue
                round_trip.append(elapsed)
                decode.append(answer["decode_ms"])
                server_ms.append(answer["total_ms"])
                sizes.append(sum(len(m["png"]) for m in answer["masks"]))
                areas.append(answer["masks"][answer["best"]]["area"] / (info["width"] * info["height"]))
            report["modes"][mode] = {
                "masks_per_answer": len(answer["masks"]),
                "round_trip_ms": _stats(round_trip),
                "decode_ms": _stats(decode),
                "server_ms": _stats(server_ms),
                "png_base64_chars_median": int(statistics.median(sizes)),
                "best_mask_area_fraction_median": round(statistics.median(areas), 3),
            }
        conn.close()
        report["encode_count"] = session.encode_count
        report["decode_count"] = session.decode_count
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="edge_sam_dyt")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spread", type=float, default=0.2)
    parser.add_argument("--modes", default="best-of-4,multimask",
                        help="comma-separated: best-of-4 (the page's default click) and/or multimask (3 masks)")
    parser.add_argument("--onnx", action="store_true", help="also measure the exported ONNX Runtime pair")
    parser.add_argument("--target-ms", type=float, default=100.0)
    parser.add_argument("--out", default=None, help="JSON output file (default: stdout only)")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from edgesam_core.demo.session import DemoSession
    from edgesam_core.export.parity import synthetic_image

    torch.set_num_threads(args.threads)
    image = synthetic_image(768, 1024)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    result: dict[str, Any] = {
        "environment": {
            "cpu": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count(),
            "threads": args.threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "cpu_busy_before_start": _cpu_busy_fraction(), "torch": torch.__version__,
            "numpy": np.__version__, "python": platform.python_version(),
        },
        "model": args.model,
        "weights": f"random, torch.manual_seed({args.seed}), decoder spread {args.spread}",
        "image": "1024x768 synthetic (edgesam_core.export.parity.synthetic_image)",
        "clicks": args.clicks, "warmup": args.warmup, "target_ms": args.target_ms, "backends": {},
    }
    model = build_model(args.model, None, args.seed, args.spread)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / f"{args.model}.pth"
        torch.save(model.state_dict(), checkpoint)
        session = DemoSession.from_checkpoint(checkpoint, model=args.model)
        result["backends"]["pytorch"] = _measure(session, buffer.getvalue(), args)
        if args.onnx:
            from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
            from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

            files = export_onnx(None, OnnxExportOptions(model_type=args.model, out_dir=Path(tmp), name="bench"),
                                model=model).files
            predictor = OnnxSamPredictor(files["encoder"], files["decoder"], threads=args.threads,
                                         providers=["CPUExecutionProvider"])
            result["backends"]["onnxruntime"] = _measure(DemoSession(predictor, model_name="onnx"),
                                                         buffer.getvalue(), args)
    result["environment"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    default_mode = args.modes.split(",")[0]
    torch_median = result["backends"]["pytorch"]["modes"][default_mode]["round_trip_ms"]["median"]
    result["pytorch_meets_target"] = torch_median < args.target_ms
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
