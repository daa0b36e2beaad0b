"""Resumable training state: atomic checkpoint files, RNG capture/restore, latest-checkpoint lookup and the
plain final ``{"model": state_dict}`` file that ``build_sam`` loads without conversion.

Checkpoints hold only tensors and plain Python values so they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesam_core.errors import CheckpointError
from edgesam_core.models.checkpoint import refused_object

_CKPT_RE = re.compile(r"ckpt_step_(\d+)\.pth$")


@dataclass
class TrainState:
    """Position of the run: ``step`` optimizer steps done; ``epoch`` and ``batch_in_epoch`` (micro-batches
    consumed in that epoch) locate the next batch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    nonfinite_in_a_row: int = 0
    skipped_steps: int = 0


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as plain Python values (weights_only-safe and
    picklable across processes)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path.tmp`` then ``os.replace``: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    """``<dir>/ckpt_step_<step:08d>.pth``."""
    return ckpt_dir / f"ckpt_step_{step:08d}.pth"


def save_training_checkpoint(path: Path, payload: dict[str, Any], keep: int = 2) -> None:
    """Write a resumable checkpoint atomically and prune older ones beyond ``keep``."""
    atomic_save(payload, path)
    if keep > 0:
        older = sorted(list_checkpoints(path.parent))[:-keep]
        for _, p in older:
            p.unlink(missing_ok=True)


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every resumable checkpoint in ``ckpt_dir``, sorted by step."""
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _CKPT_RE.search(p.name))]
    return sorted(found)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def newest_readable_checkpoint(ckpt_dir: Path, log: Callable[[str], None]) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint that loads, and its payload; corrupt newer ones are skipped with a log line."""
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, load_training_checkpoint(path)
        except CheckpointError as exc:
            log(f"--auto-resume: skipping {path.name} ({exc}); trying the one before")
    return None, None


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """Read a resumable checkpoint written by :func:`save_training_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Resume checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        name = refused_object(exc)
        if name:
            # Never suggest disabling the safe load: the file may run code when unpickled.
            raise CheckpointError(f"resume checkpoint {path} pickles a Python object ({name}) that a safe load "
                                  "refuses; resume only from checkpoints written by 'edgesam distill'") from exc
        raise CheckpointError(f"resume checkpoint {path} is truncated or not a checkpoint "
                              f"({type(exc).__name__}); resume from an earlier one") from exc
    if not isinstance(payload, dict) or "train_state" not in payload or "model" not in payload:
        raise CheckpointError(f"{path} is not a resumable edgesam checkpoint (no train_state); pass it as --init.")
    return payload


def train_state_dict(state: TrainState) -> dict[str, int]:
    """Plain dict of a :class:`TrainState`."""
    return asdict(state)


def save_final(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write the plain ``{"model": state_dict}`` deliverable of a step (full, prefixed keys)."""
    atomic_save({"model": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}}, path)
