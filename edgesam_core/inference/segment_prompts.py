"""Parse and check the prompts of ``edgesam segment`` (``--point``, ``--label``, ``--box``, ...).

Everything here is torch-free; every problem is an :class:`~edgesam_core.errors.InputError` (or
:class:`~edgesam_core.errors.ConfigError` for conflicting options) with one line naming the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgesam_core.errors import ConfigError, InputError
from edgesam_core.inference.box_proposals import BoxProposals, LearnedProposals, load_box_proposals


@dataclass(frozen=True)
class SegmentPrompts:
    """Prompts for one ``segment`` run, in displayed-image pixels.

    Attributes:
        points: ``(x, y)`` points; they apply to every box (or form one prompt set without boxes).
        labels: one label per point: 1 foreground, 0 background.
        boxes: ``(x0, y0, x1, y1)`` boxes; each gives its own mask(s).
        everything: segment the whole image with the automatic mask generator instead.
        fast: with ``everything``, the generator's fast mode (:data:`FAST_EVERYTHING`).
        task: the name of a learned task prompt to segment by, with no click (``--task``).
        proposals: with ``everything``, boxes to prompt with instead of the point grid (``--proposals``): a
            detector's, or a trained proposal head's.
    """

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    boxes: tuple[tuple[float, float, float, float], ...] = field(default=())
    everything: bool = False
    fast: bool = False
    task: str | None = None
    proposals: BoxProposals | LearnedProposals | None = None

    def prompt_sets(self) -> list[dict[str, object]]:
        """One dict per decoder call: ``{"points": [...], "labels": [...], "box": [...] | None}`` (or
        ``{"task": name}``)."""
        if self.task:
            return [{"task": self.task}]
        base = {"points": [list(p) for p in self.points], "labels": list(self.labels)}
        if not self.boxes:
            return [{**base, "box": None}]
        return [{**base, "box": list(b)} for b in self.boxes]


def _numbers(text: str, count: int, option: str, example: str) -> list[float]:
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()] if text else []
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise InputError(f"Malformed {option} {text!r}: expected {count} numbers like {option} {example}")
    return values


def parse_point(text: str, option: str = "--point") -> tuple[float, float]:
    """Parse ``"X,Y"`` (pixels) into a point."""
    x, y = _numbers(text, 2, option, "500,375")
    return (x, y)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """Parse ``"X0,Y0,X1,Y1"`` into a box; x1 > x0 and y1 > y0 are required."""
    x0, y0, x1, y1 = _numbers(text, 4, "--box", "100,80,420,360")
    if x1 <= x0:
        raise InputError(f"Invalid --box {text!r}: x1 ({x1:g}) must be greater than x0 ({x0:g})")
    if y1 <= y0:
        raise InputError(f"Invalid --box {text!r}: y1 ({y1:g}) must be greater than y0 ({y0:g})")
    return (x0, y0, x1, y1)


#: ``--everything --fast``: a 16x16 grid visited coarse to fine (every 8th, 4th, 2nd point first), skipping
#: points inside masks already kept, at most 80 decoder runs (SAM's 32x32 grid: 1,024); timed against SAM's
#: grid by benchmarks/bench_decoder.py.
FAST_EVERYTHING = {"points_per_side": 16, "points_per_batch": 8, "skip_covered_points": True, "max_points": 80}


def build_prompts(
    points: Sequence[str] = (),
    labels: Sequence[int] = (),
    negative_points: Sequence[str] = (),
    boxes: Sequence[str] = (),
    everything: bool = False,
    fast: bool = False,
    task: str | None = None,
    proposals: str | Path | None = None,
) -> SegmentPrompts:
    """Turn the raw command-line values into :class:`SegmentPrompts`.

    Args:
        points: ``"X,Y"`` strings (``--point``).
        labels: one 1/0 label per ``--point`` (default: all 1).
        negative_points: ``"X,Y"`` background points (``--negative-point``), label 0.
        boxes: ``"X0,Y0,X1,Y1"`` strings (``--box``).
        everything: ``--everything`` (exclusive with the other prompts).
        fast: ``--fast`` (only with ``--everything``).
        task: ``--task NAME`` (exclusive with the other prompts).
        proposals: ``--proposals FILE`` (only with ``--everything``, not with ``--fast``).

    Raises:
        InputError: malformed values or no prompt at all. ConfigError: conflicting options.
    """
    parsed_points = [parse_point(p) for p in points]
    if labels and len(labels) != len(parsed_points):
        raise ConfigError(
            f"Got {len(labels)} --label value(s) for {len(parsed_points)} --point(s): give one --label per "
            "--point, or none (all foreground)")
    bad = [v for v in labels if v not in (0, 1)]
    if bad:
        raise InputError(f"--label must be 1 (foreground) or 0 (background), got {bad[0]}")
    all_labels = list(labels) if labels else [1] * len(parsed_points)
    negatives = [parse_point(p, "--negative-point") for p in negative_points]
    parsed_points += negatives
    all_labels += [0] * len(negatives)
    parsed_boxes = [parse_box(b) for b in boxes]
    if task and (parsed_points or parsed_boxes or everything):
        raise ConfigError("--task segments by a learned prompt, with no click; drop --point/--box/--everything or it")
    if task:
        return SegmentPrompts(task=task)
    if everything and (parsed_points or parsed_boxes):
        raise ConfigError("--everything segments the whole image; drop --point/--negative-point/--box or it")
    if not everything and not parsed_points and not parsed_boxes:
        raise InputError("No prompt given: pass --point X,Y, --box X0,Y0,X1,Y1, --everything or --task NAME")
    if fast and not everything:
        raise ConfigError("--fast is a mode of --everything; add --everything or drop --fast")
    if proposals is not None and not everything:
        raise ConfigError("--proposals gives --everything its prompts; add --everything or drop --proposals")
    if proposals is not None and fast:
        raise ConfigError("--proposals replaces the point grid that --fast thins out; drop one of them")
    boxes_file = load_box_proposals(proposals) if proposals is not None else None
    return SegmentPrompts(tuple(parsed_points), tuple(all_labels), tuple(parsed_boxes), everything, fast,
                          proposals=boxes_file)


def check_prompts_fit(prompts: SegmentPrompts, width: int, height: int, image_name: str) -> None:
    """Raise :class:`InputError` when a point or box lies outside a ``width x height`` image."""
    for x, y in prompts.points:
        if not (0 <= x <= width and 0 <= y <= height):
            raise InputError(
                f"Point {x:g},{y:g} is outside {image_name} ({width}x{height}); use 0<=x<={width}, 0<=y<={height}")
    for x0, y0, x1, y1 in prompts.boxes:
        if not (0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height):
            raise InputError(
                f"Box {x0:g},{y0:g},{x1:g},{y1:g} is outside {image_name} ({width}x{height}); "
                f"keep it within 0,0,{width},{height}")
