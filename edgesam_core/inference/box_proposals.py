"""Box proposals for ``edgesam segment --everything --proposals FILE``: a detector's boxes as everything-mode prompts.

The file is JSON, either one list of ``[x0, y0, x1, y1]`` pixel boxes (one image) or an object mapping image file
names to such lists (a folder). Each box becomes one decoder prompt with one mask, in place of SAM's grid of
1,024 points; the generator's filters and de-duplication follow. Torch-free; every problem is one
:class:`~edgesam_core.errors.InputError` line naming the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgesam_core.errors import InputError

Box = tuple[float, float, float, float]
FORMAT_HINT = 'write [[x0, y0, x1, y1], ...] for one image or {"photo.jpg": [[x0, y0, x1, y1], ...], ...}'


@dataclass(frozen=True)
class BoxProposals:
    """Boxes read from a proposals file.

    Attributes:
        source: the file, as given.
        sha256: digest of its bytes (a resumed run reuses outputs only for the same boxes).
        images: ``(image file name, boxes)`` pairs; a plain list is stored under the name ``""`` (any image).
    """

    source: str
    sha256: str
    images: tuple[tuple[str, tuple[Box, ...]], ...]

    @property
    def is_single_list(self) -> bool:
        """True for a plain list of boxes (one image)."""
        return len(self.images) == 1 and self.images[0][0] == ""

    def boxes_for(self, image_name: str, width: int, height: int) -> list[Box]:
        """The boxes of ``image_name``, clipped to its ``width x height`` (detectors overhang by a pixel or two).

        Raises:
            InputError: the file has no entry for the image, or a box lies wholly outside it.
        """
        table = dict(self.images)
        boxes = table.get("", table.get(image_name))
        if boxes is None:
            raise InputError(f"{self.source} has no boxes for {image_name}: add \"{image_name}\": [[x0, y0, x1, y1], "
                             "...] (or [] for none)")
        clipped = []
        for box in boxes:
            x0, y0, x1, y1 = max(box[0], 0.0), max(box[1], 0.0), min(box[2], float(width)), min(box[3], float(height))
            if x1 <= x0 or y1 <= y0:
                raise InputError(f"Box {','.join(f'{v:g}' for v in box)} of {self.source} lies outside {image_name} "
                                 f"({width}x{height}); keep boxes within 0,0,{width},{height}")
            clipped.append((x0, y0, x1, y1))
        return clipped

    def signature(self) -> dict[str, str]:
        """What a job's outputs depend on (the boxes, by digest)."""
        return {"file": Path(self.source).name, "sha256": self.sha256}


def load_box_proposals(path: str | Path) -> BoxProposals:
    """Read and check a proposals file (see the module docstring for its two forms).

    Raises:
        InputError: a missing or unreadable file, not JSON, or a malformed box (named, with the fix).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"Proposals file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}") from None
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise InputError(f"{path} is not JSON{where}: {FORMAT_HINT}") from None
    if isinstance(document, list):
        images = (("", _boxes(document, path, "")),)
    elif isinstance(document, dict) and document and all(isinstance(k, str) and k for k in document):
        images = tuple((name, _boxes(boxes, path, name)) for name, boxes in document.items())
    else:
        raise InputError(f"{path} holds no boxes: {FORMAT_HINT}")
    return BoxProposals(str(path), hashlib.sha256(raw).hexdigest(), images)


def _boxes(entries: Any, path: Path, name: str) -> tuple[Box, ...]:
    where = f"{path}" + (f", {name!r}" if name else "")
    if not isinstance(entries, list):
        raise InputError(f"{where}: expected a list of boxes; {FORMAT_HINT}")
    boxes = []
    for k, entry in enumerate(entries):
        ok = isinstance(entry, list) and len(entry) == 4 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in entry)
        if not ok or entry[2] <= entry[0] or entry[3] <= entry[1]:
            raise InputError(f"{where}: box {k} is {json.dumps(entry)}; each box is [x0, y0, x1, y1] pixels with "
                             "x1 > x0 and y1 > y0")
        boxes.append((float(entry[0]), float(entry[1]), float(entry[2]), float(entry[3])))
    return tuple(boxes)
