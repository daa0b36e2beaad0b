"""Attention with the image-side projections absorbed into the prompt tokens (inference forms of the decoder).

Per prompt, SAM's two-way transformer projects all ``hw`` image tokens through the cross-attention weights
(``c_int x C x hw`` multiply-adds per projection). A score ``q . (W_k x)`` is ``(W_k^T q) . x`` and a value sum
``sum_n a_n W_v x_n`` is ``W_v sum_n a_n x_n``, so instead each of the ``heads x T`` prompt-token rows meets the
raw image tokens once (``heads x T x C x hw``): 2.3x fewer for SAM's 8 heads of 16 channels and a click's 7
tokens. Used while ``T`` is below the head width (the break-even). The same function, in another order of
products (tested in float64 against SAM's transformer). Image tokens are given as ``(B, C, n)`` tensors of any
strides: the channels-first transformer's own layout, or a transposed view of token-major ``(B, n, C)``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .layers.common import capturing_graph
from .layers.dyt import SigmoidDynamicTanh
from .transformer import Attention, ImageContext, TwoWayTransformer

#: oneDNN's inner product is called directly (a private PyTorch op); off for good once it fails.
_ONEDNN_LINEAR = True


def _onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, post_op: str = "none"
                   ) -> Optional[Tensor]:
    """oneDNN's inner product ``post_op(x @ weight.T + bias)`` (``weight`` of any strides), or None once the
    private op has failed (then the callers run PyTorch's own modules, for good)."""
    global _ONEDNN_LINEAR
    if not _ONEDNN_LINEAR:
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], "")
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):  # a private op that changed
        _ONEDNN_LINEAR = False
        return None


def _eager_fp32_single(x: Tensor) -> bool:
    """One contiguous float32 image, no autograd, not traced or exported: where oneDNN's kernels may be called
    directly."""
    return (x.shape[0] == 1 and x.is_contiguous() and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.is_grad_enabled() and not capturing_graph() and torch.backends.mkldnn.is_available())


def rows_times_image(rows: Tensor, x: Tensor) -> Tensor:
    """``rows`` ``(B, m, C)`` times image tokens ``x`` ``(B, C, n)`` (any strides) -> ``(B, m, n)``.

    Eager inference, one row set: for contiguous ``x`` a 1x1 convolution with ``rows`` as its weight, which oneDNN
    runs ~1.4x faster than PyTorch's matmul here (measured 0.45-0.68 vs 0.68-1.0 ms for 56x256 by 256x4096, 2
    threads); for a transposed view of token-major ``(1, n, C)`` tokens oneDNN's inner product with the tokens
    as its weight, as stored.
    """
    if rows.shape[0] == 1 and rows.dtype == x.dtype and _eager_fp32_single(x.transpose(1, 2)):
        out = _onednn_linear(rows[0], x[0].t())  # token-major image: the tokens as the (n, C) weight, as stored
        if out is not None:
            return out[None]
    if (rows.shape[0] != 1 or x.shape[0] != 1 or not x.is_contiguous() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()):
        return torch.matmul(rows, x)
    m, c = rows.shape[1:]
    return torch.nn.functional.conv2d(x.reshape(1, c, -1, 1), rows.reshape(m, c, 1, 1)).reshape(1, m, -1)


def rows_times_image_t(rows: Tensor, x: Tensor) -> Tensor:
    """``rows`` ``(B, m, n)`` times the transposed image tokens ``x`` ``(B, C, n)`` -> ``(B, m, C)`` (a pooled
    image: attention weights times the tokens).

    Eager inference on one image: oneDNN's inner product with ``x`` as its ``(C, n)`` weight, as stored
    (contiguous, or a transposed view of token-major tokens): 2x faster than PyTorch's matmul here (measured
    0.32 vs 0.63 ms for 56x4096 by 4096x256, 2 threads), and on token-major tokens 0.91x per click of a 1x1
    convolution over the tokens.
    """
    if (rows.shape[0] == 1 and rows.dtype == x.dtype
            and (_eager_fp32_single(x) or _eager_fp32_single(x.transpose(1, 2)))):
        out = _onednn_linear(rows[0], x[0])
        if out is not None:
            return out[None]
    return torch.matmul(rows, x.transpose(1, 2))


