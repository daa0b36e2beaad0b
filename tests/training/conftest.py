"""Fixtures for the distillation tests: a tiny SA-1B-format dataset (real JPEGs + RLE JSON) and tiny,
deterministic teacher checkpoints standing in for SAM ViT-H / HQ-SAM."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

STUDENT = "edge_sam_dyt_debug"
TEACHER = "vit_b_debug"
HQ_STUDENT = "edge_sam_dyt_hq_debug"
HQ_TEACHER = "vit_h_hq_debug"


def write_sa1b(root: Path, split: str = "train", count: int = 4, masks: int = 3, seed: int = 0) -> Path:
    """``count`` random JPEGs (landscape and portrait, so padding differs) with ``masks`` rectangles each."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    for k in range(count):
        h, w = (48, 64) if k % 2 == 0 else (64, 40)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
        stem = f"sa_{k + 1}"
        (root / "images" / split / f"{stem}.jpg").write_bytes(buf.getvalue())
        anns = []
        for j in range(masks):
            m = np.zeros((h, w), np.uint8)
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            m[y0 : y0 + int(rng.integers(8, h // 2)), x0 : x0 + int(rng.integers(8, w // 2))] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            ys, xs = np.nonzero(m)
            anns.append({"id": 100 * k + j, "segmentation": rle, "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                         "area": int(m.sum()), "predicted_iou": 0.9, "stability_score": 0.95,
                         "crop_box": [0, 0, w, h], "point_coords": [[float(xs.mean()), float(ys.mean())]]})
        record = {"image": {"image_id": k + 1, "width": w, "height": h, "file_name": f"{stem}.jpg"},
                  "annotations": anns}
        (root / "annotations" / split / f"{stem}.json").write_text(json.dumps(record))
    return root


def save_model(variant: str, path: Path, seed: int) -> Path:
    """Build ``variant`` with a fixed seed and save it as a plain state dict (SAM's file format)."""
    import torch

    from edgesam_core.models import build_sam

    torch.manual_seed(seed)
    model = build_sam(variant)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> dict[str, Path]:
    """Datasets (SA-1B: 4 images; HQSeg-44K: 7, one per set) and teacher checkpoints shared by the whole
    session (read-only)."""
    from tests.helpers.hqseg import write_hqseg

    root = tmp_path_factory.mktemp("distill_assets")
    return {
        "data": write_sa1b(root / "sa1b", count=4),
        "hqseg": write_hqseg(root / "hqseg", per_set=1),
        "teacher": save_model(TEACHER, root / "teacher.pth", seed=1),
        "hq_teacher": save_model(HQ_TEACHER, root / "hq_teacher.pth", seed=2),
    }


def cli_args(step: str, assets: dict[str, Path], out: Path, *extra: str, steps: int = 2) -> list[str]:
    """Arguments of a small CPU ``edgesam distill`` run of ``step``."""
    hq = step == "hq"
    args = ["distill", "--step", step, "--data-root", str(assets["hqseg" if hq else "data"]), "--out", str(out),
            "--device", "cpu",
            "--teacher-checkpoint", str(assets["hq_teacher" if hq else "teacher"]),
            "--model", HQ_STUDENT if hq else ("edge_sam_dyt_frozen_mask_debug" if step == "2" else STUDENT),
            "--teacher", HQ_TEACHER if hq else TEACHER, "--max-steps", str(steps),
            "--set", "train.batch_size=2", "--set", "data.max_prompts=2", "--set", "train.log_every=1"]
    return args + list(extra)


def invoke(args: list[str]):
    """Run the real CLI in-process; re-raise unexpected exceptions with the output for debugging."""
    from typer.testing import CliRunner

    from edgesam_cli.main import app

    return CliRunner().invoke(app, args)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
