"""HQ-SAM style decoders: an extra high-quality output token fed by early image features.

* ``MaskDecoderHQ``: the EdgeSAM-DyT student decoder; early features are RepViT's (stem, stage0, stage1).
* ``MaskDecoderHQViT``: HQ-SAM's decoder for the ViT-H teacher; early feature is the first global block output.

Both return ``(hq_mask, sam_mask, iou)``, each with one channel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError
from .layers.common import MLP
from .layers.norm import LayerNorm2d
from .mask_decoder import MaskDecoder, expand_to_prompts, mask_logits
from .transformer import ImageContext


class _HQDecoderBase(MaskDecoder, ABC):
    """Adds the HQ token, its MLP and the ``embedding_encoder`` / ``embedding_maskfeature`` branches."""

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        norm_layer: Callable[[int], nn.Module] = LayerNorm2d,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__(
            transformer_dim=transformer_dim,
            transformer=transformer,
            num_multimask_outputs=num_multimask_outputs,
            norm_layer=norm_layer,
            act_layer=act_layer,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
        )
        dim = transformer_dim
        self.hf_token = nn.Embedding(1, dim)
        self.hf_mlp = MLP(dim, dim, dim // 8, 3)
        self.embedding_encoder = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            norm_layer(dim // 4),
            act_layer(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
        )
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(dim // 8, dim // 4, 3, 1, 1),
            norm_layer(dim // 4),
            act_layer(),
            nn.Conv2d(dim // 4, dim // 8, 3, 1, 1),
        )

    @abstractmethod
    def _compress(self, interm_embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map the encoder's early features to ``(B_img, C/8, 4h, 4w)``."""

    def hq_features(self, image_embeddings: torch.Tensor, interm_embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused high-resolution features ``(B_img, C/8, 4h, 4w)``."""
        if interm_embeddings is None:
            raise InputError(f"{type(self).__name__} needs interm_embeddings (the encoder's early features).")
        return self.embedding_encoder(image_embeddings) + self._compress(interm_embeddings)

    def _output_tokens(self) -> torch.Tensor:
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight, self.hf_token.weight], dim=0)

    def predict_masks(  # type: ignore[override]
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        interm_embeddings: Optional[Sequence[torch.Tensor]] = None,
        context: Optional[ImageContext] = None,
        image_index: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All outputs: logits ``(B, 5, 4h, 4w)`` (4 SAM tokens then the HQ token) and IoU ``(B, 4)``."""
        hq = self.hq_features(image_embeddings, interm_embeddings)
        hs, upscaled_sam = self._run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, context, image_index
        )
        n_sam = self.num_mask_tokens
        iou_token_out = hs[:, 0, :]
        tokens_out = hs[:, 1 : 2 + n_sam, :]
        hq = expand_to_prompts(hq, upscaled_sam.shape[0], image_index)
        upscaled_hq = self.embedding_maskfeature(upscaled_sam) + hq
        hyper_in = torch.stack(
            [mlp(tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)]
            + [self.hf_mlp(tokens_out[:, n_sam, :])],
            dim=1,
        )
        masks_sam = mask_logits(hyper_in[:, :n_sam], upscaled_sam)
        masks_hq = mask_logits(hyper_in[:, n_sam:], upscaled_hq)
        return torch.cat([masks_sam, masks_hq], dim=1), self.iou_prediction_head(iou_token_out)


