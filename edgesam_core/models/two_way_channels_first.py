"""The two-way transformer with the image tokens kept channels-first: the same function, without big transposes.

SAM's transformer flattens the ``(B, C, h, w)`` image embedding to ``(B, hw, C)`` tokens, separates attention
heads with transposes of ``hw``-long tensors, runs the image->token softmax over rows of only ~7 prompt tokens,
and transposes back before upscaling. Kept as ``(B, C, hw)``, every image-side projection is ``W @ x``, head
separation is a free reshape to ``(B, heads, c, hw)``, the image->token attention is computed transposed
(its softmax runs over the short token axis, vectorised along ``hw``), and the result is already the
upscaler's layout. Prompt tokens keep their ``(B, T, C)`` layout. Parameters are the wrapped transformer's.

Per prompt, the image-side projections are *absorbed* into the few prompt tokens where that is cheaper: a
score ``q . (W_k x)`` is ``(W_k^T q) . x`` and a value sum ``sum_n a_n W_v x_n`` is ``W_v sum_n a_n x_n``, so
instead of projecting all ``hw`` image tokens (``c_int x C x hw`` multiply-adds per projection) each of the
``heads x T`` prompt-token rows meets the raw image tokens once (``heads x T x C x hw``): 2.3x fewer for SAM's
8 heads of 16 channels and a click's 7 tokens. Used while ``T`` is below the head width (the break-even).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .layers.dyt import DynamicTanh, SigmoidDynamicTanh
from .transformer import Attention, ImageContext, TwoWayAttentionBlock, TwoWayTransformer


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


def _rows_times_image(rows: Tensor, x: Tensor) -> Tensor:
    """``rows`` ``(B, m, C)`` times channels-first ``x`` ``(B, C, n)`` -> ``(B, m, n)``.

    Eager with one row set: a 1x1 convolution with ``rows`` as its weight, which oneDNN runs ~1.4x faster
    than PyTorch's matmul here (measured 0.45-0.68 vs 0.68-1.0 ms for 56x256 by 256x4096, 2 threads).
    """
    if rows.shape[0] != 1 or x.shape[0] != 1 or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return torch.matmul(rows, x)
    m, c = rows.shape[1:]
    return torch.nn.functional.conv2d(x.reshape(1, c, -1, 1), rows.reshape(m, c, 1, 1)).reshape(1, m, -1)


def _heads_cf(x: Tensor, heads: int) -> Tensor:
    """``(B, heads * c, n)`` -> ``(B, heads, c, n)`` (a reshape, no copy)."""
    b, width, n = x.shape
    return x.reshape(b, heads, width // heads, n)


def _norm_cf(norm: nn.Module, x: Tensor) -> Tensor:
    """A DyT token norm (elementwise, per channel C) applied to channels-first ``(B, C, n)``."""
    if isinstance(norm, DynamicTanh):
        return torch.tanh(norm.alpha * x) * norm.weight.unsqueeze(-1) + norm.bias.unsqueeze(-1)
    if isinstance(norm, SigmoidDynamicTanh):
        return SigmoidDynamicTanh.apply(x, norm.alpha, norm.weight.unsqueeze(-1), norm.bias.unsqueeze(-1))
    raise TypeError(f"no channels-first form for {type(norm).__name__} (the rewrite is for DyT decoders)")


def _softmax(x: Tensor, dim: int) -> Tensor:
    """Softmax as Attention computes it (half precision in float32). Over a middle axis it is written out
    (max, exp, sum: the softmax algorithm) so each step runs along the contiguous last axis; runtimes would
    otherwise transpose around their last-axis kernel."""
    y = x.float() if x.element_size() < 4 else x
    if dim in (-1, y.dim() - 1):
        return torch.softmax(y, dim=-1).to(x.dtype)
    e = torch.exp(y - y.amax(dim=dim, keepdim=True))
    return (e / e.sum(dim=dim, keepdim=True)).to(x.dtype)


def _tokens_to_image(attn: Attention, q_tokens: Tensor, k_img: Tensor, v_img: Tensor,
                     v_bias: Optional[Tensor] = None) -> Tensor:
    """Prompt tokens attend to the image: ``q_tokens`` ``(B, T, C)``; ``k_img``/``v_img`` ``(B, h, c, n)``.

    ``v_bias``: the value projection's bias when ``v_img`` was projected without it; the attention weights of
    a token sum to one, so it is added to the small ``(B, h, T, c)`` result instead of to every image token.
    """
    q = attn.project("q", q_tokens)  # (B, h, T, c)
    scores = torch.matmul(q, k_img) / math.sqrt(q.shape[-1])  # (B, h, T, n)
    out = torch.matmul(_softmax(scores, -1), v_img.transpose(-1, -2))  # (B, h, T, c)
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


def _image_to_tokens(attn: Attention, q_img: Tensor, k_tokens: Tensor, v_tokens: Tensor) -> Tensor:
    """The image attends to prompt tokens, transposed: ``q_img`` ``(B, h, c, n)`` -> update ``(B, C, n)``."""
    k = attn.project("k", k_tokens)  # (B, h, T, c)
    v = attn.project("v", v_tokens)
    scores_t = torch.matmul(k, q_img) / math.sqrt(k.shape[-1])  # (B, h, T, n): softmax over T, axis -2
    out_t = torch.matmul(v.transpose(-1, -2), _softmax(scores_t, -2))  # (B, h, c, n)
    b, heads, c, n = out_t.shape
    return _linear_cf(attn.out_proj, out_t.reshape(b, heads * c, n))


def _absorbs(attn: Attention, tokens: int) -> bool:
    """Whether projecting ``tokens`` prompt tokens through the image-side weights is cheaper than projecting
    every image token (``heads * tokens < internal width``, i.e. fewer tokens than a head has channels)."""
    return tokens * attn.num_heads < attn.internal_dim


def _head_weights(linear: nn.Linear, heads: int) -> Tensor:
    """A projection's weight ``(heads * c, C)`` as ``(heads, c, C)``."""
    return linear.weight.reshape(heads, -1, linear.weight.shape[-1])


