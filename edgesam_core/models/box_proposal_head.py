"""Object proposals from SAM's image embedding: a small CenterNet-style head for box-prompted everything mode.

Per embedding cell the head predicts an objectness logit, trained to peak at the cell holding an object's box
centre, and the log distances (in cells) from that cell's centre to the box's four sides. Decoding keeps local
maxima of the objectness, so one box comes out per object. The image encoder stays frozen; the head reads the
embedding the predictor computes anyway: on a 256x64x64 embedding it costs about one decoder prompt (9.9 ms,
0.05x of the PyTorch encoder, 2 CPU threads).
(EdgeSAM tried an mmdet RPN for the same purpose; MobileSAMv2 uses a separate YOLOv8 detector.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Smallest and largest predicted distance from a cell centre to a box side, in cells.
MIN_SIDE, MAX_SIDE = 0.25, 128.0
#: Boxes kept per image by default, and their lowest objectness (used by training's recall and by ``segment``).
MAX_BOXES, MIN_SCORE = 100, 0.05


class BoxProposalHead(nn.Module):
    """``B x C x g x g`` image embedding -> objectness logits ``B x g x g`` and log side distances ``B x 4 x g x g``.

    Args:
        embed_dim: channels of the image embedding (256 for every SAM variant).
        hidden: channels of the two 3x3 convolutions.
    """

    def __init__(self, embed_dim: int = 256, hidden: int = 128) -> None:
        super().__init__()
        self.embed_dim, self.hidden = int(embed_dim), int(hidden)
        self.trunk = nn.Sequential(
            nn.Conv2d(embed_dim, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.objectness = nn.Conv2d(hidden, 1, 1)
        self.sides = nn.Conv2d(hidden, 4, 1)
        nn.init.constant_(self.objectness.bias, -math.log((1 - 0.1) / 0.1))  # CenterNet's prior of 0.1

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(embedding)
        return self.objectness(features)[:, 0], self.sides(features)


def proposal_targets(boxes: torch.Tensor, grid: int, stride: float) -> tuple[torch.Tensor, ...]:
    """Training targets of one image from its ``N x 4`` xyxy boxes in the model-input frame.

    Returns:
        ``heat`` ``g x g`` (1 at each box's centre cell, a Gaussian of sigma ``max(0.5, 0.1 sqrt(w h))`` cells
        around it, max over boxes), ``sides`` ``4 x g x g`` (log distances, in cells, from the centre cell's centre
        to the box's left, top, right and bottom sides) and ``centres`` ``g x g`` bool (where ``sides`` counts).
        Where two boxes share a centre cell the smaller one is kept (it is the harder to find otherwise).
    """
    heat = torch.zeros(grid, grid)
    sides = torch.zeros(4, grid, grid)
    centres = torch.zeros(grid, grid, dtype=torch.bool)
    cells = torch.arange(grid, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(cells, cells, indexing="ij")
    boxes = boxes.float().reshape(-1, 4) / stride
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for x0, y0, x1, y1 in boxes[torch.argsort(areas, descending=True)].tolist():  # the smallest written last
        col = min(max(int((x0 + x1) / 2), 0), grid - 1)
        row = min(max(int((y0 + y1) / 2), 0), grid - 1)
        sigma = max(0.5, 0.1 * math.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0)))
        blob = torch.exp(-((xs - (col + 0.5)) ** 2 + (ys - (row + 0.5)) ** 2) / (2 * sigma * sigma))
        heat = torch.maximum(heat, blob)
        heat[row, col] = 1.0
        distances = torch.tensor([col + 0.5 - x0, row + 0.5 - y0, x1 - col - 0.5, y1 - row - 0.5])
        sides[:, row, col] = distances.clamp(MIN_SIDE, MAX_SIDE).log()
        centres[row, col] = True
    return heat, sides, centres


def proposal_loss(objectness: torch.Tensor, sides: torch.Tensor, heat: torch.Tensor, side_targets: torch.Tensor,
                  centres: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the objectness plus L1 on the log side distances at the centres,
    both summed and divided by the number of objects (batched: ``B x g x g``, ``B x 4 x g x g``)."""
    prob = objectness.sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = heat >= 1.0
    objects = max(int(positive.sum()), 1)
    focal = -(prob.log() * (1 - prob) ** 2)[positive].sum()
    focal = focal - ((1 - prob).log() * prob ** 2 * (1 - heat) ** 4)[~positive].sum()
    pick = centres[:, None].expand_as(sides)
    regression = F.l1_loss(sides[pick], side_targets[pick], reduction="sum")
    return (focal + regression) / objects


@torch.no_grad()
def decode_proposals(objectness: torch.Tensor, sides: torch.Tensor, stride: float, input_size: tuple[int, int],
                     max_boxes: int = MAX_BOXES, min_score: float = MIN_SCORE) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's boxes: local maxima (3x3) of the objectness inside the ``input_size`` (h, w) part of the frame,
    the ``max_boxes`` best with a score of at least ``min_score``.

    Args:
        objectness: ``g x g`` logits. sides: ``4 x g x g`` log distances in cells.
        stride: model-input pixels per cell. input_size: the resized image's (h, w) before padding.

    Returns:
        ``(boxes K x 4 xyxy in the model-input frame, clipped to input_size; scores K)``, best first.
    """
    score = objectness.float().sigmoid()
    grid = score.shape[-1]
    peaks = score == F.max_pool2d(score[None, None], 3, stride=1, padding=1)[0, 0]
    rows = (torch.arange(grid) + 0.5) * stride < input_size[0]
    cols = (torch.arange(grid) + 0.5) * stride < input_size[1]
    keep = peaks & rows[:, None] & cols[None, :] & (score >= min_score)
    values = torch.where(keep, score, torch.zeros_like(score)).flatten()
    count = min(int(keep.sum()), max_boxes)
    top, index = values.topk(count)
    row, col = index // grid, index % grid
    centre = torch.stack([col, row], dim=1).float() + 0.5
    distance = sides.float().flatten(1)[:, index].T.clamp(math.log(MIN_SIDE), math.log(MAX_SIDE)).exp()
    boxes = torch.cat([centre - distance[:, :2], centre + distance[:, 2:]], dim=1) * stride
    limit = torch.tensor([input_size[1], input_size[0]] * 2, dtype=boxes.dtype)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    return boxes, top


#: What a proposals file says it is (``edgesam finetune --train proposals`` writes it).
FILE_FORMAT = "edgesam-box-proposals/1"


def proposal_head_file(head: BoxProposalHead, grid: int, img_size: int, **meta: str | float) -> dict:
    """What ``torch.save`` writes for a trained head: tensors, numbers and strings only (``weights_only`` loads it)."""
    return {"format": FILE_FORMAT, "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "embed_dim": head.embed_dim, "hidden": head.hidden, "grid": int(grid), "img_size": int(img_size), **meta}


def load_proposal_head(path: str) -> tuple[BoxProposalHead, dict]:
    """A trained head (eval mode) and the file's other fields.

    Raises:
        ValueError: the file is not a proposals file (the message says what it is instead).
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or pickled-object files are all refused the same way
        raise ValueError(f"cannot be read as a proposals file ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != FILE_FORMAT:
        raise ValueError("is not a proposals file (write one with 'edgesam finetune --train proposals')")
    head = BoxProposalHead(int(saved["embed_dim"]), int(saved["hidden"]))
    head.load_state_dict(saved["state_dict"])
    return head.eval(), {k: v for k, v in saved.items() if k != "state_dict"}
