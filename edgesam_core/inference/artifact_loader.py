"""Open a checkpoint or an exported artifact as a :class:`~edgesam_core.inference.base.Predictor`.

The backend is chosen from the file suffix through :data:`SUFFIXES`, whose values are
``"module:function"`` strings imported only when that suffix is used, so a runtime (onnxruntime, ...)
is never imported unless its artifact is opened. Each factory is called as
``factory(path, model=..., device=...)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgesam_core.errors import InputError, MissingDependencyError
from edgesam_core.inference.base import Predictor

#: Default variant for PyTorch checkpoints when none is named.
DEFAULT_MODEL = "edge_sam_dyt"

#: file suffix -> "module:factory"; export backends add their artifact suffixes here.
SUFFIXES: dict[str, str] = {
    ".pth": "edgesam_core.inference.artifact_loader:load_torch_predictor",
    ".pt": "edgesam_core.inference.artifact_loader:load_torch_predictor",
    ".onnx": "edgesam_core.inference.onnx_predictor:load_onnx_predictor",
    ".tflite": "edgesam_core.inference.tflite_predictor:load_tflite_predictor",
    ".engine": "edgesam_core.inference.trt_predictor:load_trt_predictor",
    ".pte": "edgesam_core.inference.executorch_predictor:load_executorch_predictor",
}


def resolve_device(device: str | None) -> str:
    """Check that ``device`` ("cpu", "cuda", "cuda:1", "mps") exists here and return it.

    Raises:
        InputError: the device string is malformed. MissingDependencyError: the device is not available.
    """
    import torch

    name = (device or "cpu").strip()
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"Unknown device {name!r}: use cpu, cuda, cuda:N or mps") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise MissingDependencyError(f"Device {name!r} requested but CUDA is not available; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise MissingDependencyError(
                f"Device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif parsed.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise MissingDependencyError(f"Device {name!r} requested but MPS is not available; use --device cpu")
    elif parsed.type != "cpu":
        raise InputError(f"Unsupported device {name!r}: use cpu, cuda, cuda:N or mps")
    return name


def load_torch_predictor(path: str | Path, model: str | None = None, device: str = "cpu",
                         decoder_source: Any = None, fast: bool = True) -> Predictor:
    """Build ``model`` from a PyTorch checkpoint and wrap it in a SamPredictor.

    Without ``model`` the variant is recognised from the checkpoint's keys and shapes (``edge_sam_dyt``
    when they match no registered variant, which then fails with a diagnostic mismatch error).
    ``decoder_source`` completes an encoder-only (step-1) checkpoint (see ``build_sam``). With ``fast`` (the
    default) the loaded model is put in its inference form (see :meth:`SamPredictor.to_inference_form`).
    """
    from edgesam_core.inference.predictor import SamPredictor
    from edgesam_core.models import build_sam
    from edgesam_core.models.checkpoint import guess_variant, read_checkpoint

    device = resolve_device(device)
    if model is None:
        state = read_checkpoint(Path(path))
        sam = build_sam(guess_variant(state) or DEFAULT_MODEL, checkpoint=state, device=device,
                        decoder_source=decoder_source)
    else:
        sam = build_sam(model, checkpoint=Path(path), device=device, decoder_source=decoder_source)
    predictor = SamPredictor(sam)
    if fast:
        predictor.to_inference_form()
    return predictor


def _factory_for(path: Path) -> Callable[..., Predictor]:
    suffix = path.suffix.lower()
    target = SUFFIXES.get(suffix)
    if target is None:
        known = ", ".join(sorted(SUFFIXES))
        raise InputError(f"Don't know how to load {path.name!r}: expected a file ending in {known}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


def load_predictor(checkpoint_or_artifact: str | Path, model: str | None = None, device: str = "cpu",
                   **options: Any) -> Predictor:
    """Open a checkpoint (``.pth``/``.pt``) or an exported artifact as a predictor.

    Args:
        checkpoint_or_artifact: the file; its suffix selects the backend (see :data:`SUFFIXES`).
        model: variant name (e.g. ``"edge_sam_dyt_hq"``); for PyTorch checkpoints it is recognised from the
            weights when omitted.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        **options: passed to the backend's factory.

    Returns:
        A :class:`~edgesam_core.inference.base.Predictor`.

    Raises:
        InputError: missing file or unknown suffix; backend errors (checkpoint, dependency) pass through.
    """
    path = Path(checkpoint_or_artifact)
    if not path.exists():
        raise InputError(f"Checkpoint not found: {path}")
    factory = _factory_for(path)
    return factory(path, model=model, device=device, **options)
