"""Typed configuration of a distillation run (torch-free).

Every field carries its meaning in the docstring under it. Defaults are neutral; the per-step presets in
``presets/*.yaml`` hold upstream's hyper-parameters (spec §3.3). Learning rates are *reference* values for a
global batch of 512 images (upstream's convention): the effective rate is ``lr * batch * world / 512`` (the HQ
step uses a divisor of 4, as upstream's ``train_hq.py``), see :func:`edgesam_core.training.optim.scaled_lr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

Step = Literal["0", "1", "2", "3", "joint", "hq"]
STEPS: tuple[str, ...] = ("0", "1", "2", "3", "joint", "hq")


@dataclass
class ModelConfig:
    student: str = "edge_sam_dyt"
    """Student variant (see ``edgesam_core.models.list_variants``)."""
    teacher: str = "vit_h"
    """Teacher variant: ``vit_h`` for steps 0-3/joint, ``vit_h_hq`` for the HQ step (``*_debug`` in tests)."""
    teacher_checkpoint: Optional[str] = None
    """SAM / HQ-SAM weights for the teacher (e.g. ``sam_vit_h_4b8939.pth``); required except for step 0 tests."""
    init: Optional[str] = None
    """Student initial weights; ``None`` takes the previous step's ``final.pth`` (step 1: RepViT ImageNet or random)."""
    upsample_mode: Optional[str] = None
    """Fuse-neck upsampling override (``bicubic`` as upstream training when ``None``)."""


@dataclass
class DataConfig:
    dataset: Literal["sa1b", "hqseg44k"] = "sa1b"
    """Training data: ``sa1b`` (SA-1B prompts, teacher-only losses) or ``hqseg44k`` (HQ step: HQSeg-44K images
    with ground-truth masks, GT loss + distillation, as upstream's ``train_hq.py``)."""
    root: Optional[str] = None
    """Dataset folder: SA-1B style (``edgesam download-data``), or for ``hqseg44k`` the folder holding
    ``DIS5K/``, ``cascade_psp/`` and ``thin_object_detection/``."""
    subsets: list[str] = field(default_factory=list)
    """``hqseg44k`` only: train on these of the 7 training sets (names as ``DIS5K-TR``, ``DUTS-TR``...); empty
    means all seven."""
    split: str = "train"
    """Dataset split name passed to ``SA1BDataset``."""
    max_prompts: int = 16
    """Prompts (masks) sampled per image for steps 2-hq (upstream MAX_ALLOWED_PROMPTS)."""
    num_workers: int = 0
    """DataLoader workers; 0 keeps resume bit-exact."""
    cache_dir: Optional[str] = None
    """Teacher embedding cache; ``None`` means ``<out>/teacher_cache``."""
    shuffle: bool = True
    """Shuffle every epoch with seed + epoch (upstream's NO_RAND visits images in one fixed order)."""


@dataclass
class OptimConfig:
    base_lr: float = 3.2e-3
    """Peak LR for a global batch of 512 images (scaled, see module docstring)."""
    min_lr: float = 3.2e-4
    """Final LR of the cosine schedule (scaled like ``base_lr``)."""
    warmup_lr: float = 3.2e-5
    """LR at iteration 0 of the linear warm-up (scaled like ``base_lr``)."""
    lr_scale_divisor: float = 512.0
    """Reference batch for LR scaling (512 upstream; 4 for upstream's HQ step)."""
    weight_decay: float = 0.05
    """AdamW decay for parameters with >= 2 dims that are not biases."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 0.01
    """Global gradient-norm clip (0 disables)."""


@dataclass
class TrainConfig:
    epochs: int = 20
    """Number of epochs."""
    warmup_epochs: float = 2.0
    """Linear warm-up length in epochs (counted per iteration)."""
    batch_size: int = 16
    """Images per process per micro-batch."""
    accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """Autocast: ``auto`` = bf16 on CUDA, off on CPU; ``fp16`` uses a GradScaler."""
    seed: int = 0
    """Base seed (data order, prompt sampling, initialisation of new modules)."""
    deterministic: bool = False
    """``torch.use_deterministic_algorithms`` (slower; used by the resume tests)."""
    max_steps: Optional[int] = None
    """Stop after this many optimizer steps (smoke tests); the final checkpoint is still written."""
    save_every_steps: int = 0
    """Write a resumable checkpoint every N optimizer steps (0: only at epoch ends)."""
    keep_checkpoints: int = 2
    """Resumable checkpoints kept on disk (oldest removed)."""
    max_nonfinite_in_a_row: int = 5
    """Stop with TrainingError after this many consecutive non-finite losses/gradients."""
    log_every: int = 10
    """Progress log line every N optimizer steps (metrics.jsonl gets every step)."""
    tensorboard: bool = False
    """Also write TensorBoard scalars (needs ``edgesam[train]``)."""
    eval_bn: bool = False
    """Keep every BatchNorm in eval mode (running stats frozen) even where parameters train."""
    find_unused_parameters: bool = False
    """DDP flag; needed when some trainable parameters get no gradient in a step."""


@dataclass
class LossConfig:
    pixel_wise: float = 1.0
    """Weight of the step-1 masked embedding MSE."""
    bce: float = 5.0
    """Weight of the mask BCE (steps 2-joint; per decoder iteration divided by the iteration count)."""
    dice: float = 5.0
    """Weight of the mask Dice loss."""
    temperature: float = 1.0
    """Logit temperature T (HQ: 4, losses multiplied by T^2 as upstream)."""
    gt_bce: float = 1.0
    """``hqseg44k``: weight of the ground-truth BCE (HQ-SAM's point-sampled ``loss_masks``)."""
    gt_dice: float = 1.0
    """``hqseg44k``: weight of the ground-truth Dice loss (same sampled points)."""
    gt_points: int = 12544
    """``hqseg44k``: points sampled per mask for the GT loss (112 x 112, as HQ-SAM)."""
    gt_oversample: float = 3.0
    """``hqseg44k``: candidate points drawn per sampled point before picking the most uncertain ones."""
    gt_importance: float = 0.75
    """``hqseg44k``: share of the points taken where the student is least certain (|logit| smallest)."""


@dataclass
class PromptConfig:
    types: list[str] = field(default_factory=lambda: ["box", "point"])
    """Prompt kinds drawn once per batch (uniformly)."""
    decode_iters: int = 2
    """Decoder iterations; iterations > 0 add refinement clicks from the student/teacher disagreement."""
    points_per_refine_iter: int = 1
    """Refinement clicks added per prompt and iteration."""
    multimask_output: int = 4
    """Masks per point prompt (1, 3 or 4); boxes use 1 unless ``multimask_on_box``."""
    multimask_on_box: bool = False
    """Use ``multimask_output`` masks for box prompts too."""
    iter_on_box: bool = True
    """Run refinement iterations for box prompts too."""
    min_error_pixels: int = 10
    """A disagreement region smaller than this (times clicks) yields an ignored click (label -2)."""


@dataclass
class DistillConfig:
    step: Step = "1"
    """Curriculum step: 0 cache, 1 encoder MSE, 2 frozen SAM decoder, 3 DyT decoder, joint, hq."""
    out: str = "runs/distill"
    """Run root; each step writes ``<out>/step<N>/`` (checkpoints, metrics.jsonl, final.pth)."""
    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda``, ``cuda:1``..."""
    teacher_embeddings: Literal["auto", "cache", "online"] = "auto"
    """Steps 1-joint: ``cache`` requires every embedding cached, ``online`` runs the ViT, ``auto`` mixes."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
