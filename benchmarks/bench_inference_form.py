"""Ours against the previous version, same process, interleaved rounds, 2 threads, medians and ratios.

Reference ("previous"): the graph this project's exporter wrote before the inference form (RepViT folded only,
opset 17: tanh-GELU as elementwise nodes, cubic ``Resize``, ``ConvTranspose``), and the plain eager PyTorch
model from ``build_sam``. Ours: the default ``export-onnx`` graph (inference form, opset 20) and the predictor's
PyTorch inference form (folded, channels-last). Random weights: latency does not depend on their values.

    python benchmarks/bench_inference_form.py --rounds 7 --out benchmarks/results/bench_inference_form_2threads.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit_json, interleaved_rounds, ort_session, previous_pair, scratch_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edge_sam_dyt")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx, prepare_image
    from edgesam_core.export.parity import decoder_feed, synthetic_image
    from edgesam_core.inference import SamPredictor
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    model = build_sam(args.model).eval()
    image = synthetic_image(768, 1024)
    x = prepare_image(model, image)
    with torch.no_grad():
        emb = model.image_encoder(x)
    work = scratch_dir()
    previous = previous_pair(model, x, emb, work)
    ours = export_onnx(None, OnnxExportOptions(model_type=args.model, out_dir=work, name="ours"), model=model).files
    sessions = {name: ort_session(path, args.threads) for name, path in
                {"onnx_encoder_previous": previous["encoder"], "onnx_encoder_ours": ours["encoder"],
                 "onnx_decoder_previous": previous["decoder"], "onnx_decoder_ours": ours["decoder"]}.items()}
    click = {"coords": np.array([[[500.0, 375.0]]], np.float32) * model.img_size / 1024,
             "labels": np.ones((1, 1), np.float32), "box": None}
    dec_feed = decoder_feed(click, emb.numpy(), None)
    plain = SamPredictor(copy.deepcopy(model))
    fast = SamPredictor(copy.deepcopy(model))
    fast.to_inference_form()
    for p in (plain, fast):
        p.set_image(image)
    point = dict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]), num_multimask_outputs=4,
                 best_only=True, use_stability_score=True)

    cases = {
        "onnx_encoder_previous": lambda: sessions["onnx_encoder_previous"].run(None, {"image": x.numpy()}),
        "onnx_encoder_ours": lambda: sessions["onnx_encoder_ours"].run(None, {"image": x.numpy()}),
        "torch_encoder_eager": lambda: plain.set_image(image),
        "torch_encoder_ours": lambda: fast.set_image(image),
        "onnx_decoder_previous": lambda: sessions["onnx_decoder_previous"].run(None, dec_feed),
        "onnx_decoder_ours": lambda: sessions["onnx_decoder_ours"].run(None, dec_feed),
        "torch_predict_eager": lambda: plain.predict(**point),
        "torch_predict_ours": lambda: fast.predict(**point),
    }
    times = interleaved_rounds(cases, args.rounds)
    median = {name: statistics.median(v) for name, v in times.items()}
    ratios = {
        "onnx_encoder_ours/previous": median["onnx_encoder_ours"] / median["onnx_encoder_previous"],
        "torch_encoder_ours/eager": median["torch_encoder_ours"] / median["torch_encoder_eager"],
        "onnx_decoder_ours/previous": median["onnx_decoder_ours"] / median["onnx_decoder_previous"],
        "torch_predict_ours/onnx_decoder_ours": median["torch_predict_ours"] / median["onnx_decoder_ours"],
    }
    result = {"settings": vars(args) | {"out": str(args.out) if args.out else None, "image": "1024x768 synthetic"},
              "median_ms": {k: round(v, 2) for k, v in median.items()},
              "all_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
              "ratios": {k: round(v, 3) for k, v in ratios.items()}}
    for name, value in result["median_ms"].items():
        print(f"{name:28s} {value:9.1f} ms")
    for name, value in result["ratios"].items():
        print(f"{name:38s} {value:.3f}")
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
