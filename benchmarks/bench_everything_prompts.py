"""What everything mode's prompt strategies find: SAM's 32x32 grid, a 16x16 grid, ``--fast`` and box proposals
(``--proposals``), with an oracle.

With random weights no candidate mask passes the generator's filters, so a strategy's *recall* cannot be read off
the real model here. What a strategy decides is which points get decoded; this benchmark measures that part
exactly: the real :class:`SamAutomaticMaskGenerator` (grids, coarse-to-fine order, skipping of covered points,
point budget, filters, NMS, crop-edge rule) runs over an *oracle predictor* that answers a point with the scene's
true masks under it (SAM's multimask order: the smallest object containing the point, then the next larger one,
then the largest; background points get no mask). An object is found when an output mask matches it with IoU >=
0.9. So the numbers are each strategy's upper bound: what a perfect decoder would give it.

Scenes: a real photo (matplotlib's ``grace_hopper.jpg``, resized to 1024x768) with ``--objects`` flat-coloured
discs, squares and triangles pasted on (radius log-uniform in [``--min-radius``, 160] px), a third of them holding
a smaller shape inside (parts inside wholes, which ``--fast`` trades away). Reported per strategy: decoder prompts
run (its cost: ``bench_decoder.py`` times one prompt), and objects found, by size (radius < 24 px, < 64 px,
larger) and for the nested parts.

Box proposals: the oracle answers a box with the object whose bounding box overlaps it best (box IoU >= 0.5), as
SAM answers a box with the object filling it. The boxes come from a *simulated* detector, since none runs here:
``boxes_every_object`` gives every object's true box (what the generator keeps of perfect proposals), and
``boxes_detector`` an assumed detector that finds 60 % / 85 % / 95 % of small / medium / large objects, moves each
side by N(0, 5 % of the box side) and adds 10 % false boxes. Its found objects follow from those assumptions; what
the benchmark measures is the cost (one decoder prompt per box) and that the generator's filters and NMS keep
what the boxes ask for (parts inside wholes included).

    python benchmarks/bench_everything_prompts.py --out benchmarks/results/bench_everything_prompts.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit_json  # noqa: E402
from edgesam_core.inference.segment_prompts import FAST_EVERYTHING  # noqa: E402

#: The generator's options per strategy (the batch size changes no result where no point is skipped).
STRATEGIES = {
    "sam_32x32": {"points_per_side": 32, "points_per_batch": 16},
    "grid_16x16": {"points_per_side": 16, "points_per_batch": 16},
    "fast": dict(FAST_EVERYTHING),  # as `segment --everything --fast`
    "fast_no_budget": {**FAST_EVERYTHING, "max_points": None},
}
SIZE_BUCKETS = (("small", 0, 24), ("medium", 24, 64), ("large", 64, 1e9))
#: Simulated detectors for the box strategy: detection rate per size bucket, box jitter (fraction of the side,
#: standard deviation per coordinate) and false boxes (fraction of the objects).
BOX_STRATEGIES = {
    "boxes_every_object": {"found": (1.0, 1.0, 1.0), "jitter": 0.0, "false_boxes": 0.0},
    "boxes_detector": {"found": (0.6, 0.85, 0.95), "jitter": 0.05, "false_boxes": 0.1},
}


def make_scene(rng: np.random.Generator, photo: np.ndarray, objects: int,
               min_radius: float) -> tuple[np.ndarray, list[dict]]:
    """A photo with pasted shapes; returns the image and its objects (``mask``, ``radius``, ``part``), each
    object's mask being its visible pixels."""
    from PIL import Image, ImageDraw

    h, w = photo.shape[:2]
    label = np.zeros((h, w), dtype=np.int32)  # which object each pixel shows (0: the photo)
    image = photo.copy()
    info: list[dict] = []

    def paste(cx: float, cy: float, r: float, whole: int | None = None) -> int | None:
        """Paste a shape (``whole``: the label of the object it is a part of); its label, or None if tiny."""
        kind = rng.integers(3)
        if kind == 0:
            angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        else:
            angles = rng.uniform(0, 2 * np.pi) + np.arange(4 if kind == 1 else 3) * 2 * np.pi / (4 if kind == 1 else 3)
        polygon = [(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a in angles]
        canvas = Image.new("L", (w, h))
        ImageDraw.Draw(canvas).polygon(polygon, fill=1)
        inside = np.asarray(canvas, dtype=bool)
        if inside.sum() < 16:
            return None
        info.append({"radius": float(r), "part": whole is not None, "whole": whole})
        label[inside] = len(info)
        image[inside] = rng.integers(0, 256, 3)
        return len(info)

    for _ in range(objects):
        r = float(np.exp(rng.uniform(np.log(min_radius), np.log(160))))
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        whole = paste(cx, cy, r)
        if rng.random() < 1 / 3 and r >= 3 * min_radius and whole is not None:  # a part inside this whole
            pr = r * rng.uniform(0.2, 0.4)
            paste(cx + rng.uniform(-0.4, 0.4) * r, cy + rng.uniform(-0.4, 0.4) * r, pr, whole=whole)
    masks = {index: label == index for index in range(1, len(info) + 1)}
    # A whole's mask is the whole object, its part included (what a person would outline).
    for index, entry in enumerate(info, start=1):
        if entry["whole"] is not None:
            masks[entry["whole"]] |= masks[index]
    found = [{"radius": entry["radius"], "part": entry["part"], "mask": masks[index]}
             for index, entry in enumerate(info, start=1) if (label == index).sum() >= 16]
    return image, found


class OraclePredictor:
    """Answers a point prompt with the scene's true masks under it, as full-resolution logits (+-8): the
    generator's filters pass them and its upscaling is the identity. Counts the prompts it is asked."""

    mask_threshold = 0.0
    device = "cpu"

    def __init__(self, objects: list[dict]) -> None:
        from edgesam_core.data.transforms import ResizeLongestSide

        self.objects = sorted(objects, key=lambda o: int(o["mask"].sum()))  # smallest first: SAM's order
        self.boxes = torch.tensor([mask_box(o["mask"]) for o in self.objects], dtype=torch.float64).reshape(-1, 4)
        self.transform = ResizeLongestSide(1024)
        self.prompts = 0
        self.size: tuple[int, int] | None = None

    def set_image(self, image: np.ndarray) -> None:
        self.size = (int(image.shape[0]), int(image.shape[1]))

    def reset_image(self) -> None:
        self.size = None

    def predict_low_res_torch(self, point_coords: torch.Tensor | None, point_labels: torch.Tensor | None,
                              num_multimask_outputs: int, use_stability_score: bool,
                              boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        assert self.size is not None
        h, w = self.size
        scale = 1024 / max(h, w)
        if boxes is not None:  # the object whose box overlaps best (IoU >= 0.5), else no mask
            from edgesam_core.inference.amg import box_iou

            logits = torch.full((len(boxes), 1, h, w), -8.0)
            scores = torch.zeros(len(boxes), 1)
            if len(self.boxes):
                overlap = box_iou(boxes.double() / scale, self.boxes)
                best, index = overlap.max(dim=1)
                for i in range(len(boxes)):
                    if best[i] >= 0.5:
                        logits[i, 0][torch.from_numpy(self.objects[int(index[i])]["mask"])] = 8.0
                        scores[i, 0] = 1.0
            self.prompts += len(boxes)
            return scores, logits
        xy = (point_coords[:, 0, :] / scale).round().long()
        logits = torch.full((len(xy), num_multimask_outputs, h, w), -8.0)
        scores = torch.zeros(len(xy), num_multimask_outputs)
        for i, (x, y) in enumerate(xy.tolist()):
            x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
            under = [o for o in self.objects if o["mask"][y, x]]
            for k in range(min(num_multimask_outputs, len(under))):
                logits[i, k][torch.from_numpy(under[k]["mask"])] = 8.0
                scores[i, k] = 1.0
            if under:  # SAM fills its remaining outputs with the largest object again
                for k in range(len(under), num_multimask_outputs):
                    logits[i, k] = logits[i, len(under) - 1]
                    scores[i, k] = 1.0
        self.prompts += len(xy)
        return scores, logits

    def upscale_masks(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def predict_torch(self, point_coords: torch.Tensor, point_labels: torch.Tensor, num_multimask_outputs: int = 3,
                      return_logits: bool = True, use_stability_score: bool = True) -> tuple[torch.Tensor, ...]:
        """The predictor API the generator recognises a predictor by (it calls the low-resolution path)."""
        scores, logits = self.predict_low_res_torch(point_coords, point_labels, num_multimask_outputs,
                                                    use_stability_score)
        return (logits if return_logits else logits > 0), scores, logits


def mask_box(mask: np.ndarray) -> list[float]:
    """A mask's bounding box, xyxy pixels (right and bottom edges exclusive)."""
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def detector_boxes(rng: np.random.Generator, objects: list[dict], size: tuple[int, int], found: tuple[float, ...],
                   jitter: float, false_boxes: float) -> np.ndarray:
    """A simulated detector's boxes for a scene (see :data:`BOX_STRATEGIES`), clipped to the image."""
    h, w = size
    boxes = []
    for obj in objects:
        bucket = next(k for k, (_, lo, hi) in enumerate(SIZE_BUCKETS) if lo <= obj["radius"] < hi)
        if rng.random() < found[bucket]:
            x0, y0, x1, y1 = mask_box(obj["mask"])
            sides = np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
            boxes.append(np.array([x0, y0, x1, y1]) + rng.normal(0, jitter, 4) * sides)
    for _ in range(int(round(false_boxes * len(objects)))):
        cx, cy, bw, bh = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 200), rng.uniform(10, 200)
        boxes.append(np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]))
    out = np.clip(np.array(boxes).reshape(-1, 4), 0, [w, h, w, h])
    return out[(out[:, 2] > out[:, 0] + 1) & (out[:, 3] > out[:, 1] + 1)]


