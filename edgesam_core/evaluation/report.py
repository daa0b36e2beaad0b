"""Write evaluation results: JSON, table rows, an mIoU-vs-clicks plot and COCO results for pycocotools."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..deps import require
from .evaluate import EvalReport, MaskRecord
from .metrics import SIZE_BUCKETS


def write_json(data: Any, path: str | Path, indent: int | None = 2) -> Path:
    """Write ``data`` as JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _cell(miou: float, count: int) -> str:
    return "-" if math.isnan(miou) else f"{miou:.2f} ({count})"


def table_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    """Column names and one row per click, each cell ``mIoU (prompt count)``, ready for a rich Table."""
    columns = ["click", "all", *SIZE_BUCKETS]
    rows = []
    for k, entry in enumerate(report.clicks):
        rows.append([str(k + 1)] + [_cell(entry[name].miou, entry[name].count) for name in ("all", *SIZE_BUCKETS)])
    return columns, rows


def plot_miou_vs_clicks(report: EvalReport, path: str | Path, title: str | None = None) -> Path:
    """Save a PNG of mIoU against the click number, overall and per size bucket (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clicks = list(range(1, len(report.clicks) + 1))
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    try:
        for name, style in zip(("all", *SIZE_BUCKETS), ("-o", "--s", "--^", "--D")):
            values = [entry[name].miou for entry in report.clicks]
            if all(math.isnan(v) for v in values):
                continue
            count = report.clicks[0][name].count
            ax.plot(clicks, values, style, label=f"{name} (n={count})", linewidth=2 if name == "all" else 1)
        ax.set_xlabel("click (1 = initial prompt)")
        ax.set_ylabel("mIoU")
        ax.set_xticks(clicks)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        ax.set_title(title or f"mIoU vs clicks ({report.settings.get('prompt', '')} prompt)")
        fig.tight_layout()
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


class CocoResultsWriter:
    """Collects kept masks as COCO results, one file per click, plus the matching GT subset.

    ``coco_gt.json`` holds exactly the evaluated objects (so skipped or subsampled objects do not count as
    misses) and ``coco_results_click<k>.json`` the predicted masks as compressed RLE with the predictor's
    score; ``pycocotools`` ``COCO(gt).loadRes(results)`` + ``COCOeval(..., "segm")`` scores them (GT boxes or
    points were the prompts, so this is EdgeSAM's prompt-to-mask AP, not a detector's AP).
    """

    def __init__(self) -> None:
        self._mask_utils = require("pycocotools.mask", extra=None, purpose="--save-masks")
        self.images: dict[int, dict[str, Any]] = {}
        self.annotations: dict[int, dict[str, Any]] = {}
        self.categories: set[int] = set()
        self.results: dict[int, list[dict[str, Any]]] = {}

    def __call__(self, record: MaskRecord) -> None:
        sample, obj = record.sample, record.obj
        if sample.image_id not in self.images:
            self.images[sample.image_id] = {"id": sample.image_id, "width": sample.width, "height": sample.height,
                                            "file_name": sample.path.name}
        if obj.ann_id not in self.annotations:
            x0, y0, x1, y1 = (float(v) for v in obj.box)
            self.annotations[obj.ann_id] = {
                "id": obj.ann_id, "image_id": sample.image_id, "category_id": obj.category_id,
                "segmentation": obj.segmentation, "area": record.area, "bbox": [x0, y0, x1 - x0, y1 - y0],
                "iscrowd": 0,
            }
            self.categories.add(obj.category_id)
        rle = self._mask_utils.encode(np.asfortranarray(record.mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        self.results.setdefault(record.click, []).append(
            {"image_id": sample.image_id, "category_id": obj.category_id, "segmentation": rle, "score": record.score}
        )

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``coco_gt.json`` and ``coco_results_click<k>.json`` into ``out_dir``; return the paths."""
        out_dir = Path(out_dir)
        gt = {
            "images": list(self.images.values()),
            "annotations": list(self.annotations.values()),
            "categories": [{"id": c, "name": str(c)} for c in sorted(self.categories)],
        }
        paths = [write_json(gt, out_dir / "coco_gt.json")]
        for click in sorted(self.results):
            paths.append(write_json(self.results[click], out_dir / f"coco_results_click{click}.json", indent=None))
        return paths
