"""SAM's mask decoder with EdgeSAM's 1/3/4-mask output modes and injected norm/activation."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..errors import InputError
from .layers.common import MLP
from .layers.norm import LayerNorm2d
from .transformer import ImageContext

_MASK_SLICES = {1: slice(0, 1), 3: slice(1, 4), 4: slice(0, 4)}


def mask_slice(num_multimask_outputs: int) -> slice:
    """Token slice for ``num_multimask_outputs``: 1 -> token 0, 3 -> tokens 1-3, 4 -> tokens 0-3."""
    try:
        return _MASK_SLICES[int(num_multimask_outputs)]
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"num_multimask_outputs must be 1, 3 or 4, got {num_multimask_outputs!r}."
        ) from None


def expand_to_prompts(x: torch.Tensor, num_prompts: int, image_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Repeat per-image tensors ``(B_img, ...)`` so there is one row per prompt set.

    One image with N prompt sets (SAM's convention) repeats it N times; B images with B*k prompt sets repeat
    each image k times (prompts grouped by image). ``image_index`` (``num_prompts`` ints) names each prompt
    set's image instead, so images may have different prompt counts (a training batch decoded in one call).
    """
    if image_index is not None:
        if image_index.shape != (num_prompts,):
            raise InputError(f"image_index must hold one image row per prompt set ({num_prompts}), "
                             f"got shape {tuple(image_index.shape)}")
        return x.index_select(0, image_index.to(x.device))
    n_img = x.shape[0]
    if n_img == num_prompts:
        return x
    if n_img == 0 or num_prompts % n_img:
        raise InputError(
            f"Cannot pair {num_prompts} prompt sets with {n_img} image embeddings; "
            "pass one image or a multiple of the image count."
        )
    return torch.repeat_interleave(x, num_prompts // n_img, dim=0)


def mask_logits(hyper_in: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
    """``hyper_in`` ``(B, M, c)`` times the upscaled embedding ``(B, c, H, W)`` -> logits ``(B, M, H, W)``.

    A channels-last embedding (the PyTorch inference form's) is multiplied in its own memory order.
    """
    b, c, h, w = upscaled.shape
    if upscaled.is_contiguous():
        return (hyper_in @ upscaled.flatten(2)).view(b, -1, h, w)
    pixels = upscaled.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)


class MaskDecoder(nn.Module):
    """Predicts mask logits and IoU scores from an image embedding and prompt tokens.

    Args:
        transformer_dim: token width (256); transformer: the ``TwoWayTransformer``;
        num_multimask_outputs: number of extra mask tokens (3, so 4 mask tokens in total);
        norm_layer: 2-D norm constructor in ``output_upscaling`` (LayerNorm2d or channels-first DyT);
        act_layer: activation constructor (GELU exact or tanh);
        iou_head_depth / iou_head_hidden_dim: the IoU MLP (3 layers, 256 wide, one output per mask token).
    """

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
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            norm_layer(transformer_dim // 4),
            act_layer(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            act_layer(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)
        #: Inference form only: the hypernetwork MLPs as one batched MLP (see ``inference_form``).
        self.batched_hypernetworks: Optional[nn.Module] = None

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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for each prompt set.

        Args:
            image_embeddings: ``(B_img, C, h, w)``; image_pe: ``(1, C, h, w)`` (``get_dense_pe()``);
            sparse_prompt_embeddings: ``(B, T, C)``; dense_prompt_embeddings: ``(B, C, h, w)``;
            num_multimask_outputs: 1 (token 0), 3 (tokens 1-3) or 4 (all tokens);
            interm_embeddings, hq_token_only: ignored (accepted so every decoder takes upstream's call);
            context: :meth:`image_context` of these inputs, reused across calls (then the dense embedding
                must be the one it was made with).
            image_index: ``(B,)`` row of ``image_embeddings`` each prompt set belongs to, for several images
                with different prompt counts in one call; None pairs them as SAM does.

        Returns:
            Mask logits ``(B, M, 4h, 4w)`` and IoU predictions ``(B, M)``.
        """
        sl = mask_slice(num_multimask_outputs)
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, context=context,
            image_index=image_index,
        )
        return masks[:, sl, :, :], iou_pred[:, sl]

    def image_context(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor) -> ImageContext:
        """What every prompt on these images shares (dense embedding ``(B_img, C, h, w)``, usually no-mask)."""
        return self.transformer.image_context(image_embeddings + dense_prompt_embeddings, image_pe)

    def _output_tokens(self) -> torch.Tensor:
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)

    def _run_transformer(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        context: Optional[ImageContext] = None,
        image_index: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer; return the output tokens and the upscaled embedding ``(B, C/8, 4h, 4w)``."""
        output_tokens = self._output_tokens()
        n = sparse_prompt_embeddings.shape[0]
        output_tokens = output_tokens.unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
        if context is None:
            src = expand_to_prompts(image_embeddings, n, image_index) + dense_prompt_embeddings
            pos_src = expand_to_prompts(image_pe, n)
            b, c, h, w = src.shape
            hs, src = self.transformer(src, pos_src, tokens)
        else:
            if image_index is not None:
                raise InputError("image_index pairs prompts with raw image embeddings; pass it without a context")
            b, (c, h, w) = n, image_pe.shape[1:]
            hs, src = self.transformer(None, None, tokens, context=context)
        src = src.transpose(1, 2).reshape(b, c, h, w)
        return hs, self.output_upscaling(src)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        context: Optional[ImageContext] = None,
        image_index: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All mask-token outputs: logits ``(B, 4, 4h, 4w)`` and IoU predictions ``(B, 4)``."""
        hs, upscaled = self._run_transformer(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, context, image_index
        )
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        return mask_logits(self.hypernetworks(mask_tokens_out), upscaled), self.iou_prediction_head(iou_token_out)

    def hypernetworks(self, mask_tokens_out: torch.Tensor) -> torch.Tensor:
        """Mask token ``i`` ``(B, M, C)`` through hypernetwork MLP ``i`` -> ``(B, M, C/8)``."""
        if self.batched_hypernetworks is not None:
            return self.batched_hypernetworks(mask_tokens_out)
        return torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
