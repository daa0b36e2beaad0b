"""The model in the browser: in-page encoder and click latency (onnxruntime-web, WASM) beside Python ONNX Runtime.

Builds a site with ``export-web`` (full-size model, random weights with the prompt path spread so masks are
not trivial, or ``--checkpoint``), serves it like ``edgesam demo --client-side`` (cross-origin isolated, so
WASM runs with ``--threads`` threads) and drives headless Chromium. Each round, in turn: the page encodes the
photo (pre-processing + encoder + per-image decoder stage, timed in the worker), Python ONNX Runtime runs
``set_image`` on the same graphs with the same threads, the page decodes a click (decoder + mask to the original
size, timed in the worker), Python runs ``predict`` for the same click. Medians and the page/Python ratios;
the click's mask is also compared (logits, IoU).

    python benchmarks/bench_web.py --out benchmarks/results/bench_web_2threads.json
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import build_model, emit_json, scratch_dir  # noqa: E402
from tests.helpers.browser import chromium, wait_body  # noqa: E402

_ENCODE_JS = """
const done = arguments[arguments.length - 1];
const c = document.getElementById('image-canvas');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
const t = performance.now();
window.edgesamWeb.call('encode', {rgba: d.data.buffer, width: c.width, height: c.height}, [d.data.buffer])
  .then((r) => done({worker: r.preprocess_ms + r.encode_ms, encoder: r.encode_ms, round_trip: performance.now() - t}));
"""
_DECODE_JS = """
const done = arguments[arguments.length - 1];
const t = performance.now();
window.edgesamWeb.call('decode', {points: [arguments[0]], labels: [1], box: null, multimask: false})
  .then((r) => done({worker: r.decode_ms + r.postprocess_ms, decoder: r.decode_ms, round_trip: performance.now() - t,
                     lowRes: window.edgesamWeb.base64(r.masks[0].lowRes), mask: window.edgesamWeb.base64(r.masks[0].mask)}));
"""


def _photo(folder: Path) -> tuple[Path, np.ndarray]:
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        image = np.asarray(im.convert("RGB"))
    path = folder / "grace_hopper.png"
    Image.fromarray(image).save(path)
    return path, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edge_sam_dyt")
    parser.add_argument("--checkpoint", default=None, help="weights (default: random, prompt path spread)")
    parser.add_argument("--spread", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--int8-calib", default=None, help="also an int8 encoder, calibrated on this folder")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from edgesam_core.demo.site_server import serve_site
    from edgesam_core.export.web_export import WebExportOptions, export_web
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    torch.set_num_threads(args.threads)
    work = scratch_dir()
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = work / f"{args.model}.pth"
        torch.save(build_model(args.model, spread=args.spread).state_dict(), checkpoint)
    site = work / "site"
    export_web(checkpoint, site, WebExportOptions(model_type=args.model, webgpu=False, int8=bool(args.int8_calib),
                                                  calib_dir=Path(args.int8_calib) if args.int8_calib else None))
    manifest = json.loads((site / "manifest.json").read_text())
    photo_path, image = _photo(work)
    encoder = site / manifest["graphs"]["encoder"]
    # The page's graphs: its encoder (fp32 or int8) and the fp32 decoder.
    decoder = encoder.with_name(encoder.name.replace("_int8_encoder", "_encoder").replace("_encoder.onnx",
                                                                                            "_decoder.onnx"))
    python = OnnxSamPredictor(encoder, decoder_path=decoder, threads=args.threads)
    click = [image.shape[1] * 0.45, image.shape[0] * 0.4]

    times: dict[str, list[float]] = {k: [] for k in ("page_encode", "python_encode", "page_click", "python_click",
                                                     "page_encode_round_trip", "page_click_round_trip",
                                                     "page_encoder_only", "page_decoder_only")}
    with serve_site(site, port=0) as server, chromium() as driver:
        driver.set_script_timeout(600)
        driver.get(server.url + f"?threads={args.threads}&backend=wasm")
        wait_body(driver, "data-status", lambda v: v in ("idle", "error"), timeout=300)
        runtime = driver.execute_script("return window.edgesamWeb.state.info.runtime;")
        driver.find_element("id", "file-input").send_keys(str(photo_path))
        wait_body(driver, "data-status", lambda v: v in ("ready", "error"), timeout=300)
        python.set_image(image)
        driver.execute_async_script(_DECODE_JS, click)  # warm-up
        python.predict(point_coords=np.array([click]), point_labels=np.array([1]), num_multimask_outputs=4,
                       best_only=True)
        last = None
        for _ in range(args.rounds):
            page = driver.execute_async_script(_ENCODE_JS)
            times["page_encode"].append(page["worker"])
            times["page_encode_round_trip"].append(page["round_trip"])
            times["page_encoder_only"].append(page["encoder"])
            start = _now()
            python.set_image(image)
            times["python_encode"].append(_now() - start)
            page = driver.execute_async_script(_DECODE_JS, click)
            times["page_click"].append(page["worker"])
            times["page_click_round_trip"].append(page["round_trip"])
            times["page_decoder_only"].append(page["decoder"])
            start = _now()
            last = python.predict(point_coords=np.array([click]), point_labels=np.array([1]),
                                  num_multimask_outputs=4, best_only=True)
            times["python_click"].append(_now() - start)
    got_logits = np.frombuffer(base64.b64decode(page["lowRes"]), np.float32).reshape(last.low_res_logits[0].shape)
    got_mask = np.frombuffer(base64.b64decode(page["mask"]), np.uint8).reshape(last.masks[0].shape).astype(bool)
    want = last.masks[0]
    medians = {k: round(statistics.median(v), 2) for k, v in times.items()}
    result = {
        "benchmark": "bench_web",
        "model": args.model, "weights": str(args.checkpoint) if args.checkpoint else f"random (spread {args.spread})",
        "int8_encoder": bool(args.int8_calib), "image": list(image.shape[:2]), "click": click,
        "threads": args.threads, "rounds": args.rounds, "page_runtime": runtime,
        "browser": driver_version(), "cpu": platform.processor() or platform.machine(),
        "median_ms": medians,
        "ratio_page_over_python": {"encode": round(medians["page_encode"] / medians["python_encode"], 2),
                                   "click": round(medians["page_click"] / medians["python_click"], 2)},
        "click_parity": {"max_abs_logit_diff": float(np.abs(got_logits - last.low_res_logits[0]).max()),
                         "max_abs_logit": float(np.abs(last.low_res_logits[0]).max()),
                         "mask_iou": float((got_mask & want).sum() / max(1, (got_mask | want).sum())),
                         "mask_area_share": float(want.mean())},
        "times_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
    }
    emit_json(result, args.out)


def _now() -> float:
    import time

    return time.perf_counter() * 1000


def driver_version() -> str:
    import subprocess

    from tests.helpers.browser import CHROMIUM

    return subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, check=False).stdout.strip()


if __name__ == "__main__":
    main()
