"""Prompted and automatic mask prediction on a single image.

Public API (resolved lazily, so ``edgesam_core.inference.image_io`` can be used without torch)::

    from edgesam_core.inference import SamPredictor, SamAutomaticMaskGenerator, Predictor, load_predictor
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "SamPredictor": "edgesam_core.inference.predictor",
    "SamAutomaticMaskGenerator": "edgesam_core.inference.automatic_mask_generator",
    "Predictor": "edgesam_core.inference.base",
    "Prediction": "edgesam_core.inference.base",
    "ExportedSamPredictor": "edgesam_core.inference.exported_predictor",
    "load_predictor": "edgesam_core.inference.artifact_loader",
    "load_image": "edgesam_core.inference.image_io",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgesam_core.inference' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
