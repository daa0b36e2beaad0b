"""EdgeSAM / EdgeSAM-DyT / SAM models.

``models`` depends on nothing else of ours except ``edgesam_core.errors``. The variant table is torch-free and
imported eagerly; everything that needs torch is resolved on first use, so ``from edgesam_core.models import
list_variants`` (CLI choices, config validation) never loads torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .variants import VariantSpec, list_variants, resolve_variant

if TYPE_CHECKING:
    from .build import build_sam, sam_model_registry
    from .layers.dyt import DynamicTanh, convert_ln_to_dyt
    from .layers.norm import LayerNorm2d, get_norm_layer
    from .sam import ImageFeatures, Sam

_LAZY = {
    "build_sam": ".build",
    "sam_model_registry": ".build",
    "DynamicTanh": ".layers.dyt",
    "convert_ln_to_dyt": ".layers.dyt",
    "LayerNorm2d": ".layers.norm",
    "get_norm_layer": ".layers.norm",
    "Sam": ".sam",
    "ImageFeatures": ".sam",
}

__all__ = ["VariantSpec", "list_variants", "resolve_variant", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
