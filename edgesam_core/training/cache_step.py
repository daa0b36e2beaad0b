"""Step 0: write the teacher (SAM ViT-H) embedding of every training image to the cache (spec §3.2).

Inputs are exactly the training inputs (same dataset class, normalised and padded); the ViT runs under fp16
autocast on CUDA (fp32 on CPU) and the data module's cache stores float16. Images already cached are
skipped, so an interrupted run simply continues when started again; with torchrun every rank encodes its
share of the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgesam_core.config.schema import DistillConfig
from edgesam_core.progress import NullProgress, Progress


def build_teacher_cache(cfg: DistillConfig, progress: Progress | None = None) -> Any:
    """Encode every image of ``cfg.data`` with the teacher and store the embeddings.

    Returns:
        A ``RunResult`` whose ``final`` is the cache folder.
    """
    from edgesam_core.training.distill import RunResult, build_dataset, make_loader, seed_everything, step_dir, to_batch
    from edgesam_core.training.distributed import (
        ResumableDistributedSampler,
        barrier,
        cleanup_distributed,
        init_distributed,
    )
    from edgesam_core.training.engine import resolve_amp
    from edgesam_core.training.teacher import Teacher

    progress = progress or NullProgress()
    info = init_distributed(cfg.device)
    if not info.is_main:
        progress = NullProgress()
    try:
        seed_everything(cfg.train.seed)
        cache_dir = Path(cfg.data.cache_dir or Path(cfg.out) / "teacher_cache")
        cache_dir.mkdir(parents=True, exist_ok=True)
        teacher = Teacher(cfg.model.teacher, cfg.model.teacher_checkpoint, info.device, "auto", cache_dir,
                          keep_encoder=True)
        dataset = build_dataset(cfg, teacher.img_size)
        sampler = ResumableDistributedSampler(len(dataset), info.rank, info.world_size, shuffle=False)
        loader = make_loader(dataset, sampler, cfg, drop_last=False)
        dtype = resolve_amp(cfg.train.amp, info.device)
        task = progress.add_task("caching teacher embeddings", total=len(sampler))
        written = skipped = 0
        for n, collated in enumerate(loader):
            if cfg.train.max_steps is not None and n >= cfg.train.max_steps:
                break
            batch = to_batch(collated, info.device)
            todo = [i for i, k in enumerate(batch.keys) if not teacher.cache.has(k)]
            skipped += len(batch.keys) - len(todo)
            if todo:
                ctx = torch.autocast(info.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
                emb, _ = teacher.encode(batch.images[todo], ctx)
                for j, i in enumerate(todo):
                    teacher.cache.write(batch.keys[i], emb[j].to("cpu", torch.float16))
                written += len(todo)
            progress.advance(task, len(batch.keys))
        progress.finish(task)
        barrier(info)
        flush = getattr(teacher.cache, "close", None) or getattr(teacher.cache, "flush", None)
        if flush is not None:
            flush()
        if info.is_main:
            progress.log(f"teacher cache {cache_dir}: {written} embedding(s) written, {skipped} already present")
        return RunResult("0", step_dir(cfg.out, "0"), cache_dir, written, 0)
    finally:
        cleanup_distributed()
