"""Learned task prompts ("self-prompting"): a few prompt tokens that take the place of clicks and boxes.

A task prompt is a ``K x C`` tensor fed to the mask decoder as its sparse prompt embedding, with the
prompt encoder's "no mask" dense embedding; image encoder and mask decoder stay as they are. It is valid
only for the prompt encoder and mask decoder it was trained with, identified by :func:`prompt_path_fingerprint`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch


def decode_task(sam: Any, image_embeddings: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for a task prompt on one image's embedding (``1 x C x g x g``): ``(masks 1x1xhxw, iou 1x1)``."""
    _, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
    sparse = tokens.to(image_embeddings.dtype)[None]
    out = sam.mask_decoder(image_embeddings=image_embeddings, image_pe=sam.prompt_encoder.get_dense_pe(),
                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense.to(image_embeddings.dtype),
                           num_multimask_outputs=1)
    return out[0], out[-1]


def initial_tokens(sam: Any) -> torch.Tensor:
    """A starting task prompt: the prompt encoder's embedding of a box around the whole input and a point at its
    centre (3 tokens), so training starts from "the main object" rather than from noise."""
    size = float(sam.img_size)
    device = sam.pixel_mean.device
    with torch.no_grad():
        sparse, _ = sam.prompt_encoder(points=(torch.tensor([[[size / 2, size / 2]]], device=device),
                                               torch.ones(1, 1, device=device)),
                                       boxes=torch.tensor([[0.0, 0.0, size, size]], device=device), masks=None)
    return sparse[0].clone()


def prompt_path_fingerprint(sam: Any) -> str:
    """SHA-256 (hex, 16 chars) of the prompt encoder's and mask decoder's weights."""
    digest = hashlib.sha256()
    for module in (sam.prompt_encoder, sam.mask_decoder):
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]


TASKS_FORMAT = 1


def load_task_file(path: Any) -> dict[str, dict[str, Any]]:
    """``{name: {"tokens": K x C tensor, "fingerprint", "model", "category", ...}}`` from a tasks file (a safe,
    weights-only load; an absent file is an empty bank).

    Raises:
        ValueError: the file is not a tasks file written by edgesam (the caller names the fix).
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return {}
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a file that is not ours
        raise ValueError(f"{path} is not a tasks file ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != TASKS_FORMAT or not isinstance(payload.get("tasks"), dict):
        raise ValueError(f"{path} is not a tasks file written by 'edgesam finetune --train prompt'")
    return payload["tasks"]


def save_task(path: Any, name: str, tokens: torch.Tensor, **meta: Any) -> None:
    """Add (or replace) task ``name`` in the tasks file at ``path``, atomically; other tasks are kept."""
    import os
    from pathlib import Path

    path = Path(path)
    tasks = load_task_file(path)
    tasks[name] = {"tokens": tokens.detach().cpu().float().contiguous(), **meta}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": TASKS_FORMAT, "tasks": tasks}, tmp)
    os.replace(tmp, path)