def image_update_token_major(scores_t: Tensor, mixed: Tensor, bias: Tensor,
                             residual: Optional[Tensor] = None) -> Tensor:
    """The image tokens' update ``(B, n, C)``, token-major: the softmax over the prompt tokens of the (scaled)
    scores ``scores_t`` ``(B, h, T, n)``, transposed, times ``mixed`` ``(B, C, hT)`` transposed, plus ``bias``
    (and plus ``residual`` ``(B, n, C)`` when given: the block's residual connection).

    Eager inference on one image: PyTorch's softmax over the token axis (one vectorised pass), its weights
    transposed by a copy, then oneDNN's inner product with the bias fused: per click 0.95-0.97x of the
    softmax written out step by step with its last division writing the weights transposed (a strided write),
    measured on the predictor. (oneDNN's fused residual addition measured slower here than ``add_``.)
    """
    b, heads, t, n = scores_t.shape
    if _ONEDNN_LINEAR and b == 1 and mixed.dtype == scores_t.dtype and _eager_fp32_single(scores_t):
        weights = torch.softmax(scores_t[0], dim=-2).view(heads * t, n).t().contiguous()  # (n, hT)
        out = _onednn_linear(weights, mixed[0], bias)
        if out is not None:
            return out[None] if residual is None else out[None].add_(residual)
    weights_t = attention_softmax(scores_t, -2).reshape(b, heads * t, n)
    out = torch.matmul(weights_t.transpose(1, 2), mixed.transpose(1, 2)) + bias
    return out if residual is None else out + residual


def token_mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    """A transformer block's MLP (``lin2(act(lin1(x)))``) on the few prompt tokens ``x`` ``(B, T, C)``.

    Eager inference on one prompt set with a ReLU MLP: oneDNN's inner products, the ReLU fused into the first.
    With 7 tokens the products stream their weights (2 MB each for SAM's 256x2048), which oneDNN does 1.4-1.7x
    faster than PyTorch's ``addmm`` here (measured 136 vs 221 us and 134 vs 189 us with cold caches, 2 threads).
    """
    plain = (isinstance(getattr(mlp, "act", None), nn.ReLU)
             and all(type(getattr(mlp, name, None)) is nn.Linear for name in ("lin1", "lin2")))  # no wrappers
    if plain and _eager_fp32_single(x):
        hidden = _onednn_linear(x, mlp.lin1.weight, mlp.lin1.bias, "relu")
        out = None if hidden is None else _onednn_linear(hidden, mlp.lin2.weight, mlp.lin2.bias)
        if out is not None:
            return out
    return mlp(x)


def attention_softmax(x: Tensor, dim: int) -> Tensor:
    """Softmax as Attention computes it (half precision in float32). Over a middle axis it is written out
    (max, exp, sum: the softmax algorithm) so each step runs along the contiguous last axis; runtimes would
    otherwise transpose around their last-axis kernel."""
    y = x.float() if x.element_size() < 4 else x
    if dim in (-1, y.dim() - 1):
        return torch.softmax(y, dim=-1).to(x.dtype)
    e = torch.exp(y - y.amax(dim=dim, keepdim=True))
    return (e / e.sum(dim=dim, keepdim=True)).to(x.dtype)


def absorbs(attn: Attention, tokens: int) -> bool:
    """Whether projecting ``tokens`` prompt tokens through the image-side weights is cheaper than projecting
    every image token (``heads * tokens < internal width``, i.e. fewer tokens than a head has channels)."""
    return tokens * attn.num_heads < attn.internal_dim


def head_weights(linear: nn.Linear, heads: int) -> Tensor:
    """A projection's weight ``(heads * c, C)`` as ``(heads, c, C)``."""
    return linear.weight.reshape(heads, -1, linear.weight.shape[-1])


def tokens_to_image_absorbed(attn: Attention, q_tokens: Tensor, keys: Tensor, pe_k: Optional[Tensor],
                             v_bias: Tensor, keys_pe: Optional[Tensor] = None) -> Tensor:
    """Prompt tokens attend to the raw image tokens ``keys`` ``(B, C, n)``, the projections absorbed.

    ``pe_k``: ``W_k pe`` as ``(1, heads, c, n)`` (cached per image). Scores ``q_h (W_k,h (x + pe))`` are
    ``(W_k,h^T q_h) x + q_h (W_k,h pe)`` (the key bias shifts a token's scores equally: the softmax cancels it);
    the output ``A_h (W_v,h x)^T`` is ``(A_h x^T) W_v,h^T``, plus the value bias (attention rows sum to one).
    ``keys_pe``: ``x + pe`` ``(B, C, n)`` when the caller has it (then ``pe_k`` is not needed): the scores are
    then one product, ``(W_k,h^T q_h) (x + pe)``. The softmax's ``1/sqrt(c)`` scales the few query rows.
    """
    heads = attn.num_heads
    q = attn.project("q", q_tokens)  # (B, h, T, c)
    b, _, t, c = q.shape
    q = q * (1.0 / math.sqrt(c))
    qk = torch.matmul(q, head_weights(attn.k_proj, heads)).reshape(b, heads * t, -1)  # (B, hT, C)
    if keys_pe is not None:
        scores = rows_times_image(qk, keys_pe).reshape(b, heads, t, -1)
    else:
        scores = rows_times_image(qk, keys).reshape(b, heads, t, -1) + torch.matmul(q, pe_k)
    weights = attention_softmax(scores, -1)  # (B, h, T, n)
    pooled = rows_times_image_t(weights.reshape(b, heads * t, -1), keys)  # (B, hT, C)
    out = torch.matmul(pooled.reshape(b, heads, t, -1), head_weights(attn.v_proj, heads).transpose(-1, -2))
    out = out + v_bias.reshape(heads, 1, -1)
    return attn.out_proj(attn._recombine_heads(out))