def _tokens_to_image_absorbed(attn: Attention, q_tokens: Tensor, keys: Tensor, pe_k: Tensor,
                              v_bias: Tensor) -> Tensor:
    """:func:`_tokens_to_image` on raw image tokens ``keys`` ``(B, C, n)``, the projections absorbed.

    ``pe_k``: ``W_k pe`` as ``(1, heads, c, n)`` (cached per image). Scores ``q_h (W_k,h (x + pe))`` are
    ``(W_k,h^T q_h) x + q_h (W_k,h pe)`` (the key bias shifts a token's scores equally: the softmax cancels it);
    the output ``A_h (W_v,h x)^T`` is ``(A_h x^T) W_v,h^T``, plus the value bias (attention rows sum to one).
    """
    heads = attn.num_heads
    q = attn.project("q", q_tokens)  # (B, h, T, c)
    b, _, t, c = q.shape
    qk = torch.matmul(q, _head_weights(attn.k_proj, heads))  # (B, h, T, C)
    scores = _rows_times_image(qk.reshape(b, heads * t, -1), keys).reshape(b, heads, t, -1)
    scores = (scores + torch.matmul(q, pe_k)) / math.sqrt(c)
    weights = _softmax(scores, -1)  # (B, h, T, n)
    pooled = torch.matmul(weights.reshape(b, heads * t, -1), keys.transpose(1, 2))  # (B, hT, C)
    out = torch.matmul(pooled.reshape(b, heads, t, -1), _head_weights(attn.v_proj, heads).transpose(-1, -2))
    out = out + v_bias.reshape(heads, 1, -1)
    return attn.out_proj(attn._recombine_heads(out))


def _image_to_tokens_absorbed(attn: Attention, q_img: Optional[Tensor], keys: Tensor, q_pe: Optional[Tensor],
                              k_tokens: Tensor, v_tokens: Tensor) -> Tensor:
    """:func:`_image_to_tokens` with the output projection (and, without ``q_img``, the query projection)
    absorbed into the prompt tokens; returns the update ``(B, C, n)``.

    ``q_img``: the image queries ``(B, h, c, n)`` when already projected (the first block's, per image); else
    they are ``W_q x + (W_q pe + b_q)`` with ``q_pe`` = ``W_q pe + b_q`` ``(1, h, c, n)`` (cached), and the
    scores ``k_h . q_img`` become ``(W_q,h^T k_h) x + k_h q_pe``. The update ``W_o [v_h^T S_h]_h + b_o`` is
    ``sum_h (W_o,h v_h^T) S_h + b_o``: one ``(C, heads T) x (heads T, n)`` product.
    """
    heads = attn.num_heads
    k = attn.project("k", k_tokens)  # (B, h, T, c)
    v = attn.project("v", v_tokens)
    b, _, t, c = k.shape
    if q_img is None:
        kq = torch.matmul(k, _head_weights(attn.q_proj, heads))  # (B, h, T, C)
        scores_t = _rows_times_image(kq.reshape(b, heads * t, -1), keys).reshape(b, heads, t, -1)
        scores_t = scores_t + torch.matmul(k, q_pe)
    else:
        scores_t = torch.matmul(k, q_img)  # (B, h, T, n)
    weights_t = _softmax(scores_t / math.sqrt(c), -2)
    out_w = attn.out_proj.weight.reshape(-1, heads, c).transpose(0, 1)  # (h, C, c)
    mixed = torch.matmul(out_w, v.transpose(-1, -2))  # (B, h, C, T)
    mixed = mixed.transpose(1, 2).reshape(b, -1, heads * t)  # (B, C, hT)
    update = _rows_times_image(mixed, weights_t.reshape(b, heads * t, -1))  # (B, C, n)
    return update + attn.out_proj.bias.unsqueeze(-1)


