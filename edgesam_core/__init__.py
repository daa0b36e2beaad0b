"""edgesam_core: EdgeSAM-DyT models, data, distillation, evaluation, export and runtimes.

The SAM-style public API is resolved lazily so that importing the package does not import torch::

    from edgesam_core import sam_model_registry, build_sam, SamPredictor, SamAutomaticMaskGenerator
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "sam_model_registry": "edgesam_core.models",
    "build_sam": "edgesam_core.models",
    "list_variants": "edgesam_core.models",
    "SamPredictor": "edgesam_core.inference",
    "SamAutomaticMaskGenerator": "edgesam_core.inference",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgesam_core' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
