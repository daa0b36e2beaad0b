"""The distillation recipe: one class, four verbs (setup / train / save_checkpoint / cleanup), for every
curriculum step (spec §3). ``run(cfg)`` is what ``edgesam distill`` calls.

Run directory: ``<out>/step<N>/`` holds ``checkpoints/ckpt_step_*.pth`` (resumable), ``metrics.jsonl``,
``config.yaml`` and ``final.pth`` (a plain ``{"model": state_dict}`` with full prefixed keys that
``build_sam(<student variant>)`` loads as is). Step N's default ``--init`` is step N-1's ``final.pth``.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgesam_core.config.config_loader import config_to_dict
from edgesam_core.config.schema import DistillConfig
from edgesam_core.errors import ConfigError, DatasetError
from edgesam_core.progress import NullProgress, Progress
from edgesam_core.training import student_init
from edgesam_core.training.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from edgesam_core.training.engine import Engine
from edgesam_core.training.optim import CosineSchedule, build_optimizer, scaled_lr
from edgesam_core.training.state import newest_readable_checkpoint, save_final
from edgesam_core.training.steps import LossModule, decoder_losses, encoder_losses, hq_gt_losses
from edgesam_core.training.teacher import Teacher

PREVIOUS_STEP = {"2": "1", "3": "2", "joint": "3", "hq": "joint"}


@dataclass
class RunResult:
    """Outcome of :func:`run`: where the final weights are and how far training went."""

    step: str
    run_dir: Path
    final: Path | None
    steps_done: int
    skipped_steps: int


def step_dir(out: str | Path, step: str) -> Path:
    """``<out>/step<step>``."""
    return Path(out) / f"step{step}"


def default_init(cfg: DistillConfig) -> str | None:
    """``--init`` if given, else the previous step's ``final.pth`` (required for steps 2-hq)."""
    if cfg.model.init is not None:
        if not Path(cfg.model.init).is_file():
            raise ConfigError(f"--init file not found: {cfg.model.init}")
        return cfg.model.init
    prev = PREVIOUS_STEP.get(cfg.step)
    if prev is None:
        return None
    path = step_dir(cfg.out, prev) / "final.pth"
    if not path.is_file():
        raise ConfigError(f"Step {cfg.step} starts from step {prev}'s {path}, which does not exist; "
                          f"run `edgesam distill --step {prev}` first or pass --init PATH.")
    return str(path)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the run's RNG state is checkpointed from here on)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_dataset(cfg: DistillConfig, img_size: int) -> Any:
    """The training dataset of the run: SA-1B, or HQSeg-44K for the HQ step (``data.dataset``)."""
    if cfg.data.dataset == "hqseg44k":
        from edgesam_core.data.hqseg import HQSEG_HINT, HQSegDataset

        if cfg.data.root is None:
            raise ConfigError(f"No dataset: --step hq trains on HQSeg-44K by default; {HQSEG_HINT} "
                              "(or --set data.dataset=sa1b with an SA-1B folder).")
        return HQSegDataset(cfg.data.root, img_size=img_size, subsets=cfg.data.subsets, seed=cfg.train.seed)
    from edgesam_core.data.sa1b import SA1BDataset

    if cfg.data.root is None:
        raise ConfigError("No dataset: pass --data-root (an SA-1B style folder, see `edgesam download-data`).")
    return SA1BDataset(cfg.data.root, split=cfg.data.split, img_size=img_size, max_prompts=cfg.data.max_prompts,
                       seed=cfg.train.seed)


def to_batch(collated: Any, device: torch.device) -> Any:
    """Turn the data module's collated output into a :class:`~edgesam_core.training.steps.Batch`."""
    from edgesam_core.training.steps import Batch

    images, targets = collated
    sizes = torch.as_tensor([list(t["img_size_before_pad"])[-2:] for t in targets], dtype=torch.long)
    extras: dict[str, Any] = {}
    if targets and "gt_mask" in targets[0] and "point_label" in targets[0]:  # HQSeg: K points per prompt + GT
        points = [torch.as_tensor(t["prompt_point"], dtype=torch.float32) for t in targets]
        extras = {"point_labels": [torch.as_tensor(t["point_label"], dtype=torch.float32) for t in targets],
                  "box_used": [torch.as_tensor(t["box_used"], dtype=torch.bool) for t in targets],
                  "gt_masks": [torch.as_tensor(t["gt_mask"]).to(device, non_blocking=True) for t in targets]}
    else:
        points = [torch.as_tensor(t["prompt_point"], dtype=torch.float32).reshape(-1, 1, 2) for t in targets]
    return Batch(
        images=images.to(device, non_blocking=True),
        sizes=sizes.to(device),
        boxes=[torch.as_tensor(t["prompt_box"], dtype=torch.float32).reshape(-1, 4) for t in targets],
        points=points,
        keys=[str(t["image_id"]) for t in targets],
        extras=extras,
    )