def image_to_tokens_absorbed(attn: Attention, q_img: Optional[Tensor], keys: Tensor, q_pe: Optional[Tensor],
                             k_tokens: Tensor, v_tokens: Tensor, token_major: bool = False,
                             keys_pe: Optional[Tensor] = None, residual: Optional[Tensor] = None) -> Tensor:
    """The image attends to the prompt tokens, output projection (and, without ``q_img``, query projection)
    absorbed into the prompt tokens; returns the image tokens' update ``(B, C, n)``, or ``(B, n, C)`` with
    ``token_major`` (then plus ``residual`` ``(B, n, C)`` when given).

    ``q_img``: the image queries ``(B, h, c, n)`` when already projected (the first block's, per image); else
    they are ``W_q x + (W_q pe + b_q)`` with ``q_pe`` = ``W_q pe + b_q`` ``(1, h, c, n)`` (cached), and the
    scores ``k_h . q_img`` become ``(W_q,h^T k_h) x + k_h q_pe``, or with ``keys_pe`` = ``x + pe``
    ``(B, C, n)`` (token-major only) ``(W_q,h^T k_h) (x + pe) + k_h b_q``. The update ``W_o [v_h^T S_h]_h + b_o``
    is ``sum_h (W_o,h v_h^T) S_h + b_o``: one ``(C, heads T) x (heads T, n)`` product.
    """
    heads = attn.num_heads
    k = attn.project("k", k_tokens)  # (B, h, T, c)
    v = attn.project("v", v_tokens)
    b, _, t, c = k.shape
    k = k * (1.0 / math.sqrt(c))  # the softmax's scale on the few prompt tokens instead of on every score
    if q_img is None:
        kq = torch.matmul(k, head_weights(attn.q_proj, heads)).reshape(b, heads * t, -1)  # (B, hT, C)
        if token_major and keys_pe is not None:
            k_bias = torch.matmul(k, attn.q_proj.bias.reshape(heads, c, 1))  # (B, h, T, 1)
            scores_t = rows_times_image(kq, keys_pe).reshape(b, heads, t, -1).add_(k_bias)
        else:
            scores_t = rows_times_image(kq, keys).reshape(b, heads, t, -1) + torch.matmul(k, q_pe)
    else:
        scores_t = torch.matmul(k, q_img)  # (B, h, T, n)
    out_w = attn.out_proj.weight.reshape(-1, heads, c).transpose(0, 1)  # (h, C, c)
    mixed = torch.matmul(out_w, v.transpose(-1, -2))  # (B, h, C, T)
    mixed = mixed.transpose(1, 2).reshape(b, -1, heads * t)  # (B, C, hT)
    if token_major:  # (B, n, hT) x (B, hT, C)
        return image_update_token_major(scores_t, mixed, attn.out_proj.bias, residual)
    weights_t = attention_softmax(scores_t, -2).reshape(b, heads * t, -1)
    update = rows_times_image(mixed, weights_t)  # (B, C, n)
    return update + attn.out_proj.bias.unsqueeze(-1)


def norm_with_pe(norm: nn.Module, x: Tensor, context: ImageContext, key_pe: Tensor) -> tuple[Tensor, Tensor]:
    """A token norm of token-major image tokens ``x`` ``(B, n, C)``, which the caller hands over (it may be
    overwritten), and the result plus the positional encoding (``key_pe``, a ``(1, C, n)`` view):
    ``(norm(x), norm(x) + pe)``, both ``(B, n, C)``.

    A sigmoid DyT (``w sigmoid(a x) + b``) without autograd writes both from one sigmoid pass, in place and
    with ``pe + b`` kept per image: two ``addcmul``s instead of a norm and an addition.
    """
    if isinstance(norm, SigmoidDynamicTanh) and norm.channels_last and not torch.is_grad_enabled() \
            and not capturing_graph():
        s = x.mul_(norm.alpha).sigmoid_()
        with_pe = torch.addcmul(token_major_pe(context, key_pe, norm.bias), s, norm.weight)
        return torch.addcmul(norm.bias, s, norm.weight, out=s), with_pe
    y = norm(x)
    return y, y + token_major_pe(context, key_pe)


