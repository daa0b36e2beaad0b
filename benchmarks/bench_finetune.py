"""Decoder fine-tuning on this CPU: prompts per second with cached embeddings, and what the cache costs.

Full-size model (random weights unless ``--checkpoint``), a generated dataset of real photo crops with pasted
shapes (``tests/helpers/shapes_dataset.py``) at ``--size``, ``--threads`` threads. Reports: embedding cache
seconds and bytes per image (the one-off encoder cost), training prompts/s over ``--epochs`` epochs (a box
prompt counts 1, a point prompt 2: its corrective click runs the decoder again), and the held-out mIoU. Also,
interleaved in the same run (medians): one training step (8 box + 8 point prompts, forward and backward) with
the decoder's per-image context shared by its prompts against the same step recomputing it per prompt.

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


def context_ratio(model_name: str, rounds: int = 8) -> dict:
    """Median ms of a training step with the image context shared vs recomputed per prompt, interleaved."""
    import statistics

    import torch

    from edgesam_core.models import build_sam
    from edgesam_core.training.finetune import _decode, _mask_losses, image_context

    model = build_sam(model_name).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.mask_decoder.parameters():
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 256, *model.prompt_encoder.image_embedding_size, generator=g) * 0.3
    side = 4 * model.prompt_encoder.image_embedding_size[0]
    boxes = torch.tensor([[100.0, 100.0, 400.0, 400.0]] * 8)
    points = (torch.full((8, 1, 2), 300.0), torch.ones(8, 1))
    gt = (torch.rand(8, side, side, generator=g) > 0.5).float()

    def step(shared: bool) -> None:
        ctx = image_context(model, emb) if shared else None
        a, ia = _decode(model, emb, None, boxes, 1, ctx)
        b, ib = _decode(model, emb, points, None, 3, ctx)
        (_mask_losses(a, ia, gt).mean() + _mask_losses(b, ib, gt).mean()).backward()

    times: dict[bool, list[float]] = {False: [], True: []}
    step(False)
    step(True)
    for r in range(rounds):
        for shared in ((False, True) if r % 2 == 0 else (True, False)):
            start = time.perf_counter()
            step(shared)
            times[shared].append((time.perf_counter() - start) * 1000)
    per, shared = statistics.median(times[False]), statistics.median(times[True])
    return {"step_ms_context_per_prompt": round(per, 1), "step_ms_context_shared": round(shared, 1),
            "ratio": round(shared / per, 3), "rounds": rounds, "prompts_per_step": 16}


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
        "shared_image_context": context_ratio(args.model),
    }, args.out)


if __name__ == "__main__":
    main()