class MaskDecoderHQ(_HQDecoderBase):
    """EdgeSAM-DyT HQ student decoder.

    ``compress_vit_feat[i]`` maps early feature i to ``C/8`` channels at the mask resolution: the first two
    (stride-4 features) with a 3x3 conv, the third (stride 8) with a k2/s2 transposed conv.

    Args:
        vit_dim: channels of the early features in order (stem, stage0, stage1), ``[48, 48, 96]``.
        Others as ``MaskDecoder``.
    """

    def __init__(self, *, vit_dim: Sequence[int] = (48, 48, 96), **kwargs) -> None:
        super().__init__(**kwargs)
        dim = self.transformer_dim
        norm_layer = kwargs.get("norm_layer", LayerNorm2d)
        act_layer = kwargs.get("act_layer", nn.GELU)
        blocks = []
        for i, chans in enumerate(vit_dim):
            first: nn.Module = (
                nn.Conv2d(chans, dim, 3, 1, 1) if i < 2 else nn.ConvTranspose2d(chans, dim, kernel_size=2, stride=2)
            )
            blocks.append(nn.Sequential(first, norm_layer(dim), act_layer(), nn.Conv2d(dim, dim // 8, 3, 1, 1)))
        self.compress_vit_feat = nn.ModuleList(blocks)

    def _compress(self, interm_embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(interm_embeddings) != len(self.compress_vit_feat):
            raise InputError(
                f"Expected {len(self.compress_vit_feat)} early features (stem, stage0, stage1), "
                f"got {len(interm_embeddings)}."
            )
        # sum() starts from 0, as upstream does, so the float additions happen in the same order.
        return sum([blk(f) for blk, f in zip(self.compress_vit_feat, interm_embeddings)])

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        num_multimask_outputs: int = 1,
        interm_embeddings: Optional[Sequence[torch.Tensor]] = None,
        hq_token_only: bool = True,
        context: Optional[ImageContext] = None,
        image_index: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Return ``(hq_mask (B,1,4h,4w), sam_mask of token 0 (B,1,4h,4w), iou of token 0 (B,1))``.

        ``num_multimask_outputs`` and ``hq_token_only`` are accepted for upstream's call and ignored, as
        upstream does (both masks are always returned).
        """
        masks, iou = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, interm_embeddings,
            context, image_index,
        )
        n_sam = self.num_mask_tokens
        return masks[:, n_sam : n_sam + 1], masks[:, 0:1], iou[:, 0:1]


class MaskDecoderHQViT(_HQDecoderBase):
    """HQ-SAM decoder for ViT-H: early feature = first global block output ``(B, h, w, vit_dim)``.

    Args:
        vit_dim: ViT width (1280 for ViT-H). Others as ``MaskDecoder``.
    """

    def __init__(self, *, vit_dim: int = 1280, **kwargs) -> None:
        super().__init__(**kwargs)
        dim = self.transformer_dim
        norm_layer = kwargs.get("norm_layer", LayerNorm2d)
        act_layer = kwargs.get("act_layer", nn.GELU)
        self.compress_vit_feat = nn.Sequential(
            nn.ConvTranspose2d(vit_dim, dim, kernel_size=2, stride=2),
            norm_layer(dim),
            act_layer(),
            nn.ConvTranspose2d(dim, dim // 8, kernel_size=2, stride=2),
        )

    def _compress(self, interm_embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.compress_vit_feat(interm_embeddings[0].permute(0, 3, 1, 2))

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        num_multimask_outputs: int = 1,
        interm_embeddings: Optional[Sequence[torch.Tensor]] = None,
        hq_token_only: bool = True,
        context: Optional[ImageContext] = None,
        image_index: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Return ``(hq_mask, sam_mask, iou)`` (one channel each).

        With ``num_multimask_outputs`` 1 the SAM mask/IoU are token 0's; with 3 (or 4) they are those of the
        best of tokens 1-3 by predicted IoU, as HQ-SAM's ``multimask_output``. ``hq_token_only`` is accepted
        for HQ-SAM's call and ignored: both masks are returned, and HQ-SAM's ``hq_token_only=False`` output
        is ``sam_mask + hq_mask``.
        """
        masks, iou = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, interm_embeddings,
            context, image_index,
        )
        n_sam = self.num_mask_tokens
        masks_hq = masks[:, n_sam : n_sam + 1]
        if int(num_multimask_outputs) == 1:
            return masks_hq, masks[:, 0:1], iou[:, 0:1]
        if int(num_multimask_outputs) not in (3, 4):
            raise InputError(f"num_multimask_outputs must be 1, 3 or 4, got {num_multimask_outputs!r}.")
        best_iou, best = torch.max(iou[:, 1:n_sam], dim=1)
        multi = masks[:, 1:n_sam]
        masks_sam = multi[torch.arange(multi.shape[0], device=multi.device), best].unsqueeze(1)
        return masks_hq, masks_sam, best_iou.unsqueeze(1)