def token_major_pe(context: ImageContext, key_pe: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """The positional encoding ``key_pe`` (a ``(1, C, n)`` view, any strides) as contiguous ``(1, n, C)``, plus
    a per-channel ``bias`` when given; once per image (kept in ``context.cache``)."""
    name = "pe-token-major" if bias is None else f"pe-plus-{id(bias)}"
    if name not in context.cache:
        pe = key_pe.transpose(1, 2).contiguous()
        context.cache[name] = pe if bias is None else pe + bias
    return context.cache[name]


def pe_projection(context: ImageContext, attn: Attention, kind: str, key_pe: Tensor) -> Tensor:
    """``W_k pe`` (``kind`` "k") or ``W_q pe + b_q`` ("q") of the positional encoding ``key_pe`` ``(1, C, n)``
    (any strides) as ``(1, heads, c, n)``, computed once per image (kept in ``context.cache``)."""
    linear = attn.k_proj if kind == "k" else attn.q_proj
    name = f"absorbed-{kind}{id(linear)}"
    if name not in context.cache:
        pe = torch.matmul(head_weights(linear, attn.num_heads), key_pe.unsqueeze(1))  # (1, h, c, n)
        context.cache[name] = pe + linear.bias.reshape(attn.num_heads, -1, 1) if kind == "q" else pe
    return context.cache[name]


class AbsorbingTwoWayTransformer(nn.Module):
    """:class:`TwoWayTransformer` ``base``'s function in its own token layout, with the per-prompt image-side
    projections absorbed into the prompt tokens when cheaper (decoders whose norms are LayerNorms: the
    channels-first transformer is for DyT). Parameters are ``base``'s; the first block's image-side projections
    come from the per-image :class:`ImageContext` as in ``base``."""

    def __init__(self, base: TwoWayTransformer) -> None:
        super().__init__()
        self.base = base
        self.depth = base.depth
        #: Absorb the image-side projections into the prompt tokens when cheaper (see the module docstring).
        self.absorb_projections = True

    key_pe = staticmethod(TwoWayTransformer.key_pe)

    def image_context(self, image_embedding: Tensor, image_pe: Tensor) -> ImageContext:
        """As :meth:`TwoWayTransformer.image_context`."""
        return self.base.image_context(image_embedding, image_pe)

    def forward(self, image_embedding: Optional[Tensor], image_pe: Optional[Tensor], point_embedding: Tensor,
                context: Optional[ImageContext] = None) -> tuple[Tensor, Tensor]:
        """As :meth:`TwoWayTransformer.forward` (same arguments, same results)."""
        final = self.base.final_attn_token_to_image
        if not (self.absorb_projections and absorbs(final, point_embedding.shape[1])):
            return self.base(image_embedding, image_pe, point_embedding, context)
        if context is None:
            context = self.image_context(image_embedding, image_pe)
        context = context.expand_to(point_embedding.shape[0])
        queries, keys, pe = point_embedding, context.keys, point_embedding
        key_pe = context.key_pe.transpose(1, 2)  # (1, C, n) view of the token-major encoding
        # Eager: each block also leaves keys + pe, so the later scores take one product each.
        keys_pe, with_pe = None, not capturing_graph()
        for i, block in enumerate(self.base.layers):
            t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
            queries = block.token_self_attention(queries, pe)
            keys_pe_cf = None if keys_pe is None else keys_pe.transpose(1, 2)
            if i == 0:
                attended = t2i.attend(t2i.project("q", queries + pe), context.token_to_image_k,
                                      context.token_to_image_v)
            else:
                pe_k = None if keys_pe_cf is not None else pe_projection(context, t2i, "k", key_pe)
                attended = tokens_to_image_absorbed(t2i, queries + pe, keys.transpose(1, 2), pe_k, t2i.v_proj.bias,
                                                    keys_pe=keys_pe_cf)
            queries = block.norm2(queries + attended)
            queries = block.norm3(queries + token_mlp(block.mlp, queries))
            q_img = context.image_to_token_q.transpose(-1, -2) if i == 0 else None
            q_pe = None if i == 0 or keys_pe_cf is not None else pe_projection(context, i2t, "q", key_pe)
            pre_norm = image_to_tokens_absorbed(i2t, q_img, keys.transpose(1, 2), q_pe, queries + pe, queries,
                                                token_major=True, keys_pe=keys_pe_cf, residual=keys)
            if with_pe:
                keys, keys_pe = norm_with_pe(block.norm4, pre_norm, context, key_pe)
            else:
                keys = block.norm4(pre_norm)
        keys_pe_cf = None if keys_pe is None else keys_pe.transpose(1, 2)
        pe_k = None if keys_pe_cf is not None else pe_projection(context, final, "k", key_pe)
        attended = tokens_to_image_absorbed(final, queries + pe, keys.transpose(1, 2), pe_k, final.v_proj.bias,
                                            keys_pe=keys_pe_cf)
        return self.base.norm_final_attn(queries + attended), keys
