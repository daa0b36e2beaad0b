"""Build registry models from their ``VariantSpec`` (one private builder, tiny public wrappers)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .image_encoder_repvit import RepViTEncoder
from .image_encoder_vit import ImageEncoderViT
from .layers.norm import get_norm_layer
from .mask_decoder import MaskDecoder
from .mask_decoder_hq import MaskDecoderHQ, MaskDecoderHQViT
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer
from .variants import VariantSpec, list_variants, resolve_variant

PathLike = Union[str, Path]


def _gelu(approximate: str) -> Callable[[], nn.Module]:
    return partial(nn.GELU, approximate=approximate)


def _build_encoder(spec: VariantSpec, upsample_mode: str) -> nn.Module:
    if spec.encoder == "repvit":
        assert spec.repvit is not None  # guaranteed by the table
        return RepViTEncoder(
            rows=spec.repvit.rows,
            img_size=spec.img_size,
            out_chans=spec.embed_dim,
            norm_layer=get_norm_layer(spec.encoder_norm),
            act_layer=_gelu(spec.encoder_gelu),
            layout=spec.repvit.layout,
            upsample_mode=upsample_mode,
            return_low_feats=spec.hq,
        )
    assert spec.vit is not None
    return ImageEncoderViT(
        img_size=spec.img_size,
        patch_size=spec.vit.patch_size,
        embed_dim=spec.vit.embed_dim,
        depth=spec.vit.depth,
        num_heads=spec.vit.num_heads,
        out_chans=spec.embed_dim,
        window_size=spec.vit.window_size,
        global_attn_indexes=spec.vit.global_attn_indexes,
        act_layer=_gelu(spec.encoder_gelu),
        return_interm=spec.hq,
    )


def _build_decoder(spec: VariantSpec, image_encoder: nn.Module) -> nn.Module:
    transformer = TwoWayTransformer(
        depth=spec.transformer_depth,
        embedding_dim=spec.embed_dim,
        num_heads=spec.transformer_heads,
        mlp_dim=spec.transformer_mlp_dim,
        norm_layer=get_norm_layer(spec.decoder_norm),
    )
    common: dict[str, Any] = dict(
        transformer_dim=spec.embed_dim,
        transformer=transformer,
        num_multimask_outputs=3,
        norm_layer=get_norm_layer(spec.decoder_norm + "2d"),
        act_layer=_gelu(spec.decoder_gelu),
        iou_head_depth=3,
        iou_head_hidden_dim=spec.iou_head_hidden_dim,
    )
    if not spec.hq:
        return MaskDecoder(**common)
    if isinstance(image_encoder, RepViTEncoder):
        dims = [image_encoder.feature_channels[n] for n in image_encoder.feature_names]
        return MaskDecoderHQ(vit_dim=dims, **common)
    assert spec.vit is not None
    return MaskDecoderHQViT(vit_dim=spec.vit.embed_dim, **common)


def _build_sam(spec: VariantSpec, upsample_mode: Optional[str] = None) -> Sam:
    image_encoder = _build_encoder(spec, upsample_mode or spec.upsample_mode)
    grid = spec.embed_grid
    prompt_encoder = PromptEncoder(
        embed_dim=spec.embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(spec.img_size, spec.img_size),
        mask_in_chans=spec.mask_in_chans,
    )
    mask_decoder = _build_decoder(spec, image_encoder)
    return Sam(image_encoder, prompt_encoder, mask_decoder, variant=spec.name, is_hq=spec.hq)


def build_sam(
    model_type: str,
    checkpoint: Optional[Union[PathLike, dict]] = None,
    device: Union[str, torch.device] = "cpu",
    upsample_mode: Optional[str] = None,
    decoder_source: Any = None,
) -> Sam:
    """Build a registry model in eval mode.

    Args:
        model_type: a name from ``list_variants()`` (e.g. ``"edge_sam_dyt"``).
        checkpoint: a checkpoint path (any published format) or a state dict; loaded strictly.
        device: device to place the model on.
        upsample_mode: override the RepViT stage-3 upsampling (``"bicubic"`` default, ``"bilinear"``).
        decoder_source: for an encoder-only (distillation step-1) checkpoint, the SAM checkpoint (path,
            state dict, or a callable returning one) whose prompt encoder and mask decoder complete the
            model; ignored for full checkpoints (see ``checkpoint.load_model_weights``).

    Raises:
        UnknownVariantError: ``model_type`` is not registered.
        CheckpointError / CheckpointMismatchError: the checkpoint is unreadable or does not fit.
    """
    spec = resolve_variant(model_type)
    if upsample_mode is not None and upsample_mode not in ("bicubic", "bilinear"):
        from ..errors import ConfigError

        raise ConfigError(f"Unknown upsample mode '{upsample_mode}'; choose 'bicubic' or 'bilinear'.")
    model = _build_sam(spec, upsample_mode)
    if checkpoint is not None:
        from .checkpoint import load_model_weights  # the checkpoint reader pulls in file-format handling

        load_model_weights(model, checkpoint, spec.name, decoder_source=decoder_source)
    return model.to(device).eval()


def _registry_entry(name: str) -> Callable[..., Sam]:
    def builder(checkpoint: Optional[Union[PathLike, dict]] = None, **kwargs: Any) -> Sam:
        return build_sam(name, checkpoint=checkpoint, **kwargs)

    builder.__name__ = f"build_{name}"
    builder.__doc__ = f"Build ``{name}`` (see ``build_sam``)."
    return builder


sam_model_registry: dict[str, Callable[..., Sam]] = {name: _registry_entry(name) for name in list_variants()}
sam_model_registry["default"] = _registry_entry("default")
