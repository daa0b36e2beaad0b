"""Decoder fine-tuning on this CPU: prompts per second with cached embeddings, and what the cache costs.

Full-size model (random weights unless ``--checkpoint``), a generated dataset of real photo crops with pasted
shapes (``tests/helpers/shapes_dataset.py``) at ``--size``, ``--threads`` threads. Reports: embedding cache
seconds and bytes per image (the one-off encoder cost), training prompts/s over ``--epochs`` epochs (a box
prompt counts 1, a point prompt 2: its corrective click runs the decoder again), and the held-out mIoU.

    python benchmarks/bench_finetune.py --out benchmarks/results/bench_finetune_2threads.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import build_model, emit_json, scratch_dir  # noqa: E402
from tests.helpers.shapes_dataset import make_images, write_mask_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="edge_sam_dyt")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="448x512", help="HxW of the generated images (at most 600x512)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from edgesam_core.evaluation.samples import open_user_dataset
    from edgesam_core.training.finetune import FinetuneOptions, finetune

    torch.set_num_threads(args.threads)
    work = scratch_dir()
    checkpoint = Path(args.checkpoint) if args.checkpoint else work / f"{args.model}.pth"
    if not args.checkpoint:
        torch.save(build_model(args.model).state_dict(), checkpoint)
    h, w = (int(v) for v in args.size.split("x"))
    write_mask_folder(work / "data", make_images(args.images, size=(h, w), seed=0))
    start = time.perf_counter()
    result = finetune(checkpoint, open_user_dataset(work / "data"), work / "out",
                      FinetuneOptions(model_type=args.model, epochs=args.epochs, batch=args.batch))
    total = time.perf_counter() - start
    cache = result.cache
    emit_json({
        "benchmark": "bench_finetune", "model": args.model,
        "weights": args.checkpoint or "random", "threads": args.threads, "cpu": platform.processor() or platform.machine(),
        "images": args.images, "image_size": [h, w], "epochs": args.epochs, "batch": args.batch,
        "train_prompts_per_second": round(result.prompts_per_second, 2),
        "embedding_cache": {"seconds_per_image": round(cache["seconds"] / max(1, cache["encoded"]), 3),
                            "bytes_per_image": cache["bytes"] // max(1, cache["images"]),
                            "images": cache["images"], "seconds": cache["seconds"]},
        "heldout_miou_before": result.before, "heldout_miou_best": result.best,
        "wall_seconds": round(total, 1),
    }, args.out)


if __name__ == "__main__":
    main()
