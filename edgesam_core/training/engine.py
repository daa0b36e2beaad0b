"""The optimisation engine shared by every step: DDP wrapping, autocast, gradient accumulation and clipping,
non-finite detection, the LR schedule, metrics and resumable checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgesam_core.config.config_loader import config_to_dict
from edgesam_core.config.schema import DistillConfig
from edgesam_core.errors import ConfigError, TrainingError
from edgesam_core.progress import NullProgress, Progress
from edgesam_core.training.distributed import DistInfo, all_true, barrier
from edgesam_core.training.optim import CosineSchedule
from edgesam_core.training.state import (
    TrainState,
    capture_rng,
    checkpoint_path,
    load_training_checkpoint,
    restore_rng,
    save_training_checkpoint,
    train_state_dict,
)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: ``auto``/``bf16`` -> bfloat16 and ``fp16`` -> float16 on CUDA; None (fp32) on CPU."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` (rank 0 only), optionally mirrored to TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            from edgesam_core.deps import require

            tb = require("torch.utils.tensorboard", purpose="--set train.tensorboard=true")
            self.tb = tb.SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class Engine:
    """Runs optimizer steps over micro-batches of a :class:`~edgesam_core.training.steps.LossModule`.

    Args:
        loss_module: the student wrapped with its loss function; DDP-wrapped here when distributed.
        optimizer: AdamW over the trainable parameters (built after freezing and module creation).
        schedule: per-iteration LR schedule.
        cfg: run configuration.
        info: distributed info.
        run_dir: where metrics and checkpoints go.
        progress: progress sink.
    """

    def __init__(self, loss_module: nn.Module, optimizer: torch.optim.Optimizer, schedule: CosineSchedule,
                 cfg: DistillConfig, info: DistInfo, run_dir: Path, progress: Progress | None = None) -> None:
        self.module = loss_module
        self.student = loss_module.student
        self.optimizer = optimizer
        self.schedule = schedule
        self.cfg = cfg
        self.info = info
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        self.progress = progress or NullProgress()
        self.amp_dtype = resolve_amp(cfg.train.amp, info.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()
        self.metrics = MetricsWriter(run_dir, info.is_main, cfg.train.tensorboard)
        self.last_checkpoint: Path | None = None
        self.last_saved_step = -1
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            import warnings

            ids = [info.device.index] if info.device.type == "cuda" else None
            with warnings.catch_warnings():
                # Newer torch deprecates broadcast_buffers but still honours it; rank-local BN statistics
                # (upstream's broadcast_buffers=False) are what we want.
                warnings.simplefilter("ignore", FutureWarning)
                self.ddp: nn.Module = DistributedDataParallel(
                    loss_module, device_ids=ids, broadcast_buffers=False,
                    find_unused_parameters=cfg.train.find_unused_parameters)
        else:
            self.ddp = loss_module

    def autocast(self) -> Any:
        """Autocast context for student forwards (disabled on CPU / fp32)."""
        return torch.autocast(self.info.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def optimizer_step(self, micro_batches: list[Any]) -> dict[str, float] | None:
        """One optimizer step over ``micro_batches`` (gradient accumulation). Returns the logged values, or
        None when the step was skipped because a loss or the gradient was not finite."""
        lr = self.schedule.apply(self.optimizer, self.state.step)
        self.optimizer.zero_grad(set_to_none=True)
        accum = len(micro_batches)
        logs: dict[str, float] = {}
        finite = True
        for j, batch in enumerate(micro_batches):
            sync = self.ddp.no_sync() if (self.info.enabled and j < accum - 1) else contextlib.nullcontext()
            with sync:
                out = self.ddp(batch, {"autocast": self.autocast(), "teacher_autocast": self.autocast(),
                                       "step": self.state.step, "micro": j})
                loss = out["loss"] / accum
                ok = all_true(bool(torch.isfinite(loss.detach()).all()), self.info)
                finite = finite and ok
                # Backward runs even for a bad loss (zeroed) so DDP's gradient reduction stays in step.
                if loss.requires_grad:
                    self.scaler.scale(loss if ok else torch.nan_to_num(loss) * 0.0).backward()
            for k, v in out.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach()) / accum
        grad_norm = float("nan")
        if finite:
            self.scaler.unscale_(self.optimizer)
            clip = self.cfg.optim.clip_grad
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf")))
            # With fp16 the GradScaler itself skips overflowing steps; otherwise a bad gradient is our skip.
            finite = math.isfinite(grad_norm) or self.scaler.is_enabled()
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self._record_nonfinite(logs)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        self.state.nonfinite_in_a_row = 0
        logs.update(lr=lr, grad_norm=grad_norm)
        return logs

    def _record_nonfinite(self, logs: dict[str, float]) -> None:
        s = self.state
        s.nonfinite_in_a_row += 1
        s.skipped_steps += 1
        self.metrics.write({"event": "nonfinite_skip", "step": s.step, "epoch": s.epoch,
                            "in_a_row": s.nonfinite_in_a_row, **{k: str(v) for k, v in logs.items()}})
        self.progress.log(f"step {s.step}: non-finite loss or gradient, update skipped "
                          f"({s.nonfinite_in_a_row} in a row)")
        limit = self.cfg.train.max_nonfinite_in_a_row
        if s.nonfinite_in_a_row >= limit:
            last = self.last_checkpoint or "none written yet"
            raise TrainingError(
                f"{limit} non-finite losses/gradients in a row at step {s.step}; stopped. Last good checkpoint: "
                f"{last}. Lower optim.base_lr or use --set train.amp=off, then --resume it.")

    def log_step(self, logs: dict[str, float], seconds: float, images: int) -> None:
        """Write a metrics record for the step just taken."""
        record = {"step": self.state.step, "epoch": self.state.epoch, "time": round(time.time(), 3),
                  "images_per_s": images / max(seconds, 1e-9), **logs}
        self.metrics.write(record)
        every = max(self.cfg.train.log_every, 1)
        if self.state.step % every == 0:
            parts = " ".join(f"{k}={v:.4g}" for k, v in logs.items())
            self.progress.log(f"epoch {self.state.epoch} step {self.state.step}: {parts}")

    # ---- checkpoints -------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write a resumable checkpoint (rank 0), with every rank's RNG state; all ranks wait for it."""
        rng = capture_rng()
        if self.info.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(gathered, rng)
            rngs = gathered
        else:
            rngs = [rng]
        path = checkpoint_path(self.ckpt_dir, self.state.step)
        barrier(self.info)
        if self.info.is_main:
            payload = {
                "model": self.student.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "train_state": train_state_dict(self.state),
                "rng": rngs,
                "config": config_to_dict(self.cfg),
                "step_name": self.cfg.step,
            }
            save_training_checkpoint(path, payload, keep=self.cfg.train.keep_checkpoints)
        barrier(self.info)
        self.last_checkpoint, self.last_saved_step = path, self.state.step
        return path

    def load_checkpoint(self, path: Path, payload: dict[str, Any] | None = None) -> None:
        """Restore model, optimizer, scaler, position and RNG from a resumable checkpoint (``payload``: already
        read from ``path``)."""
        payload = payload if payload is not None else load_training_checkpoint(path)
        if payload.get("step_name") != self.cfg.step:
            raise ConfigError(f"{path} was written by step {payload.get('step_name')!r}, not step {self.cfg.step!r}; "
                              "use it as --init instead of --resume.")
        self.student.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = TrainState(**payload["train_state"])
        rngs = payload["rng"]
        if len(rngs) != self.info.world_size:
            self.progress.log(f"resuming with {self.info.world_size} process(es) from a {len(rngs)}-process run: "
                              "data order is kept, random prompt draws will differ")
        restore_rng(rngs[min(self.info.rank, len(rngs) - 1)])
        self.last_checkpoint, self.last_saved_step = Path(path), self.state.step
