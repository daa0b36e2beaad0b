"""Building blocks shared by the encoders and decoders (norms, DyT, small MLPs)."""

from __future__ import annotations

from .common import MLP, MLPBlock, UpSampleLayer
from .dyt import DynamicTanh, convert_ln_to_dyt
from .norm import LayerNorm2d, get_norm_layer

__all__ = [
    "MLP",
    "MLPBlock",
    "UpSampleLayer",
    "DynamicTanh",
    "convert_ln_to_dyt",
    "LayerNorm2d",
    "get_norm_layer",
]