class ChannelsFirstTwoWayTransformer(nn.Module):
    """:class:`TwoWayTransformer` ``base``'s function with channels-first image tokens (see module docstring).

    Its :class:`ImageContext` holds ``keys`` ``(B_img, C, hw)``, ``key_pe`` ``(1, C, hw)`` and the first
    block's projections as ``(B_img, heads, c, hw)``. ``forward`` returns image tokens as a ``(B, hw, C)`` view.
    """

    def __init__(self, base: TwoWayTransformer) -> None:
        super().__init__()
        self.base = base
        self.depth = base.depth
        #: Absorb the image-side projections into the prompt tokens when cheaper (see the module docstring).
        self.absorb_projections = True

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

    def _pe_projection(self, context: ImageContext, attn: Attention, kind: str) -> Tensor:
        """``W_k pe`` (``kind`` "k") or ``W_q pe + b_q`` ("q") of ``attn`` as ``(1, heads, c, n)``, per image."""
        linear = attn.k_proj if kind == "k" else attn.q_proj
        return _heads_cf(_cached(context.cache, kind, linear, context.key_pe, bias=kind == "q"), attn.num_heads)

    def _block(self, block: TwoWayAttentionBlock, queries: Tensor, keys: Tensor, context: ImageContext,
               query_pe: Tensor, first: bool, absorb: bool) -> tuple[Tensor, Tensor]:
        t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        queries = block.token_self_attention(queries, query_pe)
        later = None
        if first:  # the image-side projections come with the context
            attended = _tokens_to_image(t2i, queries + query_pe, context.token_to_image_k, context.token_to_image_v)
        elif absorb:
            attended = _tokens_to_image_absorbed(t2i, queries + query_pe, keys, self._pe_projection(context, t2i, "k"),
                                                 t2i.v_proj.bias)
        else:
            later = self._later_block_context(block, keys, context)
            attended = _tokens_to_image(t2i, queries + query_pe, later.token_to_image_k, later.token_to_image_v,
                                        t2i.v_proj.bias)
        queries = block.norm2(queries + attended)
        queries = queries + block.mlp(queries)
        queries = block.norm3(queries)
        if absorb:
            update = _image_to_tokens_absorbed(i2t, context.image_to_token_q if first else None, keys,
                                               None if first else self._pe_projection(context, i2t, "q"),
                                               queries + query_pe, queries)
        else:
            q_img = context.image_to_token_q if later is None else later.image_to_token_q
            update = _image_to_tokens(i2t, q_img, queries + query_pe, queries)
        return queries, _norm_cf(block.norm4, keys + update)

    def forward(self, image_embedding: Optional[Tensor], image_pe: Optional[Tensor], point_embedding: Tensor,
                context: Optional[ImageContext] = None) -> tuple[Tensor, Tensor]:
        """As :meth:`TwoWayTransformer.forward` (same arguments, same results)."""
        n = point_embedding.shape[0]
        if context is None:
            context = self.image_context(image_embedding, image_pe)
        context = context.expand_to(n)
        final = self.base.final_attn_token_to_image
        absorb = self.absorb_projections and _absorbs(final, point_embedding.shape[1])
        queries, keys = point_embedding, context.keys
        for i, block in enumerate(self.base.layers):
            queries, keys = self._block(block, queries, keys, context, point_embedding, i == 0, absorb)
        q = queries + point_embedding
        if absorb:
            attended = _tokens_to_image_absorbed(final, q, keys, self._pe_projection(context, final, "k"),
                                                 final.v_proj.bias)
        else:
            k_img, v_img = _image_keys_values(final, keys, context.key_pe, context.cache)
            attended = _tokens_to_image(final, q, k_img, v_img, final.v_proj.bias)
        return self.base.norm_final_attn(queries + attended), keys.transpose(1, 2)
