"""Numerical parity of exported ONNX graphs against the PyTorch model on fixed, real inputs.

The reference side always runs the model's own ``prompt_encoder`` and ``mask_decoder`` (not the export
wrappers), so a parity pass also proves the wrapper reproduces PyTorch's prompt semantics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class ParityEntry:
    """One compared output: ``graph`` (encoder/decoder/...), prompt ``case`` and output name."""

    graph: str
    case: str
    output: str
    max_abs: float
    mean_abs: float
    ref_abs_max: float


@dataclass
class ParityReport:
    """All compared outputs and the tolerance they must meet.

    An output passes when ``max_abs <= tolerance * max(1, ref_abs_max)``: an absolute bound for values up
    to 1 (embeddings, IoU scores) that becomes relative for large logits, whose fp32 rounding grows with
    their magnitude (logits of +-200 differ by ~3e-3 between two correct fp32 runtimes).
    """

    tolerance: float
    entries: list[ParityEntry] = field(default_factory=list)

    def limit(self, entry: ParityEntry) -> float:
        """The largest accepted ``max_abs`` for ``entry``."""
        return self.tolerance * max(1.0, entry.ref_abs_max)

    def ok(self, entry: ParityEntry) -> bool:
        return entry.max_abs <= self.limit(entry)

    @property
    def passed(self) -> bool:
        return all(self.ok(e) for e in self.entries)

    @property
    def worst(self) -> ParityEntry | None:
        return max(self.entries, key=lambda e: e.max_abs / self.limit(e) if self.limit(e) else e.max_abs,
                   default=None)

    def add(self, graph: str, case: str, output: str, onnx_value: np.ndarray, ref: np.ndarray) -> None:
        """Compare two arrays of identical shape and record the figures."""
        if onnx_value.shape != ref.shape:
            self.entries.append(ParityEntry(graph, case, output, float("inf"), float("inf"),
                                            float(np.abs(ref).max(initial=0.0))))
            return
        diff = np.abs(onnx_value.astype(np.float64) - ref.astype(np.float64))
        self.entries.append(ParityEntry(graph, case, output, float(diff.max(initial=0.0)),
                                        float(diff.mean()) if diff.size else 0.0,
                                        float(np.abs(ref).max(initial=0.0))))

    def for_graph(self, graph: str) -> ParityReport:
        """The entries of one graph only (for that graph's sidecar)."""
        return ParityReport(self.tolerance, [e for e in self.entries if e.graph == graph])

    def to_dict(self) -> dict[str, Any]:
        return {"tolerance": self.tolerance, "tolerance_rule": "max_abs <= tolerance * max(1, ref_abs_max)",
                "passed": self.passed, "max_abs": max((e.max_abs for e in self.entries), default=0.0),
                "entries": [{**asdict(e), "passed": self.ok(e)} for e in self.entries]}


def synthetic_image(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A deterministic RGB uint8 image (gradients, a disc, a bar, mild noise), not square on purpose."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], axis=-1)
    disc = (yy - 0.45 * height) ** 2 + (xx - 0.4 * width) ** 2 < (0.2 * height) ** 2
    img[disc] = (220.0, 40.0, 60.0)
    img[int(0.7 * height):int(0.8 * height), int(0.55 * width):int(0.9 * width)] = (30.0, 200.0, 90.0)
    img += rng.normal(0.0, 6.0, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def prompt_cases(img_size: int) -> dict[str, dict[str, np.ndarray | None]]:
    """Fixed prompts in the SxS model frame: point-only, box-only, box+points, and special labels."""
    s = float(img_size)
    pts = np.array([[[0.30 * s, 0.35 * s], [0.62 * s, 0.50 * s]]], np.float32)
    box = np.array([[0.20 * s, 0.22 * s, 0.70 * s, 0.60 * s]], np.float32)
    return {
        "points": {"coords": pts, "labels": np.array([[1, 0]], np.float32), "box": None},
        "box": {"coords": None, "labels": None, "box": box},
        "box+points": {"coords": pts[:, :1], "labels": np.array([[1]], np.float32), "box": box},
        # -2 (ignored token) and 2/3 (box corners given as points) exercise the less common labels.
        "labels-2,2,3": {"coords": np.concatenate([pts, box.reshape(1, 2, 2)], axis=1),
                         "labels": np.array([[1, -2, 2, 3]], np.float32), "box": None},
    }


def decoder_feed(case: dict[str, np.ndarray | None], embedding: np.ndarray,
                 interm: list[np.ndarray] | None) -> dict[str, np.ndarray]:
    """ONNX decoder inputs for one prompt case (absent prompts as dummies with a false flag)."""
    coords, labels, box = case["coords"], case["labels"], case["box"]
    feed = {
        "image_embeddings": embedding,
        "point_coords": coords if coords is not None else np.zeros((1, 1, 2), np.float32),
        "point_labels": labels if labels is not None else -np.ones((1, 1), np.float32),
        "boxes": box.reshape(1, 1, 4) if box is not None else np.zeros((1, 1, 4), np.float32),
        "point_valid": np.array([[coords is not None]]),
        "boxes_valid": np.array([[box is not None]]),
    }
    for i, arr in enumerate(interm or []):
        feed[f"interm_embeddings_{i}"] = arr
    return feed


def torch_decode(model: Any, embedding: Any, interm: list[Any] | None,
                 coords: np.ndarray | None, labels: np.ndarray | None, boxes: np.ndarray | None,
                 upsample: bool) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch reference: (scores, masks) as the ONNX decoder defines them (4 tokens; HQ: HQ mask).

    Runs the model's own prompt encoder and mask decoder (``embedding`` 1xCxgxg tensor, ``interm`` the HQ
    features). Torch is imported here so the numpy helpers of this module work without it.
    """
    import torch
    import torch.nn.functional as F

    points = None
    if coords is not None:
        c, lab = torch.from_numpy(coords), torch.from_numpy(labels)
        if boxes is not None and boxes.shape[0] > 1:
            # One copy of the shared points per box, as the multi-box graph does.
            c, lab = c.expand(boxes.shape[0], -1, -1), lab.expand(boxes.shape[0], -1)
        points = (c, lab)
    box_t = torch.from_numpy(boxes.reshape(-1, 4)) if boxes is not None else None
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=points, boxes=box_t, masks=None)
        image_pe = model.prompt_encoder.get_dense_pe()
        if model.is_hq:
            hq_mask, _sam, iou = model.mask_decoder(embedding, image_pe, sparse, dense,
                                                    num_multimask_outputs=1, interm_embeddings=interm)
            scores, masks = iou, hq_mask
        else:
            masks, scores = model.mask_decoder(embedding, image_pe, sparse, dense, num_multimask_outputs=4)
        if upsample:
            masks = F.interpolate(masks, (model.img_size, model.img_size), mode="bilinear", align_corners=False)
    return scores.numpy(), masks.numpy()
