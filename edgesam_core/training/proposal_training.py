"""``edgesam finetune --train proposals``: learn a box-proposal head on the frozen image embedding.

The head (:class:`~edgesam_core.models.box_proposal_head.BoxProposalHead`) learns where the user's objects are
from their boxes, on the embeddings ``finetune`` caches anyway; ``segment --everything --proposals proposals.pt``
then prompts with its boxes instead of SAM's 1,024 grid points. Measured before training and after every epoch:
held-out box recall (a ground-truth box counts as found when a proposal overlaps it with IoU >= 0.5, or >= 0.75)
with the ``segment`` defaults (at most 100 boxes of score >= 0.05); the best epoch's head is written.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesam_core.models.box_proposal_head import (
    MAX_BOXES,
    MIN_SCORE,
    BoxProposalHead,
    decode_proposals,
    proposal_head_file,
    proposal_loss,
    proposal_targets,
)
from edgesam_core.progress import Progress

PROPOSALS_FILE = "proposals.pt"


@torch.no_grad()
def heldout_recall(head: BoxProposalHead, items: list[Any], cache: Any, load: Any, stride: float) -> dict[str, float]:
    """Recall x100 of the held-out boxes at IoU 0.5 and 0.75, and the proposals per image."""
    from edgesam_core.inference.amg import box_iou

    head.eval()
    found50 = found75 = total = proposals = 0
    for item in items:
        truth = torch.tensor(np.stack([t.box for t in item.targets]), dtype=torch.float32)
        objectness, sides = head(cache.get(item.path, lambda it=item: load(it)).float())
        boxes, _ = decode_proposals(objectness[0], sides[0], stride, item.input_size, MAX_BOXES, MIN_SCORE)
        proposals += len(boxes)
        total += len(truth)
        if len(boxes):
            best = box_iou(truth, boxes).max(dim=1).values
            found50 += int((best >= 0.5).sum())
            found75 += int((best >= 0.75).sum())
    total = max(total, 1)
    return {"recall50": round(100.0 * found50 / total, 2), "recall75": round(100.0 * found75 / total, 2),
            "proposals_per_image": round(proposals / max(len(items), 1), 1)}


def train_proposals(model: Any, checkpoint: str | Path, train_items: list[Any], val_items: list[Any], cache: Any,
                    cache_seconds: float, out: Path, opts: Any, progress: Progress, rng: np.random.Generator) -> Any:
    """Train the head for ``opts.epochs`` (``opts.batch`` images per step, AdamW at ``opts.lr``) and save the
    best epoch's to ``out/proposals.pt``; returns a :class:`~edgesam_core.training.finetune.FinetuneResult`."""
    from edgesam_core.training.finetune import FinetuneResult, _cache_info, _load_rgb, _plot, epoch_record, guarded_step
    from edgesam_core.training.state import atomic_save

    grid = int(model.prompt_encoder.image_embedding_size[0])
    img_size = int(model.img_size)
    stride = img_size / grid
    head = BoxProposalHead(int(model.prompt_encoder.embed_dim))
    optimizer = torch.optim.AdamW(head.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    targets = [proposal_targets(torch.tensor(np.stack([t.box for t in item.targets])), grid, stride)
               for item in train_items]
    before = heldout_recall(head, val_items, cache, _load_rgb, stride)
    best, best_epoch, best_head = before, 0, copy.deepcopy(head)
    history: list[dict[str, Any]] = []
    seen, seconds, bad = 0, 0.0, 0
    for epoch in range(1, opts.epochs + 1):
        order = rng.permutation(len(train_items))
        steps = range(0, len(order), opts.batch)
        task = progress.add_task(f"Epoch {epoch}/{opts.epochs}", total=len(steps))
        losses = []
        head.train()
        for lo in steps:
            picks = [int(k) for k in order[lo:lo + opts.batch]]
            start = time.perf_counter()
            embeddings = torch.cat([cache.get(train_items[k].path, lambda it=train_items[k]: _load_rgb(it)).float()
                                    for k in picks])
            heat, sides, centres = (torch.stack(part) for part in zip(*(targets[k] for k in picks)))
            loss = proposal_loss(*head(embeddings), heat, sides, centres)
            bad = guarded_step(loss, optimizer, bad, opts.lr, (list(head.parameters()), 10.0))
            if not bad:  # a skipped step (non-finite loss) counts in neither the loss nor the speed
                losses.append(float(loss.detach()))
                seen, seconds = seen + len(picks), seconds + time.perf_counter() - start
            progress.advance(task)
        progress.finish(task)
        recall = heldout_recall(head, val_items, cache, _load_rgb, stride)
        history.append(epoch_record(epoch, losses, recall=recall))
        progress.log(f"epoch {epoch}: loss {history[-1]['loss']:.4f}, held-out box recall {recall['recall50']:.1f} "
                     f"(IoU 0.5), {recall['recall75']:.1f} (0.75), {recall['proposals_per_image']:.0f} boxes/image")
        if (recall["recall50"], recall["recall75"]) > (best["recall50"], best["recall75"]):
            best, best_epoch, best_head = recall, epoch, copy.deepcopy(head)
    path = out / PROPOSALS_FILE
    atomic_save(proposal_head_file(best_head, grid, img_size, model=opts.model_type, checkpoint=str(checkpoint),
                                   heldout=json.dumps(best), best_epoch=best_epoch), path)
    speed = seen / seconds if seconds else 0.0
    cache_info = _cache_info(cache, len(train_items) + len(val_items), cache_seconds)
    report = {"checkpoint": str(checkpoint), "model": opts.model_type, "proposals_file": str(path),
              "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
              "train_images": len(train_items), "heldout_images": len(val_items),
              "heldout_boxes": sum(len(i.targets) for i in val_items), "max_boxes": MAX_BOXES, "min_score": MIN_SCORE,
              "heldout_recall_before": before, "heldout_recall_best": best, "best_epoch": best_epoch,
              "history": history, "images_per_second": round(speed, 2), "embedding_cache": cache_info}
    (out / "heldout_images.txt").write_text("".join(f"{i.path.name}\n" for i in val_items))
    report_path = out / "proposals_report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    plot = _plot(history, before, out / "proposals_recall.png", kinds=("recall50", "recall75"),
                 ylabel="held-out box recall (x100)", key="recall")
    return FinetuneResult(path, report_path, plot, before, best, best_epoch, history, speed, cache_info)
