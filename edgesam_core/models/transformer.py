"""SAM's two-way transformer (prompt tokens <-> image tokens), with an injected norm layer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .layers.common import MLPBlock

NormLayer = Callable[[int], nn.Module]


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may shrink the width by ``downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {self.internal_dim}.")
        # Creation order q, v, k, out matches upstream (it only matters for seeded initialisation).
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _separate_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, -1).transpose(1, 2)  # (no shape arithmetic in traced graphs)

    @staticmethod
    def _recombine_heads(x: Tensor) -> Tensor:
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, -1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.attend(self.project("q", q), self.project("k", k), self.project("v", v))

    def project(self, which: str, x: Tensor) -> Tensor:
        """``x`` through the ``which`` ("q", "k" or "v") projection, heads separated: ``(B, heads, n, c)``."""
        return self._separate_heads(getattr(self, f"{which}_proj")(x))

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention over projected, head-separated inputs (batch dims of size 1 broadcast)."""
        attn = q @ k.transpose(-1, -2)
        attn = attn / math.sqrt(q.shape[-1])
        # Softmax in float32 keeps half-precision runs stable (as the EdgeSAM-DyT reference does); float64
        # (parity references) stays float64.
        attn = torch.softmax(attn.float() if attn.element_size() < 4 else attn, dim=-1).to(q.dtype)
        return self.out_proj(self._recombine_heads(attn @ v))


@dataclass
class ImageContext:
    """What the transformer computes from the image alone, once per image instead of once per prompt.

    ``keys`` ``(B_img, hw, C)`` are the image tokens, ``key_pe`` ``(1, hw, C)`` their positional encoding, and
    the first block's image-side projections (its image tokens are not updated before its last attention):
    token->image keys and values, image->token queries, each ``(B_img, heads, hw, c)``.
    """

    keys: Tensor
    key_pe: Tensor
    token_to_image_k: Tensor
    token_to_image_v: Tensor
    image_to_token_q: Tensor
    #: What an inference form derives from this context on first use: model constants from ``key_pe``, and
    #: its image tokens in another layout.
    cache: dict = field(default_factory=dict)

    def expand_to(self, num_prompts: int) -> "ImageContext":
        """Rows for ``num_prompts`` prompt sets grouped by image (one image broadcasts without a copy)."""
        n_img = self.keys.shape[0]
        if n_img in (1, num_prompts):
            return self

        def rep(t: Tensor) -> Tensor:
            return torch.repeat_interleave(t, num_prompts // n_img, dim=0)

        return ImageContext(rep(self.keys), self.key_pe, rep(self.token_to_image_k), rep(self.token_to_image_v),
                            rep(self.image_to_token_q), self.cache)


class TwoWayAttentionBlock(nn.Module):
    """Self-attention on tokens, token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        norm_layer: NormLayer,
        activation: Callable[[], nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = norm_layer(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = norm_layer(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = norm_layer(embedding_dim)
        self.norm4 = norm_layer(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
                context: Optional[ImageContext] = None) -> tuple[Tensor, Tensor]:
        """One block; ``context`` (first block only) supplies the image-side projections precomputed."""
        queries = self.token_self_attention(queries, query_pe)
        q = queries + query_pe
        t2i = self.cross_attn_token_to_image
        if context is None:
            k = keys + key_pe  # the image tokens do not change before the last attention: used twice
            img_k, img_v, img_q = t2i.project("k", k), t2i.project("v", keys), None
        else:
            img_k, img_v, img_q = context.token_to_image_k, context.token_to_image_v, context.image_to_token_q
        queries = queries + t2i.attend(t2i.project("q", q), img_k, img_v)
        queries = self.norm2(queries)

        queries = queries + self.mlp(queries)
        queries = self.norm3(queries)

        q = queries + query_pe
        i2t = self.cross_attn_image_to_token
        if img_q is None:
            img_q = i2t.project("q", k)
        keys = keys + i2t.attend(img_q, i2t.project("k", q), i2t.project("v", queries))
        keys = self.norm4(keys)
        return queries, keys

    def token_self_attention(self, queries: Tensor, query_pe: Tensor) -> Tensor:
        """The block's first step: self-attention among the prompt tokens, then ``norm1``."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        return self.norm1(queries)

    def image_context(self, keys: Tensor, key_pe: Tensor) -> ImageContext:
        """This block's image-side projections of image tokens ``keys`` (first block only)."""
        k = keys + key_pe
        return ImageContext(keys, key_pe, self.cross_attn_token_to_image.project("k", k),
                            self.cross_attn_token_to_image.project("v", keys),
                            self.cross_attn_image_to_token.project("q", k))


class TwoWayTransformer(nn.Module):
    """Stack of ``TwoWayAttentionBlock`` plus a final token->image attention and norm.

    Args:
        depth: number of blocks (2); embedding_dim: token width (256); num_heads: heads (8);
        mlp_dim: hidden width of the ReLU MLP (2048); norm_layer: token norm constructor
        (``nn.LayerNorm`` or channels-last DyT); attention_downsample_rate: width divisor of cross-attention.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        norm_layer: NormLayer = nn.LayerNorm,
        activation: Callable[[], nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                num_heads,
                mlp_dim,
                norm_layer,
                activation,
                attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = norm_layer(embedding_dim)

    @staticmethod
    def key_pe(image_pe: Tensor) -> Tensor:
        """The positional encoding ``(1, C, h, w)`` in this transformer's token layout ``(1, hw, C)``."""
        return image_pe.flatten(2).permute(0, 2, 1)

    def image_context(self, image_embedding: Tensor, image_pe: Tensor) -> ImageContext:
        """The per-image part of :meth:`forward` for ``image_embedding`` ``(B_img, C, h, w)``."""
        keys = image_embedding.flatten(2).permute(0, 2, 1)
        return self.layers[0].image_context(keys, self.key_pe(image_pe))

    def forward(self, image_embedding: Optional[Tensor], image_pe: Optional[Tensor], point_embedding: Tensor,
                context: Optional[ImageContext] = None) -> tuple[Tensor, Tensor]:
        """Run on ``image_embedding`` / ``image_pe`` ``(B, C, h, w)`` and tokens ``(B, T, C)``.

        With ``context`` (from :meth:`image_context`, shared by all B prompt sets) the image inputs are not
        needed and the first block's image-side projections are not recomputed; the result is the same.

        Returns:
            The processed tokens ``(B, T, C)`` and image tokens ``(B, h*w, C)``.
        """
        if context is None:
            keys = image_embedding.flatten(2).permute(0, 2, 1)
            key_pe = image_pe.flatten(2).permute(0, 2, 1)
        else:
            context = context.expand_to(point_embedding.shape[0])
            keys, key_pe = context.keys, context.key_pe
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, point_embedding, key_pe, context if i == 0 else None)
        q = queries + point_embedding
        queries = queries + self.final_attn_token_to_image(q, keys + key_pe, keys)
        queries = self.norm_final_attn(queries)
        return queries, keys
