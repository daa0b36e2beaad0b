"""A click and everything mode: ours against a reference export, same process, interleaved, 2 threads, medians.

Reference: ``--reference DIR`` holding ``*_encoder.onnx`` + ``*_decoder.onnx`` written by upstream's own exporter
(``scripts/export_onnx_model.py``: TorchScript trace, opset 11, bilinear neck, a 3-input decoder fed a
-1-padded prompt) from the same ``--checkpoint``; without it, the graphs this project exported before the
inference form (``bench_inference_form.py``'s "previous" pair). Ours: the default ``export-onnx`` output (the
staged decoder: ``_decoder_image`` once per image, ``_decoder_prompts`` per click) and the PyTorch predictor
in its inference form.

Everything mode runs on a real photo (matplotlib's ``grace_hopper.jpg``, resized to 1024x768) with SAM's
32x32 grid, with ``--everything --fast`` (``FAST_EVERYTHING``) and with ``--proposals`` (``PROPOSAL_BOXES`` seeded
boxes: the proposals per image that ``bench_everything_prompts.py``'s simulated detector gives its scenes); its
cost is reported in reference-encoder
times measured in the same run, with where it went (``profile_s``: seconds in the encoder, the decoder calls,
the upscaling of surviving masks and the rest; ``decoder_share``). Random weights (prompt path spread so masks
vary) unless ``--checkpoint``: latency does not depend on the values, mask counts do.

    python benchmarks/bench_decoder.py --reference /scratch/upstream_export --checkpoint w.pth \\
        --out benchmarks/results/bench_decoder_edge_sam_dyt_2threads.json
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import build_model, emit_json, interleaved_rounds, ort_session, previous_pair, scratch_dir  # noqa: E402

#: The mask generator's calls into its predictor, timed in everything mode: the encoder (plus the decoder's
#: per-image stage), the decoder calls (prompt encoding, mask decoder, low-resolution scores) and the upscaling of
#: the masks that pass the low-resolution filter. The rest is the generator's own work (filters, boxes, RLE, NMS).
PROFILED_STEPS = ("set_image", "predict_low_res_torch", "upscale_masks")
#: Box proposals decoded by the ``--proposals`` case (bench_everything_prompts: 24-27 per scene of 27 objects).
PROPOSAL_BOXES = 27


def proposal_boxes(height: int, width: int, count: int = PROPOSAL_BOXES, seed: int = 0) -> np.ndarray:
    """``count`` seeded xyxy boxes of 20-400 px sides inside a ``height x width`` photo."""
    rng = np.random.default_rng(seed)
    sides = rng.uniform(20, 400, (count, 2))
    corner = rng.uniform(0, 1, (count, 2)) * (np.array([width, height]) - sides)
    return np.concatenate([corner, corner + sides], axis=1)


@contextmanager
def time_spent_in(obj: object, methods: tuple[str, ...]) -> Iterator[dict[str, float]]:
    """Seconds spent in each of ``obj``'s ``methods`` while the block runs (instance-level wrappers, removed
    after)."""
    spent = dict.fromkeys(methods, 0.0)

    def timed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return call

    for name in methods:
        setattr(obj, name, timed(name, getattr(obj, name)))
    try:
        yield spent
    finally:
        for name in methods:
            delattr(obj, name)


def _photo() -> np.ndarray:
    import matplotlib.cbook as cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as img:
        return np.asarray(img.convert("RGB").resize((1024, 768), Image.BILINEAR))


def _reference_pair(args: argparse.Namespace, model, x, emb, work: Path) -> tuple[dict[str, Path], str]:
    if args.reference:
        ref = Path(args.reference)
        return ({"encoder": next(ref.glob("*_encoder.onnx")), "decoder": next(ref.glob("*_decoder.onnx"))},
                f"upstream's exporter output in {ref}")
    return previous_pair(model, x, emb, work), "this project's export before the inference form"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="edge_sam_dyt")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--reference", default=None, help="folder with upstream's exported pair")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--everything-rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from edgesam_core.export.onnx_export import (
        OnnxExportOptions,
        export_onnx,
        prepare_image,
    )
    from edgesam_core.inference import SamAutomaticMaskGenerator, SamPredictor
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor, pack_prompts
    from edgesam_core.inference.segment_prompts import FAST_EVERYTHING

    model = build_model(args.model, args.checkpoint, spread=0.0 if args.checkpoint else 0.05)
    photo = _photo()
    x = prepare_image(model, photo)
    with torch.no_grad():
        emb = model.image_encoder(x)
    work = scratch_dir()
    reference, reference_kind = _reference_pair(args, model, x, emb, work)
    ours = export_onnx(None, OnnxExportOptions(model_type=args.model, out_dir=work, name="ours"), model=model).files
    s = {name: ort_session(path, args.threads) for name, path in {
        "ref_encoder": reference["encoder"], "ref_decoder": reference["decoder"], "our_encoder": ours["encoder"],
        "our_image_stage": ours["decoder_image"], "our_prompt_stage": ours["decoder_prompts"]}.items()}

    # One click at (500, 375) of the 1024-wide photo, plus SAM's padding point: the same input for both.
    coords, labels = pack_prompts(np.array([[[500.0, 375.0]]]) * model.img_size / 1024, np.ones((1, 1)), None)
    embedding = emb.numpy()
    ref_inputs = [i.name for i in s["ref_decoder"].get_inputs()]
    ref_feed = {"image_embeddings": embedding, "point_coords": coords, "point_labels": labels}
    ref_feed = {k: v for k, v in ref_feed.items() if k in ref_inputs}
    if set(ref_inputs) - set(ref_feed):  # the previous pair has this project's 6-input contract
        from edgesam_core.export.parity import decoder_feed

        ref_feed = decoder_feed({"coords": coords[:, :1], "labels": labels[:, :1], "box": None}, embedding, None)
    context = s["our_image_stage"].run(None, {"image_embeddings": embedding})
    stage_feed = dict(zip([i.name for i in s["our_prompt_stage"].get_inputs()], [*context, coords, labels]))
    ref_masks = s["ref_decoder"].run(["masks"], ref_feed)[0]
    our_masks = s["our_prompt_stage"].run(["masks"], stage_feed)[0]
    agreement = float(np.abs(ref_masks - our_masks).max())

    torch_predictor = SamPredictor(copy.deepcopy(model))
    torch_predictor.to_inference_form()
    onnx_predictor = OnnxSamPredictor(ours["encoder"], threads=args.threads)
    for predictor in (torch_predictor, onnx_predictor):
        predictor.set_image(photo)
    click = dict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]), num_multimask_outputs=3)

    cases = {
        "ref_encoder": lambda: s["ref_encoder"].run(None, {"image": x.numpy()}),
        "our_encoder_and_image_stage": lambda: s["our_image_stage"].run(
            None, {"image_embeddings": s["our_encoder"].run(None, {"image": x.numpy()})[0]}),
        "ref_decoder_click": lambda: s["ref_decoder"].run(None, ref_feed),
        "our_prompt_stage_click": lambda: s["our_prompt_stage"].run(None, stage_feed),
        "onnx_predict": lambda: onnx_predictor.predict(**click),
        "torch_predict": lambda: torch_predictor.predict(**click),
        # The work of the ONNX prompt stage in PyTorch: the click (plus SAM's padding point) to scores and
        # 256x256 logits, nothing upscaled.
        "torch_low_res_click": lambda: torch_predictor.predict_low_res_torch(
            torch.tensor([[[500.0, 375.0]]]) * model.img_size / 1024, torch.ones(1, 1, dtype=torch.long), 3, False),
    }
    times = interleaved_rounds(cases, args.rounds)
    median = {name: statistics.median(v) for name, v in times.items()}

    boxes = proposal_boxes(*photo.shape[:2])
    everything = {
        "onnx_32x32": (onnx_predictor, {}, None), "torch_32x32": (torch_predictor, {}, None),
        "onnx_fast": (onnx_predictor, FAST_EVERYTHING, None), "torch_fast": (torch_predictor, FAST_EVERYTHING, None),
        "onnx_boxes": (onnx_predictor, {}, boxes), "torch_boxes": (torch_predictor, {}, boxes),
    }
    every: dict[str, dict] = {}
    for _ in range(args.everything_rounds):
        for name, (predictor, options, prompt_boxes) in everything.items():
            generator = SamAutomaticMaskGenerator(predictor, **options)
            with time_spent_in(predictor, PROFILED_STEPS) as spent:
                start = time.perf_counter()
                records = generator.generate(photo, boxes=prompt_boxes)
                seconds = time.perf_counter() - start
            entry = every.setdefault(name, {"seconds": [], "masks": len(records), "profile_s": []})
            entry["seconds"].append(round(seconds, 3))
            entry["profile_s"].append({**{k: round(v, 3) for k, v in spent.items()},
                                       "rest": round(seconds - sum(spent.values()), 3)})
    for entry in every.values():
        entry["median_s"] = statistics.median(entry["seconds"])
        entry["reference_encoder_times"] = round(entry["median_s"] * 1000 / median["ref_encoder"], 1)
        decoder = [p["predict_low_res_torch"] / s for p, s in zip(entry["profile_s"], entry["seconds"])]
        entry["decoder_share"] = round(statistics.median(decoder), 3)

    ratios = {
        "prompt_stage_click/ref_decoder_click": median["our_prompt_stage_click"] / median["ref_decoder_click"],
        "torch_predict/onnx_predict": median["torch_predict"] / median["onnx_predict"],
        "torch_predict/prompt_stage_click": median["torch_predict"] / median["our_prompt_stage_click"],
        "torch_low_res_click/prompt_stage_click": median["torch_low_res_click"] / median["our_prompt_stage_click"],
        "our_encoder_and_image_stage/ref_encoder": median["our_encoder_and_image_stage"] / median["ref_encoder"],
    }
    result = {"settings": vars(args) | {"out": str(args.out) if args.out else None,
                                        "image": "grace_hopper.jpg resized to 1024x768",
                                        "reference": reference_kind},
              "ref_vs_ours_click_max_abs_diff": agreement,
              "median_ms": {k: round(v, 2) for k, v in median.items()},
              "all_ms": {k: [round(t, 2) for t in v] for k, v in times.items()},
              "ratios": {k: round(v, 3) for k, v in ratios.items()},
              "everything": every}
    for name, value in result["median_ms"].items():
        print(f"{name:32s} {value:9.1f} ms")
    for name, value in result["ratios"].items():
        print(f"{name:42s} {value:.3f}")
    for name, entry in every.items():
        print(f"everything {name:12s} {entry['median_s']:7.2f} s  {entry['masks']:4d} masks  "
              f"{entry['reference_encoder_times']:6.1f} reference-encoder times  "
              f"decoder calls {100 * entry['decoder_share']:.0f} %  (last run, s: {entry['profile_s'][-1]})")
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
