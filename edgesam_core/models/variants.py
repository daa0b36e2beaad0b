"""Torch-free table of model variants (names follow upstream EdgeSAM / EdgeSAM-DyT).

Importing this module never imports torch, so ``--help`` and config validation can list the variants.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal, Optional

from ..errors import UnknownVariantError

# (channels, use_se, stride) per block after the patch embed.
BlockRow = tuple[int, bool, int]

REPVIT_M1_ROWS: tuple[BlockRow, ...] = (
    (48, True, 1), (48, False, 1), (48, False, 1),
    (96, False, 2), (96, True, 1), (96, False, 1), (96, False, 1),
    (192, False, 2),
    (192, True, 1), (192, False, 1), (192, True, 1), (192, False, 1), (192, True, 1), (192, False, 1),
    (192, True, 1), (192, False, 1), (192, True, 1), (192, False, 1), (192, True, 1), (192, False, 1),
    (192, True, 1), (192, False, 1), (192, False, 1),
    (384, False, 2), (384, True, 1), (384, False, 1),
)  # fmt: skip

# Same structure at a fraction of the width and depth: SE blocks, stride-2 blocks, 4 stages, all code paths.
_DEBUG_ROWS: tuple[BlockRow, ...] = (
    (8, True, 1), (8, False, 1),
    (16, False, 2), (16, True, 1),
    (32, False, 2), (32, True, 1), (32, False, 1),
    (64, False, 2), (64, True, 1),
)  # fmt: skip


@dataclass(frozen=True)
class RepViTConfig:
    """RepViT encoder shape."""

    rows: tuple[BlockRow, ...] = REPVIT_M1_ROWS
    """Block table (channels, SE, stride); ``REPVIT_M1_ROWS`` is RepViT-M0.9 ("m1")."""
    layout: Literal["K", "E"] = "K"
    """RepVGGDW layout: "K" (EdgeSAM-DyT, outer BN) or "E" (released EdgeSAM weights)."""


@dataclass(frozen=True)
class ViTConfig:
    """SAM ViT encoder shape."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    patch_size: int = 16


