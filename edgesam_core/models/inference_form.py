"""The inference form of a SAM model: the same function, rewritten to run fast on CPUs and in ONNX Runtime.

Every rewrite is exact in real arithmetic (the export gate checks that in float64) and only changes fp32
rounding:

* RepViT: BatchNorms and RepVGG branches folded into single convolutions (:func:`reparameterize_repvit`);
* the neck's 1x1 convolution folded into the two fuse convolutions (the x2 upsampling between them is linear
  and per channel, so it commutes with channel mixing), and each DyT's ``alpha`` folded into the convolution
  before it;
* in PyTorch, each DyT as ``2w * sigmoid(2 alpha x) + (b - w)`` (PyTorch's CPU tanh is ~5x slower);
* the mask decoder's two-way transformer with channels-first image tokens (no transposes of image-sized
  tensors, the image->token softmax vectorised; :mod:`.two_way_channels_first`);
* in PyTorch on CPUs, the decoder's upscaling in channels-last memory; its other stride-2
  ``ConvTranspose2d(k=2)`` layers (and all of them off CPUs) as a 1x1 convolution plus ``pixel_shuffle``
  (exports keep the deconvolutions, which ONNX Runtime runs faster than MatMul + DepthToSpace);
* the decoder's four hypernetwork MLPs as one batched MLP (:class:`BatchedMLPs`);
* for export only (``for_export=True``): the neck's fixed-size bicubic upsampling as two small matrix products
  ``A @ X @ B`` (ONNX Runtime's cubic ``Resize`` took ~16 % of the encoder), and each squeeze-excite gate
  expanded to the feature map's size with a nearest ``Resize`` before the multiply (ONNX Runtime keeps a
  full-size product in its blocked layout, but converts layouts around a broadcast one); and with the decoder
  rewrites, each channels-first ``LayerNorm2d`` as a LayerNorm over the last axis between two transposes
  (ONNX Runtime's fused ``LayerNormalization``; the formula exports to a reduction over the channel axis), as
  also in PyTorch for the decoder's channels-last upscaling.

Training keeps the plain model: load weights first, then call :func:`to_inference_form` on a model (or a copy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder_repvit import RepViTEncoder, SqueezeExcite
from .layers.common import UpSampleLayer, capturing_graph
from .layers.dyt import DynamicTanh, SigmoidDynamicTanh
from .layers.norm import LayerNorm2d
from .reparam import reparameterize_repvit
from .transformer import TwoWayTransformer
from .two_way_absorbed import AbsorbingTwoWayTransformer
from .two_way_channels_first import ChannelsFirstTwoWayTransformer


class SeparableUpsample(nn.Module):
    """``F.interpolate(x, scale_factor, mode, align_corners=False)`` for fixed input sizes as ``A @ x @ B``.

    The matrices are PyTorch's own 1-D interpolation weights (obtained by interpolating the identity in
    float64), so the result equals ``F.interpolate`` up to fp32 summation order. They are built per input size
    on first use; traced into ONNX they become two constant ``MatMul`` operands.
    """

    def __init__(self, factor: int, mode: str) -> None:
        super().__init__()
        self.factor, self.mode = factor, mode
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def interpolation_matrix(size: int, factor: int, mode: str) -> torch.Tensor:
        """``(size * factor, size)`` float64 matrix of 1-D ``mode`` interpolation (align_corners=False)."""
        eye = torch.eye(size, dtype=torch.float64)[None, None]  # (1, 1, size, size): columns are unit vectors
        up = F.interpolate(eye, size=(size * factor, size), mode=mode, align_corners=False)
        return up[0, 0]

    def _matrices(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        key = (h, w, x.dtype, x.device)
        if key not in self._cache:
            rows = self.interpolation_matrix(h, self.factor, self.mode).to(x.dtype).to(x.device)
            cols = self.interpolation_matrix(w, self.factor, self.mode).t().contiguous().to(x.dtype).to(x.device)
            self._cache[key] = (rows, cols)
        return self._cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self._matrices(x)
        return torch.matmul(torch.matmul(rows, x), cols)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, mode={self.mode}"


class ExpandedGateSqueezeExcite(nn.Module):
    """:class:`SqueezeExcite` whose gate is expanded to the input's size before the multiply (export form)."""

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = se.fc1, se.act, se.fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()
        return x * F.interpolate(gate, size=x.shape[-2:], mode="nearest")


