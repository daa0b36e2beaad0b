"""Batching that keeps the per-image prompt count: images are stacked, targets stay a list of dicts."""

from __future__ import annotations

from typing import Any

import torch


def collate_fn(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Collate ``(image, target)`` items from :class:`~edgesam_core.data.sa1b.SA1BDataset` or
    :class:`~edgesam_core.data.coco.COCODataset`.

    Returns:
        ``(images Bx3xSxS, targets)``; ``targets[i]["prompt_box"]`` keeps its own ``P_i x 4`` shape.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]