@dataclass(frozen=True)
class VariantSpec:
    """Everything ``build_sam`` needs to build one registry entry."""

    name: str
    description: str
    encoder: Literal["repvit", "vit"]
    repvit: Optional[RepViTConfig] = None
    vit: Optional[ViTConfig] = None
    img_size: int = 1024
    """Side of the square model input."""
    embed_dim: int = 256
    """Prompt/embedding width (the encoder's output channels)."""
    mask_in_chans: int = 16
    encoder_norm: Literal["layernorm2d", "dyt2d"] = "layernorm2d"
    """Norm of the encoder neck."""
    encoder_gelu: Literal["none", "tanh"] = "none"
    decoder_norm: Literal["layernorm", "dyt"] = "layernorm"
    """Norm of the decoder (transformer; its 2-D form in output_upscaling and the HQ branches)."""
    decoder_gelu: Literal["none", "tanh"] = "none"
    transformer_depth: int = 2
    transformer_heads: int = 8
    transformer_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256
    hq: bool = False
    """HQ decoder (and an encoder that returns early features)."""
    upsample_mode: Literal["bicubic", "bilinear"] = "bicubic"
    """Stage-3 x2 upsampling of the RepViT fuse neck (bicubic as in training)."""
    debug: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def embed_grid(self) -> int:
        """Side of the image-embedding grid (64, or 8 for debug variants)."""
        return self.img_size // 16

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (256, or 32 for debug variants)."""
        return 4 * self.embed_grid


_DYT = dict(encoder_norm="dyt2d", encoder_gelu="tanh", decoder_norm="dyt", decoder_gelu="tanh")
_DEBUG = dict(
    img_size=128,
    embed_dim=32,
    transformer_heads=2,
    transformer_mlp_dim=64,
    iou_head_hidden_dim=32,
    debug=True,
)
_M1_K = RepViTConfig(REPVIT_M1_ROWS, "K")
_M1_E = RepViTConfig(REPVIT_M1_ROWS, "E")
_DBG_K = RepViTConfig(_DEBUG_ROWS, "K")
_DBG_E = RepViTConfig(_DEBUG_ROWS, "E")
_VIT_B = ViTConfig(768, 12, 12, (2, 5, 8, 11))
_VIT_L = ViTConfig(1024, 24, 16, (5, 11, 17, 23))
_VIT_H = ViTConfig(1280, 32, 16, (7, 15, 23, 31))
_VIT_DBG = ViTConfig(embed_dim=32, depth=4, num_heads=2, global_attn_indexes=(1, 3), window_size=4)


def _specs() -> list[VariantSpec]:
    rv = "repvit"
    return [
        VariantSpec("edge_sam", "EdgeSAM (RepViT-M0.9, LayerNorm, exact GELU; released weights' layout)", rv, _M1_E),
        VariantSpec("edge_sam_dyt", "EdgeSAM-DyT: DyT neck and decoder, tanh GELU", rv, _M1_K, **_DYT),
        VariantSpec("edge_sam_dyt_hq", "EdgeSAM-DyT with the HQ decoder", rv, _M1_K, hq=True, **_DYT),
        VariantSpec(
            "edge_sam_dyt_frozen_mask",
            "EdgeSAM-DyT encoder with SAM's LayerNorm decoder (distillation step 2)",
            rv,
            _M1_K,
            encoder_norm="dyt2d",
            encoder_gelu="tanh",
        ),
        VariantSpec("vit_b", "SAM ViT-B teacher", "vit", vit=_VIT_B),
        VariantSpec("vit_l", "SAM ViT-L teacher", "vit", vit=_VIT_L),
        VariantSpec("vit_h", "SAM ViT-H teacher", "vit", vit=_VIT_H),
        VariantSpec("vit_h_hq", "HQ-SAM ViT-H teacher", "vit", vit=_VIT_H, hq=True),
        VariantSpec("edge_sam_debug", "tiny edge_sam for tests", rv, _DBG_E, **_DEBUG),
        VariantSpec("edge_sam_dyt_debug", "tiny edge_sam_dyt for tests", rv, _DBG_K, **_DYT, **_DEBUG),
        VariantSpec("edge_sam_dyt_hq_debug", "tiny edge_sam_dyt_hq for tests", rv, _DBG_K, hq=True, **_DYT, **_DEBUG),
        VariantSpec(
            "edge_sam_dyt_frozen_mask_debug",
            "tiny edge_sam_dyt_frozen_mask for tests",
            rv,
            _DBG_K,
            encoder_norm="dyt2d",
            encoder_gelu="tanh",
            **_DEBUG,
        ),
        VariantSpec("vit_b_debug", "tiny vit_b for tests", "vit", vit=_VIT_DBG, **_DEBUG),
        VariantSpec("vit_h_hq_debug", "tiny vit_h_hq for tests", "vit", vit=_VIT_DBG, hq=True, **_DEBUG),
    ]


VARIANTS: dict[str, VariantSpec] = {spec.name: spec for spec in _specs()}
# Upstream's registry also answers to "default" (the original EdgeSAM).
ALIASES: dict[str, str] = {"default": "edge_sam"}


def list_variants(include_debug: bool = True) -> list[str]:
    """Registry names in table order (real models first, then the ``*_debug`` test models)."""
    return [name for name, spec in VARIANTS.items() if include_debug or not spec.debug]


def resolve_variant(name: str) -> VariantSpec:
    """Return the ``VariantSpec`` called ``name``.

    Raises:
        UnknownVariantError: the name is not registered; the message suggests the closest name.
    """
    spec = VARIANTS.get(ALIASES.get(name, name)) if isinstance(name, str) else None
    if spec is not None:
        return spec
    suggestion = difflib.get_close_matches(str(name), list(VARIANTS), n=1, cutoff=0.6)
    hint = f" Did you mean '{suggestion[0]}'?" if suggestion else ""
    raise UnknownVariantError(
        f"Unknown model '{name}'.{hint} Choose one of: {', '.join(list_variants(include_debug=False))}."
    )
