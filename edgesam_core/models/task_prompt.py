"""Learned task prompts ("self-prompting"): a few prompt tokens that take the place of clicks and boxes.

A task prompt is a ``K x C`` tensor fed to the mask decoder as its sparse prompt embedding, with the
prompt encoder's "no mask" dense embedding; image encoder and mask decoder stay as they are. Optionally it
also has a *dense head*: a 1x1 convolution of the image embedding added to that dense embedding, so the prompt
can point the decoder at the image regions whose features look like the task's objects (tokens alone can only
say what to look for, not where). It is valid only for the prompt encoder and mask decoder it was trained
with, identified by :func:`prompt_path_fingerprint`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn


class TaskPrompt(nn.Module):
    """A task's prompt: ``tokens`` ``(K, C)`` and, with ``dense=True``, a 1x1 convolution ``C -> C`` of the image
    embedding (zero-initialised: it starts as the tokens-only prompt)."""

    def __init__(self, tokens: torch.Tensor, dense: bool = False) -> None:
        super().__init__()
        self.tokens = nn.Parameter(tokens.detach().clone())
        channels = tokens.shape[-1]
        self.dense_head = nn.Conv2d(channels, channels, 1, device=tokens.device, dtype=tokens.dtype) if dense else None
        if self.dense_head is not None:
            nn.init.zeros_(self.dense_head.weight)
            nn.init.zeros_(self.dense_head.bias)

    @classmethod
    def from_entry(cls, entry: dict[str, Any]) -> "TaskPrompt":
        """The prompt of one tasks-file entry (see :func:`load_task_file`).

        Raises:
            ValueError: the entry's tensors do not have a task prompt's shapes.
        """
        tokens = entry.get("tokens")
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError("a task entry without K x C tokens")
        c = tokens.shape[1]
        if "dense_weight" in entry and (tuple(getattr(entry["dense_weight"], "shape", ())) != (c, c, 1, 1)
                                        or tuple(getattr(entry.get("dense_bias"), "shape", ())) != (c,)):
            raise ValueError(f"a task entry whose dense head is not a {c} -> {c} 1x1 convolution")
        prompt = cls(tokens.float(), dense="dense_weight" in entry)
        if prompt.dense_head is not None:
            with torch.no_grad():
                prompt.dense_head.weight.copy_(entry["dense_weight"].float())
                prompt.dense_head.bias.copy_(entry["dense_bias"].float())
        return prompt.requires_grad_(False)

    def to_entry(self) -> dict[str, torch.Tensor]:
        """Its tensors as a tasks-file entry (float32, on the CPU)."""
        entry = {"tokens": self.tokens.detach().cpu().float().contiguous()}
        if self.dense_head is not None:
            entry["dense_weight"] = self.dense_head.weight.detach().cpu().float().contiguous()
            entry["dense_bias"] = self.dense_head.bias.detach().cpu().float().contiguous()
        return entry

    def embeddings(self, sam: Any, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sparse 1xKxC, dense 1xCxgxg)`` prompt embeddings for one image's embedding ``1xCxgxg``."""
        _, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        dense = dense.to(image_embeddings.dtype)
        if self.dense_head is not None:
            dense = dense + self.dense_head(image_embeddings)
        return self.tokens.to(image_embeddings.dtype)[None], dense


def decode_task(sam: Any, image_embeddings: torch.Tensor, prompt: TaskPrompt) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for a task prompt on one image's embedding (``1 x C x g x g``): ``(masks 1x1xhxw, iou 1x1)``."""
    sparse, dense = prompt.embeddings(sam, image_embeddings)
    out = sam.mask_decoder(image_embeddings=image_embeddings, image_pe=sam.prompt_encoder.get_dense_pe(),
                           sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, num_multimask_outputs=1)
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
    """``{name: {"tokens": K x C tensor, ["dense_weight", "dense_bias",] "fingerprint", "model", "category", ...}}``
    from a tasks file (a safe, weights-only load; an absent file is an empty bank).

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
    if (not isinstance(payload, dict) or payload.get("format") != TASKS_FORMAT
            or not isinstance(payload.get("tasks"), dict)):
        raise ValueError(f"{path} is not a tasks file written by 'edgesam finetune --train prompt'")
    return payload["tasks"]


def save_task(path: Any, name: str, prompt: TaskPrompt, **meta: Any) -> None:
    """Add (or replace) task ``name`` in the tasks file at ``path``, atomically; other tasks are kept."""
    import os
    from pathlib import Path

    path = Path(path)
    tasks = load_task_file(path)
    tasks[name] = {**prompt.to_entry(), **meta}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": TASKS_FORMAT, "tasks": tasks}, tmp)
    os.replace(tmp, path)
