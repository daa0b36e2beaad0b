"""HQSeg-44K, the training data of the HQ step (spec §3.8): seven sets of images with one fine ground-truth
mask each, augmented with a horizontal flip and large-scale jitter, prompted from the mask.

Expected layout under the dataset root (the ``data/`` folder of HQ-SAM's training release, unzipped)::

    DIS5K/DIS-TR/{im,gt}/                                   DIS5K-TR
    thin_object_detection/ThinObject5K/{images_train,masks_train}/   ThinObject5K-TR
    cascade_psp/{fss_all,DUTS-TR,DUTS-TE,ecssd,MSRA_10K}/   FSS, DUTS-TR, DUTS-TE, ECSSD, MSRA10K

Images are ``<stem>.jpg`` and masks ``<stem>.png`` (in the same folder for the cascade_psp sets).

Items follow :mod:`edgesam_core.data.prompt_dataset` (``(image 3xSxS, target)``) with one prompt per image:
``prompt_box`` ``Px4`` (the tight box), ``prompt_point`` ``PxKx2``, ``point_label`` ``PxK``, ``box_used`` ``P``
(bool) and ``gt_mask`` ``PxSxS`` uint8 (0-255), where ``P`` is 1, or 0 when the crop holds no foreground.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from edgesam_core.data.prompt_dataset import PromptDataset, RawSample, load_rgb, logger
from edgesam_core.data.prompt_sampling import prompt_rng, sample_hq_prompt
from edgesam_core.errors import ConfigError, DatasetError

HQSEG_HINT = ("HQSeg-44K is the data/ folder of https://huggingface.co/sam-hq-team/sam-hq-training (e.g. "
              "`huggingface-cli download sam-hq-team/sam-hq-training --include 'data/*' --local-dir hq`, then "
              "unzip its archives); pass the folder holding DIS5K/, cascade_psp/ and thin_object_detection/ "
              "as --data-root")


@dataclass(frozen=True)
class HQSubset:
    """One training set: where its images and masks live, relative to the dataset root."""

    name: str
    image_dir: str
    mask_dir: str


HQSEG_TRAIN_SETS: tuple[HQSubset, ...] = (
    HQSubset("DIS5K-TR", "DIS5K/DIS-TR/im", "DIS5K/DIS-TR/gt"),
    HQSubset("ThinObject5K-TR", "thin_object_detection/ThinObject5K/images_train",
             "thin_object_detection/ThinObject5K/masks_train"),
    HQSubset("FSS", "cascade_psp/fss_all", "cascade_psp/fss_all"),
    HQSubset("DUTS-TR", "cascade_psp/DUTS-TR", "cascade_psp/DUTS-TR"),
    HQSubset("DUTS-TE", "cascade_psp/DUTS-TE", "cascade_psp/DUTS-TE"),
    HQSubset("ECSSD", "cascade_psp/ecssd", "cascade_psp/ecssd"),
    HQSubset("MSRA10K", "cascade_psp/MSRA_10K", "cascade_psp/MSRA_10K"),
)
IMAGE_SUFFIX, MASK_SUFFIX = ".jpg", ".png"


@dataclass(frozen=True)
class JitterParams:
    """What one large-scale-jitter draw did: flip, resized size, crop offset and the unpadded size."""

    flip: bool
    scale: float
    resized_hw: tuple[int, int]
    offset_yx: tuple[int, int]
    crop_hw: tuple[int, int]


def draw_jitter(height: int, width: int, out_size: int, rng: np.random.Generator,
                scale_range: tuple[float, float] = (0.1, 2.0), flip_p: float = 0.5) -> JitterParams:
    """Random horizontal flip, then large-scale jitter (spec §3.8): the long side is resized to
    ``round(s * out_size)`` with ``s ~ U(scale_range)``, and a random ``out_size`` crop is taken."""
    flip = bool(rng.random() < flip_p)
    scale = float(rng.uniform(*scale_range))
    factor = round(scale * out_size) / max(height, width)
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    crop_h, crop_w = min(out_size, new_h), min(out_size, new_w)
    off_y = int(rng.integers(0, new_h - crop_h + 1))
    off_x = int(rng.integers(0, new_w - crop_w + 1))
    return JitterParams(flip, scale, (new_h, new_w), (off_y, off_x), (crop_h, crop_w))


def apply_jitter(image: torch.Tensor, mask: torch.Tensor, params: JitterParams,
                 out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply :class:`JitterParams` to a ``3xHxW`` float image (0-255) and an ``HxW`` uint8 mask.

    The image is resized bilinearly (antialiased when shrinking, as every other resize of this project), the
    mask with nearest neighbour (no new grey levels); both are cropped and zero-padded right/bottom to
    ``out_size`` in raw pixel space (black image, background mask), as upstream's LSJ.
    """
    if params.flip:
        image, mask = image.flip(-1), mask.flip(-1)
    size = list(params.resized_hw)
    img = F.interpolate(image[None], size, mode="bilinear", align_corners=False, antialias=True)[0]
    msk = F.interpolate(mask[None, None].float(), size, mode="nearest")[0, 0]
    (y, x), (h, w) = params.offset_yx, params.crop_hw
    out_img = torch.zeros(3, out_size, out_size, dtype=torch.float32)
    out_msk = torch.zeros(out_size, out_size, dtype=torch.uint8)
    out_img[:, :h, :w] = img[:, y : y + h, x : x + w]
    out_msk[:h, :w] = msk[y : y + h, x : x + w].round().to(torch.uint8)
    return out_img, out_msk