def recall(records: list[dict], objects: list[dict]) -> dict[str, list[int]]:
    """``{bucket: [found, total]}`` for the size buckets, the nested parts and all objects (IoU >= 0.9)."""
    from edgesam_core.inference.amg import rle_to_mask

    masks = [r["segmentation"] if isinstance(r["segmentation"], np.ndarray) else rle_to_mask(r["segmentation"])
             for r in records]
    out: dict[str, list[int]] = {name: [0, 0] for name, *_ in SIZE_BUCKETS}
    out["parts"] = [0, 0]
    out["all"] = [0, 0]
    for obj in objects:
        gt = obj["mask"]
        hit = any((gt & m).sum() / (gt | m).sum() >= 0.9 for m in masks)
        bucket = next(name for name, lo, hi in SIZE_BUCKETS if lo <= obj["radius"] < hi)
        for key in (bucket, "all") + (("parts",) if obj["part"] else ()):
            out[key][0] += int(hit)
            out[key][1] += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--objects", type=int, default=24, help="pasted objects per scene (before parts)")
    parser.add_argument("--min-radius", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from matplotlib import cbook
    from PIL import Image

    from edgesam_core.inference import SamAutomaticMaskGenerator

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        photo = np.asarray(im.convert("RGB").resize((1024, 768)))
    rng = np.random.default_rng(args.seed)
    detector_rng = np.random.default_rng([args.seed, 1])  # its own stream: the scenes stay those of the grids
    totals = {name: {"prompts": 0, "found": {}} for name in [*STRATEGIES, *BOX_STRATEGIES]}
    for _ in range(args.scenes):
        image, objects = make_scene(rng, photo, args.objects, args.min_radius)
        runs = [(name, opts, None) for name, opts in STRATEGIES.items()]
        runs += [(name, {"points_per_batch": 16}, detector_boxes(detector_rng, objects, image.shape[:2], **spec))
                 for name, spec in BOX_STRATEGIES.items()]
        for name, opts, boxes in runs:
            oracle = OraclePredictor(objects)
            records = SamAutomaticMaskGenerator(oracle, **opts).generate(image, boxes=boxes)
            totals[name]["prompts"] += oracle.prompts
            for key, (hit, count) in recall(records, objects).items():
                acc = totals[name]["found"].setdefault(key, [0, 0])
                acc[0] += hit
                acc[1] += count
    result = {"settings": vars(args) | {"out": str(args.out) if args.out else None,
                                        "image": "grace_hopper.jpg resized to 1024x768, shapes pasted",
                                        "strategies": STRATEGIES, "box_strategies": BOX_STRATEGIES},
              "strategies": {}}
    print(f"{'strategy':16s} {'prompts/image':>13s}  " + "  ".join(f"{k:>14s}" for k in totals["sam_32x32"]["found"]))
    for name, entry in totals.items():
        found = {k: {"found": v[0], "objects": v[1], "recall": round(v[0] / max(v[1], 1), 3)}
                 for k, v in entry["found"].items()}
        result["strategies"][name] = {"prompts_per_image": entry["prompts"] / args.scenes, "objects": found}
        print(f"{name:16s} {entry['prompts'] / args.scenes:13.1f}  "
              + "  ".join(f"{v['found']:5d}/{v['objects']:<4d}{v['recall']:5.2f}" for v in found.values()))
    emit_json(result, args.out)


if __name__ == "__main__":
    main()
