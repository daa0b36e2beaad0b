"""SAM's mask postprocessing per click: ours (``mask_logits_positive``) against upstream's order of
``F.interpolate`` calls (the whole 1024x1024 square, the crop, the photo's size, then the threshold), same
process, interleaved shuffled rounds, 2 threads, medians, ratios. The outputs are checked equal first.

Three 256x256 masks (a multimask click) for a 1024x768 photo and a 4032x3024 phone photo, of two kinds:
``shapes`` (smooth logits whose zero set is a few objects' outlines, as a trained model's are) and
``random-weights`` (the decoder of a randomly initialised EdgeSAM-DyT on a real photo: sign changes at
nearly every pixel, the boundary shortcut declines them; what the other benchmarks' masks look like).

    python benchmarks/bench_mask_postprocess.py --out benchmarks/results/bench_mask_postprocess_2threads.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import build_model, emit_json, interleaved_rounds  # noqa: E402


def upstream_postprocess(low_res: torch.Tensor, input_size: tuple[int, int],
                         original_size: tuple[int, int]) -> torch.Tensor:
    """segment-anything's ``Sam.postprocess_masks`` followed by its threshold."""
    masks = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    masks = F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
    return masks > 0.0


def shape_logits() -> torch.Tensor:
    """Three masks of a 4:3 photo's frame: a disc, the disc with a second one, and a ring around a square."""
    y, x = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    disc = 30 - ((y - 90) ** 2 + (x - 120) ** 2).sqrt()
    second = 18 - ((y - 140) ** 2 + (x - 60) ** 2).sqrt()
    square = 40 - torch.maximum((y - 100).abs(), (x - 190).abs())
    ring = torch.minimum(((y - 100) ** 2 + (x - 190) ** 2).sqrt() - 48, 60 - ((y - 100) ** 2 + (x - 190) ** 2).sqrt())
    return torch.stack([disc, torch.maximum(disc, second), torch.maximum(square, ring)])[None] * 0.5


def random_weight_logits() -> torch.Tensor:
    """A click's three masks from a random EdgeSAM-DyT on matplotlib's photo, resized to 1024x768."""
    from bench_decoder import _photo

    from edgesam_core.inference import SamPredictor

    predictor = SamPredictor(build_model("edge_sam_dyt", None, spread=0.05))
    predictor.to_inference_form()
    predictor.set_image(_photo())
    result = predictor.predict(point_coords=np.array([[500, 375]]), point_labels=np.array([1]),
                               num_multimask_outputs=3)
    return torch.from_numpy(result.low_res_logits)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from edgesam_core.models.mask_resize import mask_logits_positive

    kinds = {"shapes": shape_logits(), "random-weights": random_weight_logits()}
    photos = {"1024x768": ((768, 1024), (768, 1024)), "4032x3024": ((768, 1024), (3024, 4032))}
    cases, checks = {}, {}
    for kind, logits in kinds.items():
        for photo, (input_size, original_size) in photos.items():
            ours = mask_logits_positive(logits, 1024, input_size, original_size)
            checks[f"{kind} {photo}"] = bool(torch.equal(ours, upstream_postprocess(logits, input_size, original_size)))
            cases[f"ours {kind} {photo}"] = (
                lambda lg=logits, i=input_size, o=original_size: mask_logits_positive(lg, 1024, i, o))
            cases[f"upstream {kind} {photo}"] = (
                lambda lg=logits, i=input_size, o=original_size: upstream_postprocess(lg, i, o))
    if not all(checks.values()):
        raise SystemExit(f"outputs differ: {checks}")
    times = interleaved_rounds(cases, args.rounds)
    median = {name: round(statistics.median(v), 3) for name, v in times.items()}
    ratios = {key: round(median[f"ours {key}"] / median[f"upstream {key}"], 3) for key in checks}
    for key, ratio in ratios.items():
        print(f"{key:28s} ours {median[f'ours {key}']:8.2f} ms  upstream {median[f'upstream {key}']:8.2f} ms  "
              f"ratio {ratio:.3f}")
    emit_json({"settings": vars(args) | {"out": str(args.out) if args.out else None},
               "equal_masks": checks, "median_ms": median, "ratios_ours_over_upstream": ratios,
               "all_ms": {k: [round(t, 3) for t in v] for k, v in times.items()}}, args.out)


if __name__ == "__main__":
    main()
