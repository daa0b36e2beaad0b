"""What ``edgesam demo`` does before serving: check the options cheaply, then fetch weights and load the model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgesam_core.demo.session import DemoLimits, DemoSession
from edgesam_core.errors import ConfigError
from edgesam_core.progress import NullProgress, Progress


@dataclass
class DemoPlan:
    """Checked ``demo`` options; ``checkpoint`` is None until the published weights are fetched."""

    checkpoint: Path | None
    variant: str | None
    device: str
    hq: bool


def check_port(port: int) -> int:
    """Return ``port`` if it is a TCP port number or 0 (any free port).

    Raises:
        ConfigError: out of range.
    """
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535 (0 = any free port), got {port}")
    return int(port)


def plan_demo(checkpoint: Path | None = None, model: str | None = None, hq: bool = False,
              device: str = "cpu") -> DemoPlan:
    """Check everything that is cheap before any download or model load.

    Raises:
        InputError: the checkpoint does not exist. UnknownVariantError / ConfigError: bad ``model``/``hq``.
        MissingDependencyError: the device is not available.
    """
    from edgesam_core.inference.segment_job import resolve_model_source

    checkpoint, variant, device, _ = resolve_model_source(checkpoint, model, hq, device)
    return DemoPlan(checkpoint, variant, device, hq)


def fetch_weights(plan: DemoPlan, progress: Progress | None = None) -> Path:
    """Fill ``plan.checkpoint`` with the cached or downloaded published weights of ``plan.variant``."""
    if plan.checkpoint is None:
        from edgesam_core.inference.segment_job import DEFAULT_MODEL
        from edgesam_core.weight_registry import ensure_weights

        plan.checkpoint = Path(ensure_weights(plan.variant or DEFAULT_MODEL, progress=progress or NullProgress()))
    return plan.checkpoint


def open_session(plan: DemoPlan, limits: DemoLimits | None = None, progress: Progress | None = None,
                 tasks: Path | None = None) -> DemoSession:
    """Load the model of ``plan`` (fetching weights first when needed) into a :class:`DemoSession`.

    Raises:
        ConfigError: ``--hq`` asked for but the model has no HQ head, or ``tasks`` for a non-PyTorch model;
            checkpoint and backend errors pass through. InputError: ``tasks`` is not a tasks file of these weights.
    """
    checkpoint = fetch_weights(plan, progress)
    session = DemoSession.from_checkpoint(checkpoint, model=plan.variant, device=plan.device, limits=limits)
    if plan.hq and not session.is_hq:
        raise ConfigError(f"--hq needs an HQ model, but {checkpoint.name} is not one")
    if tasks is not None:
        if not hasattr(session.predictor, "load_tasks"):
            raise ConfigError("--tasks needs a .pth checkpoint (an exported model carries its task in its decoder)")
        session.predictor.load_tasks(tasks)
    return session
