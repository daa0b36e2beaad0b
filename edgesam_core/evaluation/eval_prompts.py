"""Evaluation prompts derived from a ground-truth object, in original image pixels.

``box`` uses the GT box; ``point-center`` the GT pixel farthest from the mask boundary (upstream's
``mask-center``); ``point-random`` a uniformly drawn GT pixel from a seeded generator; ``box-center`` the
centre of the GT box, computed as ((x0 + x1) / 2, (y0 + y1) / 2), which upstream gets wrong;
``point-annotated`` SA-1B's own ``point_coords`` (upstream's default ``--point-from point``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .metrics import deepest_pixel

PROMPT_TYPES: tuple[str, ...] = ("box", "point-center", "point-random", "box-center", "point-annotated")


@dataclass(frozen=True)
class Prompt:
    """Prompt for one object: ``points`` N x 2 (x, y), ``labels`` N (1 = foreground), optional ``box`` xyxy."""

    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None

    def with_click(self, x: float, y: float, label: int) -> Prompt:
        """A copy with one more point appended (the box, if any, is kept)."""
        point = np.array([[x, y]], dtype=np.float32)
        label_arr = np.array([label], dtype=np.int64)
        if self.points is None:
            return Prompt(point, label_arr, self.box)
        return Prompt(
            np.concatenate([self.points, point], axis=0),
            np.concatenate([self.labels, label_arr], axis=0),  # type: ignore[list-item]
            self.box,
        )


def box_from_mask(mask: np.ndarray) -> np.ndarray:
    """Tight xyxy box of a non-empty mask, pixel-edge convention (x1 = last column + 1), as COCO's bbox."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("cannot take the box of an empty mask")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32)


def box_center(box: np.ndarray) -> tuple[float, float]:
    """Centre ``(x, y)`` of an xyxy box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def mask_center(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the mask pixel farthest from the mask boundary (distance-transform maximum).

    See :func:`~edgesam_core.evaluation.metrics.deepest_pixel`: the image border counts as boundary and the
    result is deterministic and always inside the mask.
    """
    row, col = deepest_pixel(mask)
    return col, row


def random_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """``(x, y)`` of a uniformly drawn pixel of a non-empty mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("cannot sample a point from an empty mask")
    i = int(rng.integers(rows.size))
    return int(cols[i]), int(rows[i])


def make_prompt(kind: str, mask: np.ndarray, box: np.ndarray, rng: np.random.Generator | None = None,
                point: tuple[float, float] | None = None) -> Prompt:
    """Build the initial prompt of one object.

    Args:
        kind: one of :data:`PROMPT_TYPES`.
        mask: ``H x W`` bool ground-truth mask (non-empty).
        box: GT box, xyxy in original pixels.
        rng: generator for ``point-random`` (pass one seeded per object for reproducible runs).
        point: the dataset's annotated point ``(x, y)``, for ``point-annotated``.

    Returns:
        The prompt; points carry label 1.

    Raises:
        ConfigError: for an unknown ``kind``, ``point-random`` without a generator, or ``point-annotated``
            on an object without an annotated point.
    """
    if kind == "box":
        return Prompt(None, None, np.asarray(box, dtype=np.float32).reshape(4))
    if kind == "point-center":
        x, y = mask_center(mask)
    elif kind == "point-random":
        if rng is None:
            raise ConfigError("prompt 'point-random' needs a seeded numpy Generator")
        x, y = random_point(mask, rng)
    elif kind == "box-center":
        x, y = box_center(box)
    elif kind == "point-annotated":
        if point is None:
            raise ConfigError("prompt 'point-annotated' needs annotated points (SA-1B 'point_coords'); "
                              "this dataset has none: use --prompt point-center")
        x, y = point
    else:
        raise ConfigError(f"Unknown prompt type '{kind}'; choose one of {', '.join(PROMPT_TYPES)}")
    return Prompt(np.array([[x, y]], dtype=np.float32), np.ones(1, dtype=np.int64), None)
