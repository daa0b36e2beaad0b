"""Numerical parity of exported ONNX graphs against the PyTorch model on fixed, real inputs.

The reference side always runs the model's own ``prompt_encoder`` and ``mask_decoder`` (not the export
wrappers), so a parity pass also proves the wrapper reproduces PyTorch's prompt semantics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: An export passes when it is at most this many times as far from the float64 reference as fp32 PyTorch is.
NOISE_FACTOR = 3.0


#: fp32 rounding (half an ulp, relative).
FP32_EPS = 6e-8


def with_runtime_noise(model: Any, seed: int = 0, eps: float = FP32_EPS) -> Any:
    """A copy of an fp32 ``model`` with the rounding error another correct fp32 runtime may make, injected.

    A runtime sums in its own order: a reduction over n terms is off by ~sqrt(n) * eps relative. So every
    convolution / linear layer's output gets ``sqrt(fan-in) * eps * N(0, 1)`` relative noise, every
    squeeze-excite gate ``sqrt(H * W) * eps`` (its spatial mean), and elementwise layers ``4 * eps`` (ONNX
    Runtime's Tanh is measured 4.5x less exact than PyTorch's). Its distance from the float64 model is the
    noise floor a correct export is judged by; on ill-conditioned weights (trained BatchNorm statistics)
    that floor is ~10^3 times the per-layer error, as measured for ONNX Runtime.
    """
    import copy
    import math

    import torch

    noisy = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)

    def add_noise(output: Any, relative: float) -> Any:
        if not (isinstance(output, torch.Tensor) and output.is_floating_point()):
            return output
        noise = torch.randn(output.shape, generator=generator, dtype=output.dtype)
        return output * (1.0 + relative * noise)

    for module in noisy.modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "fc1") and hasattr(module, "fc2"):  # squeeze-excite: a mean over H x W
            module.register_forward_hook(
                lambda _m, inputs, out: add_noise(out, eps * math.sqrt(inputs[0].shape[-1] * inputs[0].shape[-2])))
        elif list(module.children()):
            continue
        elif isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            fan_in = weight[0].numel()
            module.register_forward_hook(lambda _m, _i, out, r=eps * math.sqrt(fan_in): add_noise(out, r))
        else:
            module.register_forward_hook(lambda _m, _i, out: add_noise(out, 4 * eps))
    return noisy


@dataclass
class ParityEntry:
    """One compared output: ``graph`` (encoder/decoder/...), prompt ``case`` and output name.

    ``max_abs`` / ``rms`` are the candidate's distance from the reference; ``floor_max`` / ``floor_rms`` are
    fp32 PyTorch's distance from the same reference on the same input (0 where no floor was measured).
    """

    graph: str
    case: str
    output: str
    max_abs: float
    mean_abs: float
    ref_abs_max: float
    rms: float = 0.0
    floor_max: float = 0.0
    floor_rms: float = 0.0
    absolute: float | None = None  # overrides the report's tolerance (e.g. a float64-vs-float64 check)


def _distance(value: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    diff = np.abs(value.astype(np.float64) - ref.astype(np.float64))
    if not diff.size:
        return 0.0, 0.0, 0.0
    return float(diff.max()), float(diff.mean()), float(np.sqrt(np.mean(diff * diff)))


@dataclass
class ParityReport:
    """All compared outputs and the rule they must meet.

    The reference is the unmodified model in float64. An output passes when both

        max_abs <= noise_factor * floor_max + tolerance * max(1, ref_abs_max)
        rms     <= noise_factor * floor_rms + tolerance * max(1, ref_abs_max)

    hold: the noise floor is how far plain fp32 PyTorch lands from the float64 reference on the same input
    (it grows with the weights' conditioning: trained BatchNorm statistics amplify fp32 rounding), and the
    small absolute term covers outputs where fp32 PyTorch happens to be exact. The RMS test catches a
    systematic error (a changed DyT alpha, a flipped GELU) hidden under a few large rounding outliers.
    """

    tolerance: float
    entries: list[ParityEntry] = field(default_factory=list)
    noise_factor: float = NOISE_FACTOR
    #: Static prompt layouts only: how much padding a prompt to the layout changes each output.
    padding: list[dict[str, Any]] = field(default_factory=list)
    #: What the distances are measured from.
    reference: str = "float64 model"

    def _absolute(self, entry: ParityEntry) -> float:
        tolerance = self.tolerance if entry.absolute is None else entry.absolute
        return tolerance * max(1.0, entry.ref_abs_max)

    def limit(self, entry: ParityEntry) -> float:
        """The largest accepted ``max_abs`` for ``entry``."""
        return self.noise_factor * entry.floor_max + self._absolute(entry)

    def rms_limit(self, entry: ParityEntry) -> float:
        """The largest accepted ``rms`` for ``entry``."""
        return self.noise_factor * entry.floor_rms + self._absolute(entry)

    def ok(self, entry: ParityEntry) -> bool:
        return entry.max_abs <= self.limit(entry) and entry.rms <= self.rms_limit(entry)

    def excess(self, entry: ParityEntry) -> float:
        """How far past its limit an entry is (> 1: failed)."""
        return max(entry.max_abs / self.limit(entry) if self.limit(entry) else entry.max_abs,
                   entry.rms / self.rms_limit(entry) if self.rms_limit(entry) else entry.rms)

    @property
    def passed(self) -> bool:
        return all(self.ok(e) for e in self.entries)

    @property
    def worst(self) -> ParityEntry | None:
        return max(self.entries, key=self.excess, default=None)

    def add(self, graph: str, case: str, output: str, value: np.ndarray, ref: np.ndarray,
            fp32: np.ndarray | list[np.ndarray] | None = None, absolute: float | None = None) -> None:
        """Compare ``value`` with ``ref``.

        ``fp32``: fp32 PyTorch output(s) on the same input; the farthest from ``ref`` sets the noise floor.
        ``absolute``: this entry's tolerance instead of the report's.
        """
        ref_abs_max = float(np.abs(ref).max(initial=0.0))
        if value.shape != ref.shape:
            self.entries.append(ParityEntry(graph, case, output, float("inf"), float("inf"), ref_abs_max,
                                            float("inf"), absolute=absolute))
            return
        max_abs, mean_abs, rms = _distance(value, ref)
        floors = [_distance(f, ref) for f in ([fp32] if isinstance(fp32, np.ndarray) else fp32 or [])]
        floor_max = max((f[0] for f in floors), default=0.0)
        floor_rms = max((f[2] for f in floors), default=0.0)
        self.entries.append(ParityEntry(graph, case, output, max_abs, mean_abs, ref_abs_max, rms,
                                        floor_max, floor_rms, absolute))

    def for_graph(self, graph: str) -> ParityReport:
        """The entries of one graph only (for that graph's sidecar; the decoder keeps its as-given entries)."""
        return ParityReport(self.tolerance, [e for e in self.entries if e.graph.split(" (")[0] == graph],
                            self.noise_factor, list(self.padding) if graph == "decoder" else [], self.reference)

    def describe(self, entry: ParityEntry) -> str:
        """One line: what differed, by how much, against which limit."""
        return (f"max |diff| {entry.max_abs:.3g} (limit {self.limit(entry):.3g}), rms {entry.rms:.3g} "
                f"(limit {self.rms_limit(entry):.3g}) on {entry.graph}/{entry.case}/{entry.output} from the "
                f"{self.reference}; the noise floor there is {entry.floor_max:.3g} max / {entry.floor_rms:.3g} rms")

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "tolerance": self.tolerance, "noise_factor": self.noise_factor,
                "tolerance_rule": "against the float64 model: max_abs <= noise_factor * floor_max + tolerance * "
                                  "max(1, ref_abs_max) and rms <= noise_factor * floor_rms + tolerance * "
                                  "max(1, ref_abs_max); floor = fp32 PyTorch's distance from float64",
                "passed": self.passed, "max_abs": max((e.max_abs for e in self.entries), default=0.0),
                "entries": [{**asdict(e), "passed": self.ok(e)} for e in self.entries],
                **({"padding": self.padding} if self.padding else {})}


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

    dtype = next(model.parameters()).dtype
    embedding = embedding.to(dtype)
    interm = [t.to(dtype) for t in interm] if interm else interm
    points = None
    if coords is not None:
        c, lab = torch.from_numpy(coords).to(dtype), torch.from_numpy(labels).to(dtype)
        if boxes is not None and boxes.shape[0] > 1:
            # One copy of the shared points per box, as the multi-box graph does.
            c, lab = c.expand(boxes.shape[0], -1, -1), lab.expand(boxes.shape[0], -1)
        points = (c, lab)
    box_t = torch.from_numpy(boxes.reshape(-1, 4)).to(dtype) if boxes is not None else None
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
