"""The two-way transformer with the image tokens kept channels-first: the same function, without big transposes.

SAM's transformer flattens the ``(B, C, h, w)`` image embedding to ``(B, hw, C)`` tokens, separates attention
heads with transposes of ``hw``-long tensors, runs the image->token softmax over rows of only ~7 prompt tokens,
and transposes back before upscaling. Kept as ``(B, C, hw)``, every image-side projection is ``W @ x``, head
separation is a free reshape to ``(B, heads, c, hw)``, the image->token attention is computed transposed
(its softmax runs over the short token axis, vectorised along ``hw``), and the result is already the
upscaler's layout. Prompt tokens keep their ``(B, T, C)`` layout. Parameters are the wrapped transformer's.

Per prompt, the image-side projections are absorbed into the prompt tokens where that is cheaper (see
:mod:`.two_way_absorbed`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .layers.common import capturing_graph
from .layers.dyt import DynamicTanh, SigmoidDynamicTanh
from .transformer import Attention, ImageContext, TwoWayAttentionBlock, TwoWayTransformer
from .two_way_absorbed import (
    absorbs,
    attention_softmax,
    image_to_tokens_absorbed,
    norm_with_pe,
    pe_projection,
    token_mlp,
    tokens_to_image_absorbed,
)


def _linear_cf(linear: nn.Linear, x: Tensor, bias: bool = True) -> Tensor:
    """``linear`` applied to channels-first ``x`` ``(B, C, n)`` -> ``(B, out, n)`` (without its bias if told).

    Traced for export: ``MatMul`` + ``Add`` (ONNX Runtime's GEMM). Eager: a 1x1 convolution, which oneDNN runs
    ~2x faster than PyTorch's batched matmul on this layout (measured 0.9 vs 1.6-2.8 ms for 4096x256->128).
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        y = torch.matmul(linear.weight, x)
        return y + linear.bias.unsqueeze(-1) if bias else y
    b, c, n = x.shape
    weight = linear.weight.reshape(*linear.weight.shape, 1, 1)
    return torch.nn.functional.conv2d(x.reshape(b, c, n, 1), weight,
                                      linear.bias if bias else None).reshape(b, -1, n)


def _heads_cf(x: Tensor, heads: int) -> Tensor:
    """``(B, heads * c, n)`` -> ``(B, heads, c, n)`` (a reshape, no copy)."""
    b, width, n = x.shape
    return x.reshape(b, heads, width // heads, n)


def _norm_cf(norm: nn.Module, x: Tensor) -> Tensor:
    """A DyT token norm (elementwise, per channel C) applied to channels-first ``(B, C, n)``."""
    if isinstance(norm, DynamicTanh):
        return torch.tanh(norm.alpha * x) * norm.weight.unsqueeze(-1) + norm.bias.unsqueeze(-1)
    if isinstance(norm, SigmoidDynamicTanh):
        return SigmoidDynamicTanh.sigmoid_affine(x, norm.alpha, norm.weight.unsqueeze(-1), norm.bias.unsqueeze(-1))
    raise TypeError(f"no channels-first form for {type(norm).__name__} (the rewrite is for DyT decoders)")


def _tokens_to_image(attn: Attention, q_tokens: Tensor, k_img: Tensor, v_img: Tensor,
                     v_bias: Optional[Tensor] = None) -> Tensor:
    """Prompt tokens attend to the image: ``q_tokens`` ``(B, T, C)``; ``k_img``/``v_img`` ``(B, h, c, n)``.

    ``v_bias``: the value projection's bias when ``v_img`` was projected without it; the attention weights of
    a token sum to one, so it is added to the small ``(B, h, T, c)`` result instead of to every image token.
    """
    q = attn.project("q", q_tokens)  # (B, h, T, c)
    scores = torch.matmul(q, k_img) / math.sqrt(q.shape[-1])  # (B, h, T, n)
    out = torch.matmul(attention_softmax(scores, -1), v_img.transpose(-1, -2))  # (B, h, T, c)
    if v_bias is not None:
        out = out + v_bias.reshape(out.shape[1], 1, -1)
    return attn.out_proj(attn._recombine_heads(out))


def _image_keys_values(attn: Attention, keys: Tensor, key_pe: Tensor,
                       cache: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Keys ``k_proj(keys + pe)`` and bias-free values ``v_proj(keys) - b_v`` for a prompt->image attention.

    ``k_proj(keys + pe) = W_k keys + W_k pe + b_k``: ``W_k pe`` depends only on the model (computed once per
    ``cache``: per image in PyTorch, a folded constant in ONNX), and ``b_k`` shifts every score of a prompt
    token equally, which the softmax over image tokens cancels. The value bias goes to the attention output
    (see :func:`_tokens_to_image`). Fewer full-size additions per prompt, the same attention.
    """
    k = _linear_cf(attn.k_proj, keys, bias=False) + _cached(cache, "k", attn.k_proj, key_pe, bias=False)
    v = _linear_cf(attn.v_proj, keys, bias=False)
    return _heads_cf(k, attn.num_heads), _heads_cf(v, attn.num_heads)


def _cached(cache: dict[str, Tensor], kind: str, linear: nn.Linear, key_pe: Tensor, bias: bool) -> Tensor:
    """``linear`` applied to the positional encoding, once per ``cache``."""
    name = f"{kind}{id(linear)}"
    if name not in cache:
        cache[name] = _linear_cf(linear, key_pe, bias=bias)
    return cache[name]


def _token_major(keys: Tensor, cache: dict[str, Tensor]) -> Tensor:
    """The context's own channels-first image tokens ``(B, C, n)`` as contiguous ``(B, n, C)``, once per context
    and prompt count (the first block's residual then reads both operands in order: measured per click 0.96x)."""
    name = f"keys-token-major{tuple(keys.shape)}"
    if name not in cache:
        cache[name] = keys.transpose(1, 2).contiguous()
    return cache[name]


def _image_to_tokens(attn: Attention, q_img: Tensor, k_tokens: Tensor, v_tokens: Tensor) -> Tensor:
    """The image attends to prompt tokens, transposed: ``q_img`` ``(B, h, c, n)`` -> update ``(B, C, n)``."""
    k = attn.project("k", k_tokens)  # (B, h, T, c)
    v = attn.project("v", v_tokens)
    scores_t = torch.matmul(k, q_img) / math.sqrt(k.shape[-1])  # (B, h, T, n): softmax over T, axis -2
    out_t = torch.matmul(v.transpose(-1, -2), attention_softmax(scores_t, -2))  # (B, h, c, n)
    b, heads, c, n = out_t.shape
    return _linear_cf(attn.out_proj, out_t.reshape(b, heads * c, n))


class ChannelsFirstTwoWayTransformer(nn.Module):
    """:class:`TwoWayTransformer` ``base``'s function with channels-first image tokens (see module docstring).

    Its :class:`ImageContext` holds ``keys`` ``(B_img, C, hw)``, ``key_pe`` ``(1, C, hw)`` and the first
    block's projections as ``(B_img, heads, c, hw)``. ``forward`` returns image tokens ``(B, hw, C)``: a view
    of channels-first memory, or token-major with ``token_major_output``.
    """

    def __init__(self, base: TwoWayTransformer) -> None:
        super().__init__()
        self.base = base
        self.depth = base.depth
        #: Absorb the image-side projections into the prompt tokens when cheaper (see the module docstring).
        self.absorb_projections = True
        #: With absorbed projections, every block writes the image tokens token-major (``(B, hw, C)``
        #: contiguous): the products with them run as oneDNN inner products on the tokens as stored, and the
        #: result is the channels-last order of a channels-last upscaling, which then needs no copy (set by
        #: ``to_inference_form`` on CPUs; eager only). Their projections stay channels-first.
        self.token_major_output = False

    @staticmethod
    def key_pe(image_pe: Tensor) -> Tensor:
        """The positional encoding ``(1, C, h, w)`` in this transformer's token layout."""
        return image_pe.flatten(2)

    def image_context(self, image_embedding: Tensor, image_pe: Tensor) -> ImageContext:
        """The per-image part of :meth:`forward` for ``image_embedding`` ``(B_img, C, h, w)``."""
        block = self.base.layers[0]
        t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        keys, key_pe = image_embedding.flatten(2), self.key_pe(image_pe)
        k = keys + key_pe
        return ImageContext(keys, key_pe, _heads_cf(_linear_cf(t2i.k_proj, k), t2i.num_heads),
                            _heads_cf(_linear_cf(t2i.v_proj, keys), t2i.num_heads),
                            _heads_cf(_linear_cf(i2t.q_proj, k), i2t.num_heads))

    @staticmethod
    def _later_block_context(block: TwoWayAttentionBlock, keys: Tensor, context: ImageContext) -> ImageContext:
        """A later block's image-side projections (per prompt), the positional encoding's share cached."""
        t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        k, v = _image_keys_values(t2i, keys, context.key_pe, context.cache)
        q = _linear_cf(i2t.q_proj, keys, bias=False) + _cached(context.cache, "q", i2t.q_proj, context.key_pe,
                                                                bias=True)
        return ImageContext(keys, context.key_pe, k, v, _heads_cf(q, i2t.num_heads), context.cache)

    def _block(self, block: TwoWayAttentionBlock, queries: Tensor, keys: Tensor, keys_pe: Optional[Tensor],
               context: ImageContext, query_pe: Tensor, first: bool, absorb: bool, token_major: bool = False
               ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """One block -> ``(queries, keys, keys + pe or None)``; ``token_major`` (absorbed only): the image tokens
        leave as ``(B, n, C)``, and arrive so after the first block, with ``keys_pe`` = ``keys + pe``."""
        t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        keys_tm = token_major and not first
        keys_cf = keys.transpose(1, 2) if keys_tm else keys  # the (B, C, n) view the absorbed products take
        keys_pe_cf = keys_pe.transpose(1, 2) if keys_tm and keys_pe is not None else None
        queries = block.token_self_attention(queries, query_pe)
        later = None
        if first:  # the image-side projections come with the context
            attended = _tokens_to_image(t2i, queries + query_pe, context.token_to_image_k, context.token_to_image_v)
        elif absorb:
            pe_k = None if keys_pe_cf is not None else pe_projection(context, t2i, "k", context.key_pe)
            attended = tokens_to_image_absorbed(t2i, queries + query_pe, keys_cf, pe_k, t2i.v_proj.bias,
                                                keys_pe=keys_pe_cf)
        else:
            later = self._later_block_context(block, keys, context)
            attended = _tokens_to_image(t2i, queries + query_pe, later.token_to_image_k, later.token_to_image_v,
                                        t2i.v_proj.bias)
        queries = block.norm2(queries + attended)
        queries = queries + token_mlp(block.mlp, queries)
        queries = block.norm3(queries)
        if absorb and token_major:  # (B, n, C), the residual added with the update
            q_pe = None if first or keys_pe_cf is not None else pe_projection(context, i2t, "q", context.key_pe)
            pre_norm = image_to_tokens_absorbed(i2t, context.image_to_token_q if first else None, keys_cf, q_pe,
                                                queries + query_pe, queries, token_major=True, keys_pe=keys_pe_cf,
                                                residual=keys if keys_tm else _token_major(keys, context.cache))
            keys, keys_pe = norm_with_pe(block.norm4, pre_norm, context, context.key_pe)
            return queries, keys, keys_pe
        if absorb:
            update = image_to_tokens_absorbed(i2t, context.image_to_token_q if first else None, keys_cf,
                                              None if first else pe_projection(context, i2t, "q", context.key_pe),
                                              queries + query_pe, queries)
        else:
            q_img = context.image_to_token_q if later is None else later.image_to_token_q
            update = _image_to_tokens(i2t, q_img, queries + query_pe, queries)
        return queries, _norm_cf(block.norm4, keys + update), None

    def forward(self, image_embedding: Optional[Tensor], image_pe: Optional[Tensor], point_embedding: Tensor,
                context: Optional[ImageContext] = None) -> tuple[Tensor, Tensor]:
        """As :meth:`TwoWayTransformer.forward` (same arguments, same results)."""
        n = point_embedding.shape[0]
        if context is None:
            context = self.image_context(image_embedding, image_pe)
        context = context.expand_to(n)
        final = self.base.final_attn_token_to_image
        absorb = self.absorb_projections and absorbs(final, point_embedding.shape[1])
        queries, keys, keys_pe = point_embedding, context.keys, None
        token_major = absorb and self.token_major_output and not capturing_graph()
        for i, block in enumerate(self.base.layers):
            queries, keys, keys_pe = self._block(block, queries, keys, keys_pe, context, point_embedding, i == 0,
                                                 absorb, token_major)
        q = queries + point_embedding
        keys_cf = keys.transpose(1, 2) if token_major else keys  # (B, C, n)
        if absorb:
            keys_pe_cf = None if keys_pe is None else keys_pe.transpose(1, 2)
            pe_k = None if keys_pe_cf is not None else pe_projection(context, final, "k", context.key_pe)
            attended = tokens_to_image_absorbed(final, q, keys_cf, pe_k, final.v_proj.bias, keys_pe=keys_pe_cf)
        else:
            k_img, v_img = _image_keys_values(final, keys, context.key_pe, context.cache)
            attended = _tokens_to_image(final, q, k_img, v_img, final.v_proj.bias)
        return self.base.norm_final_attn(queries + attended), keys_cf.transpose(1, 2)
