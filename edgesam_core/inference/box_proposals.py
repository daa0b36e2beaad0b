"""Box proposals for ``edgesam segment --everything --proposals FILE``: boxes as everything-mode prompts.

FILE is either JSON from a detector, one list of ``[x0, y0, x1, y1]`` pixel boxes (one image) or an object mapping
image file names to such lists (a folder), or a proposal head trained with ``edgesam finetune --train proposals``
(``.pt``), which proposes boxes from each image's embedding. Each box becomes one decoder prompt with one mask,
in place of SAM's grid of 1,024 points; the generator's filters and de-duplication follow. Importing this module
imports no torch; every problem is one :class:`~edgesam_core.errors.InputError` line naming the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgesam_core.errors import InputError

Box = tuple[float, float, float, float]
FORMAT_HINT = 'write [[x0, y0, x1, y1], ...] for one image or {"photo.jpg": [[x0, y0, x1, y1], ...], ...}'


@dataclass(frozen=True)
class _ProposalsFile:
    """A ``--proposals`` file: ``source`` as given, ``sha256`` of its bytes."""

    source: str
    sha256: str

    def signature(self) -> dict[str, str]:
        """What a job's outputs depend on (the file, by digest): a resumed run reuses outputs only for the same."""
        return {"file": Path(self.source).name, "sha256": self.sha256}


@dataclass(frozen=True)
class BoxProposals(_ProposalsFile):
    """Boxes read from a proposals file; ``images``: ``(image file name, boxes)`` pairs (a plain list is stored
    under the name ``""``: any image)."""

    images: tuple[tuple[str, tuple[Box, ...]], ...] = ()

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


@dataclass(frozen=True)
class LearnedProposals(_ProposalsFile):
    """A trained proposal head (``edgesam finetune --train proposals``): boxes from each image's embedding (at
    most ``MAX_BOXES`` of objectness >= ``MIN_SCORE``, see :mod:`edgesam_core.models.box_proposal_head`)."""

    is_single_list = False

    def boxes_for(self, image_name: str, width: int, height: int) -> Callable[[Any], Any]:
        """A proposer for the mask generator: ``proposer(predictor)`` -> the image's boxes (``Nx4`` pixels)."""
        head, meta = _load_head(self.source, self.sha256)
        return lambda predictor: propose_boxes(head, meta, predictor, self.source)


@lru_cache(maxsize=4)
def _load_head(source: str, sha256: str) -> tuple[Any, dict]:
    from edgesam_core.models.box_proposal_head import load_proposal_head

    try:
        return load_proposal_head(source)
    except ValueError as exc:
        raise InputError(f"{source} {exc}") from None


def propose_boxes(head: Any, meta: dict, predictor: Any, source: str) -> Any:
    """The head's boxes for the image set in ``predictor``, in its pixels (``Nx4`` float64 array)."""
    import numpy as np
    import torch

    from edgesam_core.models.box_proposal_head import decode_proposals

    variant = getattr(getattr(predictor, "model", None), "variant", None)  # known for PyTorch weights
    if variant and meta.get("model") and variant != meta["model"]:
        raise InputError(f"{source} was trained on {meta['model']}'s embeddings, this model is {variant}; train "
                         "proposals for this model with 'edgesam finetune --train proposals'")
    embedding = predictor.get_image_embedding()
    embedding = torch.as_tensor(np.asarray(embedding) if not isinstance(embedding, torch.Tensor) else embedding)
    expected = (int(meta["embed_dim"]), int(meta["grid"]), int(meta["grid"]))
    if tuple(embedding.shape[1:]) != expected:
        raise InputError(f"{source} was trained on {meta.get('model', 'another model')}'s {expected[0]}x{expected[1]}"
                         f"x{expected[2]} embeddings, this model gives {'x'.join(map(str, embedding.shape[1:]))}; "
                         "train proposals for this model with 'edgesam finetune --train proposals'")
    with torch.no_grad():
        objectness, sides = head(embedding.detach().float().cpu())
    input_h, input_w = predictor.input_size
    boxes, _ = decode_proposals(objectness[0], sides[0], int(meta["img_size"]) / expected[1], (input_h, input_w))
    height, width = predictor.original_size
    boxes = boxes.double() * torch.tensor([width / input_w, height / input_h] * 2, dtype=torch.float64)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep].numpy()


def load_box_proposals(path: str | Path) -> BoxProposals | LearnedProposals:
    """Read and check a proposals file: a detector's boxes (JSON; see the module docstring for its two forms) or a
    trained proposal head (``.pt``/``.pth``).

    Raises:
        InputError: a missing or unreadable file, not JSON, a malformed box, or a ``.pt`` that is not a proposal
        head (named, with the fix).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"Proposals file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix.lower() in (".pt", ".pth"):
        learned = LearnedProposals(str(path), hashlib.sha256(raw).hexdigest())
        _load_head(learned.source, learned.sha256)  # checked now, before any image is encoded
        return learned
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
    return BoxProposals(str(path), hashlib.sha256(raw).hexdigest(), images=images)


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