class PixelShuffleUpsample(nn.Module):
    """``ConvTranspose2d(kernel_size=2, stride=2)`` as a 1x1 convolution to 4x the channels + ``pixel_shuffle``."""

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        cin, cout = deconv.in_channels, deconv.out_channels
        # ConvTranspose weight (cin, cout, 2, 2): out[o, 2i+a, 2j+b] = sum_c w[c, o, a, b] x[c, i, j] + bias[o].
        # pixel_shuffle reads channel o*4 + a*2 + b into position (a, b) of output channel o.
        weight = deconv.weight.detach().permute(1, 2, 3, 0).reshape(cout * 4, cin, 1, 1)
        self.conv = nn.Conv2d(cin, cout * 4, 1, bias=deconv.bias is not None,
                              device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            if deconv.bias is not None:
                self.conv.bias.copy_(deconv.bias.detach().repeat_interleave(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


def _mkldnn_deconv_pointwise_available() -> bool:
    """Whether this PyTorch has oneDNN's transposed convolution with a fused activation (what inductor uses)."""
    try:
        return torch.backends.mkldnn.is_available() and \
            hasattr(torch.ops.mkldnn, "_convolution_transpose_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _gelu_algorithm(act: nn.Module) -> str | None:
    """oneDNN's name for a GELU module's formula (``tanh`` or ``none`` = erf), None for anything else."""
    if isinstance(act, TanhGeluFormula):
        return "tanh"
    if isinstance(act, nn.GELU):
        return "tanh" if act.approximate == "tanh" else "none"
    return None


class ChannelsLastUpscaling(nn.Module):
    """The decoder's ``output_upscaling`` run in channels-last memory (oneDNN's fast layout for its transposed
    convolutions on CPUs: measured 1.1 + 2.8 ms vs 3.6 + 6.5 ms for GEMM + pixel shuffle in NCHW).

    Without autograd, where oneDNN offers it, the elementwise work rides on the transposed convolutions as
    fused post-ops (one pass instead of several over the 1x32x256x256 output): the last GELU on the second,
    and on the first the sigmoid of a :class:`SigmoidDynamicTanh` norm, whose input scale is folded into that
    convolution's weights (measured 1.9 -> 0.9 ms for the second convolution and its GELU).
    """

    def __init__(self, upscaling: nn.Module) -> None:
        super().__init__()
        self.upscaling = upscaling.to(memory_format=torch.channels_last)
        parts = list(upscaling) if isinstance(upscaling, nn.Sequential) else []
        self.fused = (len(parts) == 5 and _is_stride2_deconv(parts[0]) and _is_stride2_deconv(parts[3])
                      and _gelu_algorithm(parts[4]) is not None and _mkldnn_deconv_pointwise_available())
        if not self.fused:
            return
        first, norm = parts[0], parts[1]
        self.sigmoid_norm = isinstance(norm, SigmoidDynamicTanh)
        if self.sigmoid_norm:  # sigmoid(alpha * deconv(x)) = sigmoid(deconv_alpha(x))
            alpha = norm.alpha.detach().reshape(-1)
            self.register_buffer("first_weight", first.weight.detach() * alpha.view(1, -1, 1, 1))
            bias = first.bias.detach() if first.bias is not None else torch.zeros_like(first.weight[0, :, 0, 0])
            self.register_buffer("first_bias", bias * alpha)

    @staticmethod
    def _deconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, attr: str,
                algorithm: str | None = None) -> torch.Tensor:
        """A kernel-2, stride-2 transposed convolution with oneDNN post-op ``attr`` (``algorithm``: its variant)."""
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, weight, bias, [0, 0], [0, 0], [2, 2], [1, 1], 1, attr, [], algorithm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if not self.fused or torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 \
                or capturing_graph():
            return self.upscaling(x)
        first, norm, act, second, last = self.upscaling
        try:
            if self.sigmoid_norm:
                y = self._deconv(x, self.first_weight, self.first_bias, "sigmoid")
                y = y.mul_(norm.weight.view(1, -1, 1, 1)).add_(norm.bias.view(1, -1, 1, 1))
            else:
                y = norm(first(x))
            return self._deconv(act(y), second.weight, second.bias, "gelu", _gelu_algorithm(last))
        except (RuntimeError, TypeError, NotImplementedError):  # a private op that changed: the plain modules
            self.fused = False
            return self.upscaling(x)


class LastAxisLayerNorm2d(nn.Module):
    """``norm`` (a channels-first :class:`LayerNorm2d`) as a LayerNorm over the last axis of the channels-last
    view, between two transposes: in ONNX, ``Transpose`` + ``LayerNormalization`` + ``Transpose``, which ONNX
    Runtime runs in half the time of the exported formula's chain (``ReduceMean`` over the channel axis, ``Sub``,
    ``Pow``, ``Sqrt``, ``Div``: measured 1.2 vs 2.4 ms for 1x64x128x128, 2 threads)."""

    def __init__(self, norm: LayerNorm2d) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        y = F.layer_norm(x.permute(0, 2, 3, 1), (norm.weight.shape[0],), norm.weight, norm.bias, norm.eps)
        return y.permute(0, 3, 1, 2)


class TanhGeluFormula(nn.Module):
    """``GELU(approximate='tanh')`` as its formula, ``x * sigmoid(x * (c1 + c2 * x^2))`` with
    ``c1 = 2 sqrt(2 / pi)``, ``c2 = 0.044715 c1`` (= ``0.5 x (1 + tanh(...))``), for runtimes whose fused GELU
    ignores ``approximate``: ExecuTorch's XNNPACK delegate runs the exact erf GELU for it (measured: 4.7e-4
    off on N(0, 9) inputs). Written with the constants folded: 6.7 ms in XNNPACK on a 1x96x256x256 tensor,
    against 11.4 ms for the textbook order."""

    C1 = 2.0 * math.sqrt(2.0 / math.pi)
    C2 = 0.044715 * C1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * (self.C1 + self.C2 * (x * x)))


class FastTanhGelu(TanhGeluFormula):
    """:class:`TanhGeluFormula` for PyTorch inference: the same formula in one scratch tensor, updated in
    place (the input is left as it is). PyTorch's own tanh GELU runs ~2x slower on CPUs (measured 1.2 vs
    0.6 ms on the decoder's 1x32x256x256 upscaling); with autograd it falls back to the plain formula."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        u = x * x
        return u.mul_(self.C2).add_(self.C1).mul_(x).sigmoid_().mul_(x)


def spell_out_tanh_gelu(model: nn.Module, formula: type[TanhGeluFormula] = TanhGeluFormula) -> int:
    """Replace every ``GELU(approximate='tanh')`` below ``model`` by ``formula()`` (:class:`TanhGeluFormula` or
    :class:`FastTanhGelu`); returns how many."""
    count = 0
    for name, child in model.named_children():
        if isinstance(child, nn.GELU) and child.approximate == "tanh":
            setattr(model, name, formula())
            count += 1
        else:
            count += spell_out_tanh_gelu(child, formula)
    return count


class BatchedMLPs(nn.Module):
    """K same-shaped MLPs (ReLU between layers) applied to K tokens at once: ``(B, K, C) -> (B, K, out)``.

    Each layer is one batched matrix product over stacked weights instead of K small ones (fewer, larger
    kernels; in ONNX, 3 nodes instead of 3K)."""

    def __init__(self, mlps: nn.ModuleList) -> None:
        super().__init__()
        depth = len(mlps[0].layers)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([m.layers[i].weight.detach().T for m in mlps]), requires_grad=False)
            for i in range(depth))
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([m.layers[i].bias.detach() for m in mlps]), requires_grad=False)
            for i in range(depth))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.transpose(0, 1)  # (K, B, C)
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias.unsqueeze(1), x, weight)
            if i < len(self.weights) - 1:
                x = F.relu(x)
        return x.transpose(0, 1)


def _is_stride2_deconv(module: nn.Module) -> bool:
    return (isinstance(module, nn.ConvTranspose2d) and tuple(module.kernel_size) == (2, 2)
            and tuple(module.stride) == (2, 2) and tuple(module.padding) == (0, 0) and module.groups == 1
            and tuple(module.output_padding) == (0, 0) and tuple(module.dilation) == (1, 1))


@torch.no_grad()
def _scale_out_channels(conv: nn.Conv2d, scale: torch.Tensor) -> None:
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    if conv.bias is not None:
        conv.bias.mul_(scale)


@torch.no_grad()
def fold_neck(encoder: RepViTEncoder) -> int:
    """Fold the neck's first 1x1 conv into the fuse convs and DyT alphas into the convs before them.

    Returns the number of folds made (0 when the neck is not the plain conv/norm/conv/norm layout).
    """
    neck = encoder.neck
    conv_in = encoder.fuse_stage3.op_list[0]
    if not (isinstance(neck, nn.Sequential) and len(neck) == 4 and isinstance(neck[0], nn.Conv2d)
            and tuple(neck[0].kernel_size) == (1, 1) and neck[0].bias is None
            and isinstance(encoder.fuse_stage2, nn.Conv2d) and isinstance(conv_in, nn.Conv2d)):
        return 0
    mix = neck[0].weight[:, :, 0, 0]  # (out, in)
    for conv in (encoder.fuse_stage2, conv_in):
        if conv.bias is not None:
            return 0
        conv.weight.copy_(torch.einsum("oc,cikl->oikl", mix, conv.weight))
    neck[0] = nn.Identity()
    folds = 1
    # DyT(x) = w * tanh(alpha * x) + b: alpha moves into the (bias-free, linear) producer of x.
    if isinstance(neck[1], DynamicTanh):
        alpha = neck[1].alpha.detach().clone()
        for conv in (encoder.fuse_stage2, conv_in):
            _scale_out_channels(conv, alpha.expand(conv.out_channels))
        neck[1].alpha.fill_(1.0)
        folds += 1
    if isinstance(neck[3], DynamicTanh) and isinstance(neck[2], nn.Conv2d):
        _scale_out_channels(neck[2], neck[3].alpha.detach().clone().expand(neck[2].out_channels))
        neck[3].alpha.fill_(1.0)
        folds += 1
    return folds


def _replace(parent: nn.Module, should: type | tuple, make, skip: type | tuple = ()) -> int:
    """Replace every ``should`` module below ``parent`` by ``make(module)``, not looking inside ``skip`` ones."""
    count = 0
    for name, child in parent.named_children():
        if skip and isinstance(child, skip):
            continue
        if isinstance(child, should) and (not isinstance(child, nn.ConvTranspose2d) or _is_stride2_deconv(child)):
            setattr(parent, name, make(child))
            count += 1
        else:
            count += _replace(child, should, make, skip)
    return count


@torch.no_grad()
def to_inference_form(model: nn.Module, for_export: bool = False,
                      decoder_rewrites: bool = True) -> dict[str, int]:
    """Rewrite ``model`` (a ``Sam``) in place into its inference form; returns what was rewritten.

    Args:
        model: an eval-mode model with its weights loaded (its state dict no longer matches checkpoints after).
        for_export: also apply the ONNX Runtime specific rewrites (matrix-product upsampling, expanded SE gates).
        decoder_rewrites: rewrite the decoder's transformer channels-first (DyT models) and batch its
            hypernetwork MLPs (their dynamic reshapes are what static-shape converters such as onnx2tf cannot
            take, so portable exports leave them out).
    """
    model.eval()
    done = {"repvgg_blocks": 0, "neck_folds": 0, "deconvs": 0, "upsamplers": 0, "se_gates": 0,
            "channels_first_transformer": 0, "sigmoid_dyts": 0,
            "batched_hypernetworks": 0, "fast_gelus": 0, "absorbing_transformer": 0, "last_axis_norms": 0}
    encoder = getattr(model, "image_encoder", None)
    if isinstance(encoder, RepViTEncoder):
        from .image_encoder_repvit import RepVGGDW

        done["repvgg_blocks"] = sum(isinstance(m, RepVGGDW) for m in encoder.modules())
        reparameterize_repvit(encoder)
        done["neck_folds"] = fold_neck(encoder)
        if for_export:
            done["upsamplers"] = _replace(encoder, UpSampleLayer, lambda m: SeparableUpsample(m.factor, m.mode))
            done["se_gates"] = _replace(encoder, SqueezeExcite, ExpandedGateSqueezeExcite)
    decoder = getattr(model, "mask_decoder", None)
    mlps = getattr(decoder, "output_hypernetworks_mlps", None)
    # (HQ decoders stack their MLPs with the HQ token's own in predict_masks: left as they are.)
    if decoder_rewrites and mlps is not None and not hasattr(decoder, "hf_mlp") \
            and len({len(m.layers) for m in mlps}) == 1:
        decoder.batched_hypernetworks = BatchedMLPs(mlps)
        done["batched_hypernetworks"] = len(mlps)
    transformer = getattr(decoder, "transformer", None)
    # Channels-first only pays with DyT norms (elementwise): a LayerNorm over the channel axis would need
    # strided reductions, where the token layout gets ONNX Runtime's fused LayerNormalization.
    if decoder_rewrites and isinstance(transformer, TwoWayTransformer) \
            and isinstance(transformer.norm_final_attn, DynamicTanh):
        decoder.transformer = ChannelsFirstTwoWayTransformer(decoder.transformer)
        done["channels_first_transformer"] = 1
    elif decoder_rewrites and isinstance(transformer, TwoWayTransformer):
        # LayerNorm decoders keep the token layout, with the per-prompt projections absorbed all the same.
        decoder.transformer = AbsorbingTwoWayTransformer(decoder.transformer)
        done["absorbing_transformer"] = 1
    if for_export and decoder_rewrites:
        done["last_axis_norms"] = _replace(model, LayerNorm2d, LastAxisLayerNorm2d)
    if not for_export:
        # PyTorch's CPU tanh is ~5x slower than its sigmoid; ONNX Runtime's Tanh is fast, so exports keep it.
        done["sigmoid_dyts"] = _replace(model, DynamicTanh, SigmoidDynamicTanh)
    if decoder is not None and not for_export:
        # PyTorch on CPUs: the upscaling's deconvolutions in channels-last memory. Elsewhere (and for the HQ
        # feature paths) GEMM + pixel shuffle, ~25 % faster than NCHW deconvolutions; ONNX Runtime runs its
        # ConvTranspose faster than MatMul + DepthToSpace (measured 41 vs 55 ms per click), so exports keep them.
        upscaling = getattr(decoder, "output_upscaling", None)
        if upscaling is not None:
            done["fast_gelus"] = spell_out_tanh_gelu(upscaling, FastTanhGelu)
            # In channels-last memory the LayerNorm's last axis is contiguous: one fused kernel instead of the
            # formula's passes (measured per click, plain EdgeSAM: 0.97x).
            done["last_axis_norms"] = _replace(upscaling, LayerNorm2d, LastAxisLayerNorm2d)
        if upscaling is not None and next(decoder.parameters()).device.type == "cpu":
            decoder.output_upscaling = ChannelsLastUpscaling(upscaling)
            done["deconvs"] = sum(_is_stride2_deconv(m) for m in upscaling.modules())
            if isinstance(decoder.transformer, ChannelsFirstTwoWayTransformer) and not hasattr(decoder, "hf_mlp"):
                # Image tokens token-major from the first block on: inner products on them, and the upscaling's
                # channels-last order (measured per click, EdgeSAM-DyT: 0.90-0.91x of channels-first).
                decoder.transformer.token_major_output = True
                done["token_major_output"] = 1
        # (The channels-last upscaling keeps its deconvolutions.)
        done["deconvs"] += _replace(decoder, nn.ConvTranspose2d, PixelShuffleUpsample, skip=ChannelsLastUpscaling)
    return done