def make_loader(dataset: Any, sampler: Any, cfg: DistillConfig, drop_last: bool = True) -> Any:
    """DataLoader with its own generator, so creating an iterator never consumes the global RNG (resume
    must replay exactly)."""
    from torch.utils.data import DataLoader

    from edgesam_core.data.collate import collate_fn

    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=cfg.data.num_workers, collate_fn=collate_fn,
                      generator=torch.Generator().manual_seed(cfg.train.seed))


class DistillRecipe:
    """Distillation of one step.

    Args:
        cfg: resolved configuration.
        progress: progress sink (the CLI passes a rich one).
        resume: a resumable checkpoint to continue from, or ``"auto"`` for the latest in the run directory.
    """

    def __init__(self, cfg: DistillConfig, progress: Progress | None = None, resume: str | None = None) -> None:
        self.cfg = cfg
        self.progress = progress or NullProgress()
        self.resume = resume
        self.run_dir = step_dir(cfg.out, cfg.step)
        self.info: DistInfo | None = None
        self.engine: Engine | None = None

    def setup(self) -> None:
        """Process group, seeds, teacher, student (init + freezing + new modules), optimizer, data, resume."""
        cfg = self.cfg
        self.info = info = init_distributed(cfg.device)
        if not info.is_main:
            self.progress = NullProgress()  # one progress display and log, from rank 0
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(cfg.train.seed)
        from edgesam_core.models import build_sam, resolve_variant

        init = default_init(cfg)
        mode = cfg.teacher_embeddings if cfg.step in ("1", "2", "3", "joint") else "online"
        cache_dir = cfg.data.cache_dir or str(Path(cfg.out) / "teacher_cache")
        spec = resolve_variant(cfg.model.student)  # upstream cache records are read in the student's shape
        self.teacher = Teacher(cfg.model.teacher, cfg.model.teacher_checkpoint, info.device, mode,
                               cache_dir if Path(cache_dir).exists() else None,
                               embedding_shape=(spec.embed_dim, spec.embed_grid, spec.embed_grid))
        if info.is_main and getattr(self.teacher.cache, "read_only", False):
            self.progress.log(f"teacher embeddings: upstream cache {self.teacher.cache.directory} "
                              f"({len(self.teacher.cache)} images); its teacher and preprocessing are not recorded "
                              "there, so they cannot be checked against this run")
        # Every module (HQ ones included) exists and holds its initial weights before the optimizer is
        # built, so the optimizer steps the very Parameters the model uses (fix of upstream §9.17).
        student = build_sam(cfg.model.student, upsample_mode=cfg.model.upsample_mode)
        if student.img_size != self.teacher.img_size:
            raise ConfigError(f"Student {cfg.model.student} ({student.img_size}px) and teacher {cfg.model.teacher} "
                              f"({self.teacher.img_size}px) disagree on the input size.")
        hq_step, hq_student, hq_teacher = cfg.step == "hq", bool(student.is_hq), bool(self.teacher.sam.is_hq)
        if hq_step != hq_student or hq_step != hq_teacher:
            want = "an HQ student and teacher (edge_sam_dyt_hq, vit_h_hq)" if hq_step else "non-HQ models"
            raise ConfigError(f"Step {cfg.step} needs {want}; got student {cfg.model.student} and teacher "
                              f"{cfg.model.teacher} (--model / --teacher).")
        counts = student_init.initialise_student(student, cfg.step, init, self.teacher.state_dict())
        trainable = student_init.freeze_for_step(student, cfg.step)
        self.student = student.to(info.device)
        student_init.set_train_mode(self.student, cfg.step, cfg.train.eval_bn)
        if info.is_main:
            src = f"{counts['init']} tensors from {init}" if init else "no --init (random encoder)"
            self.progress.log(f"step {cfg.step}: student {cfg.model.student}, {src}, {counts['teacher']} from the "
                              f"teacher; {len(trainable)} trainable tensors")

        # Per-rank stream for the random refinement clicks (upstream: SEED + rank); weights are already built.
        seed_everything(cfg.train.seed + info.rank)
        self.dataset = build_dataset(cfg, student.img_size)
        from edgesam_core.training.distributed import ResumableDistributedSampler

        self.sampler = ResumableDistributedSampler(len(self.dataset), info.rank, info.world_size,
                                                   shuffle=cfg.data.shuffle, seed=cfg.train.seed)
        self.loader = make_loader(self.dataset, self.sampler, cfg)
        accum = cfg.train.accumulation_steps
        self.steps_per_epoch = len(self.sampler) // cfg.train.batch_size // accum
        if self.steps_per_epoch < 1:
            raise DatasetError(f"{len(self.dataset)} images cannot fill one step of batch {cfg.train.batch_size} x "
                               f"{accum} accumulation x {info.world_size} process(es); lower --set train.batch_size.")

        o, t = cfg.optim, cfg.train
        scale = functools.partial(scaled_lr, batch_size=t.batch_size, world_size=info.world_size,
                                  accumulation_steps=accum, divisor=o.lr_scale_divisor)
        self.optimizer = build_optimizer(self.student, o, scale(o.base_lr))
        total = t.epochs * self.steps_per_epoch
        schedule = CosineSchedule(scale(o.base_lr), scale(o.min_lr), scale(o.warmup_lr),
                                  int(round(t.warmup_epochs * self.steps_per_epoch)), total)
        fn = encoder_losses if cfg.step == "1" else decoder_losses
        if cfg.data.dataset == "hqseg44k":
            fn = hq_gt_losses
        module = LossModule(self.student, functools.partial(fn, teacher=self.teacher, cfg=cfg))
        self.engine = Engine(module, self.optimizer, schedule, cfg, info, self.run_dir, self.progress)

        payload = None
        if self.resume == "auto":
            log = self.progress.log if info.is_main else (lambda _message: None)
            resume, payload = newest_readable_checkpoint(self.engine.ckpt_dir, log)
        else:
            resume = self.resume
        if resume is not None:
            self.engine.load_checkpoint(Path(resume), payload)
            if info.is_main:
                self.progress.log(f"resumed from {resume} at step {self.engine.state.step}")
        elif self.resume == "auto" and info.is_main:
            self.progress.log(f"--auto-resume: no checkpoint in {self.engine.ckpt_dir}, starting fresh")
        if info.is_main:
            import yaml

            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))

    def train(self) -> None:
        """Epoch loop; checkpoints every ``save_every_steps`` and at each epoch end."""
        eng, cfg = self.engine, self.cfg
        assert eng is not None and self.info is not None  # set by setup()
        state, t = eng.state, cfg.train
        total = t.epochs * self.steps_per_epoch
        if t.max_steps is not None:
            total = min(total, t.max_steps)
        task = self.progress.add_task(f"distill step {cfg.step}", total=total)
        self.progress.update(task, completed=state.step)
        accum = t.accumulation_steps
        while state.epoch < t.epochs and state.step < total:
            self.sampler.set_epoch(state.epoch, start=state.batch_in_epoch * t.batch_size)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(state.epoch)  # prompt sampling is keyed by (seed, index, epoch)
            batches = iter(self.loader)
            while state.step < total:
                tic = time.perf_counter()
                micro = []
                for _ in range(accum):
                    collated = next(batches, None)
                    if collated is None:
                        break
                    micro.append(to_batch(collated, self.info.device))
                if len(micro) < accum:
                    break
                state.batch_in_epoch += accum
                logs = eng.optimizer_step(micro)
                if logs is None:
                    continue
                images = accum * t.batch_size * self.info.world_size
                eng.log_step(logs, time.perf_counter() - tic, images)
                self.progress.advance(task)
                if t.save_every_steps and state.step % t.save_every_steps == 0:
                    self.save_checkpoint()
            else:
                break  # max_steps reached mid-epoch: keep the position for a later resume
            state.epoch += 1
            state.batch_in_epoch = 0
            self.save_checkpoint()
        self.progress.finish(task)

    def save_checkpoint(self) -> Path:
        """Write a resumable checkpoint (rank 0) and return its path."""
        assert self.engine is not None
        return self.engine.save_checkpoint()

    def save_final(self) -> Path:
        """Write ``final.pth`` (plain full-model state dict) on rank 0."""
        assert self.engine is not None and self.info is not None
        path = self.run_dir / "final.pth"
        if self.engine.last_saved_step != self.engine.state.step:
            self.save_checkpoint()
        if self.info.is_main:
            save_final(self.student.state_dict(), path)
        barrier(self.info)
        return path

    def cleanup(self) -> None:
        """Close metrics and the process group."""
        if self.engine is not None:
            self.engine.metrics.close()
        cleanup_distributed()


def run(cfg: DistillConfig, progress: Progress | None = None, resume: str | None = None) -> RunResult:
    """Run one curriculum step end to end (step 0 builds the teacher cache instead of training)."""
    if cfg.step == "0":
        from edgesam_core.training.cache_step import build_teacher_cache

        return build_teacher_cache(cfg, progress)
    recipe = DistillRecipe(cfg, progress, resume)
    try:
        recipe.setup()
        recipe.train()
        final = recipe.save_final()
        assert recipe.engine is not None
        return RunResult(cfg.step, recipe.run_dir, final, recipe.engine.state.step, recipe.engine.state.skipped_steps)
    finally:
        recipe.cleanup()
