"""Lazy access to optional dependencies with an actionable error when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

# Which extra of the ``edgesam`` package provides each optional module.
_EXTRA_OF = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "onnxsim": "onnx",
    "tensorflow": "tflite",
    "onnx2tf": "tflite",
    "ai_edge_litert": "tflite",
    "tensorrt": "trt",
    "torch.utils.tensorboard": "train",
    "kornia": "eval",
}


def require(module: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra to install.

    Args:
        module: dotted module name, e.g. ``"onnxruntime"``.
        extra: the ``edgesam`` extra that installs it; looked up when omitted.
        purpose: a few words on what needs it, used in the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or _EXTRA_OF.get(module)
        what = f" (needed for {purpose})" if purpose else ""
        hint = f"pip install 'edgesam[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(
            f"Python package '{module}' is not installed{what}: {hint}", extra=extra
        ) from exc


def available(module: str) -> bool:
    """Return True when ``module`` can be imported."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