def load_mask(path: Path) -> np.ndarray:
    """Read a ground-truth mask as ``HxW`` uint8 grey levels (first channel of a colour file, as upstream)."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode not in ("L", "RGB", "RGBA", "LA"):
            img = img.convert("L")  # 1-bit, palette and 16-bit files
        arr = np.array(img)
    return np.ascontiguousarray(arr[..., 0] if arr.ndim == 3 else arr, dtype=np.uint8)


class HQSegDataset(PromptDataset):
    """The HQSeg-44K training images with their masks, augmented and prompted (see the module docstring).

    Pairs ``<stem>.jpg`` with ``<stem>.png`` per set, in sorted order; an image without a mask is left out
    (logged). Augmentation and prompts depend only on ``(seed, epoch, index)``.

    Args:
        root: dataset root (see the module docstring).
        img_size: model input size ``S`` (1024; 128 for debug models).
        subsets: names from :data:`HQSEG_TRAIN_SETS` to use (None or empty: all seven).
        seed: augmentation / prompt seed.
        scale_range: large-scale-jitter range of the long side, in units of ``img_size``.
        on_error: ``"skip"`` or ``"raise"`` for unreadable samples.

    Raises:
        DatasetError: a set's folder is missing (named, with how to get the data), or a set holds no pair.
        ConfigError: an unknown name in ``subsets``.
    """

    def __init__(self, root: str | Path, img_size: int = 1024, subsets: Sequence[str] | None = None, seed: int = 0,
                 scale_range: tuple[float, float] = (0.1, 2.0), on_error: str = "skip") -> None:
        super().__init__(img_size=img_size, max_prompts=1, seed=seed, on_error=on_error)
        self.root = Path(root)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.subsets = select_subsets(subsets)
        missing = [self.root / d for s in self.subsets for d in dict.fromkeys((s.image_dir, s.mask_dir))
                   if not (self.root / d).is_dir()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DatasetError(f"HQSeg-44K folder {missing[0]} does not exist{more}; {HQSEG_HINT}, or train on "
                               "fewer sets with --set data.subsets=[DUTS-TR,...]")
        self.items: list[tuple[HQSubset, str]] = []
        for subset in self.subsets:
            image_dir, mask_dir = self.root / subset.image_dir, self.root / subset.mask_dir
            stems = sorted(p.name[: -len(IMAGE_SUFFIX)] for p in image_dir.glob(f"*{IMAGE_SUFFIX}"))
            paired = [s for s in stems if (mask_dir / f"{s}{MASK_SUFFIX}").is_file()]
            if len(paired) < len(stems):
                unpaired = sorted(set(stems) - set(paired))
                logger.warning("%d image(s) in %s have no %s mask in %s and are left out (e.g. %s)",
                               len(unpaired), image_dir, MASK_SUFFIX, mask_dir, unpaired[0])
            if not paired:
                raise DatasetError(f"No <name>{IMAGE_SUFFIX} + <name>{MASK_SUFFIX} pairs in {image_dir} "
                                   f"({subset.name}); {HQSEG_HINT}")
            self.items += [(subset, s) for s in paired]

    def __len__(self) -> int:
        return len(self.items)

    def _paths(self, index: int) -> tuple[Path, Path]:
        subset, stem = self.items[index]
        return (self.root / subset.image_dir / f"{stem}{IMAGE_SUFFIX}",
                self.root / subset.mask_dir / f"{stem}{MASK_SUFFIX}")

    def _describe(self, index: int) -> str:
        image, mask = self._paths(index)
        return f"{image} / {mask.name}"

    def _load(self, index: int) -> RawSample:
        subset, stem = self.items[index]
        image_path, mask_path = self._paths(index)
        image, mask = load_rgb(image_path), load_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image is {image.shape[0]}x{image.shape[1]} but its mask {mask.shape[0]}x{mask.shape[1]}")
        return RawSample(image=image, image_id=f"{subset.name}/{stem}", file_name=image_path.name,
                         boxes_xywh=np.zeros((1, 4)), segmentations=[], annotation_ids=np.zeros(1, np.int64),
                         areas=np.array([float((mask > 128).sum())]), extra={"gt_mask": mask[None]})

    def _build(self, index: int, raw: RawSample) -> tuple[torch.Tensor, dict[str, Any]]:
        s = self.img_size
        height, width = raw.image.shape[:2]
        rng = prompt_rng(self.seed, index, self.epoch)
        params = draw_jitter(height, width, s, rng, self.scale_range)
        image = torch.from_numpy(raw.image).permute(2, 0, 1).float()
        image, gt = apply_jitter(image, torch.from_numpy(raw.extra["gt_mask"][0]), params, s)
        # Normalised after padding: the padding is black in raw pixels (upstream's LSJ; see spec §9.23).
        image = (image - self.pixel_mean) / self.pixel_std
        prompt = sample_hq_prompt(gt.numpy(), params.crop_hw, rng)
        n = 0 if prompt is None else 1
        k = 0 if prompt is None else len(prompt.points)
        target: dict[str, Any] = {
            "prompt_box": torch.zeros(n, 4) if prompt is None else torch.tensor(prompt.box[None], dtype=torch.float32),
            "prompt_point": torch.zeros(n, k, 2) if prompt is None else
            torch.tensor(prompt.points[None], dtype=torch.float32).reshape(1, k, 2),
            "point_label": torch.zeros(n, k) if prompt is None else
            torch.tensor(prompt.labels[None], dtype=torch.float32).reshape(1, k),
            "box_used": torch.tensor([prompt.use_box] if prompt is not None else [], dtype=torch.bool),
            "gt_mask": gt[None] if prompt is not None else gt[None][:0],
            "img_size_before_pad": params.crop_hw,
            "original_size": (int(height), int(width)),
            "image_id": raw.image_id,
            "file_name": raw.file_name,
            "annotation_ids": torch.zeros(n, dtype=torch.int64),
            "area": torch.tensor([float((gt > 128).sum())] if n else [], dtype=torch.float32),
        }
        return image, target


def select_subsets(names: Sequence[str] | None) -> list[HQSubset]:
    """The :class:`HQSubset` entries named in ``names`` (all seven when empty), in upstream's order."""
    if not names:
        return list(HQSEG_TRAIN_SETS)
    known = {s.name.lower(): s for s in HQSEG_TRAIN_SETS}
    unknown = [n for n in names if n.lower() not in known]
    if unknown:
        raise ConfigError(f"Unknown HQSeg-44K set(s) {', '.join(unknown)} in data.subsets; choose from "
                          f"{', '.join(s.name for s in HQSEG_TRAIN_SETS)}")
    wanted = {n.lower() for n in names}
    return [s for s in HQSEG_TRAIN_SETS if s.name.lower() in wanted]
