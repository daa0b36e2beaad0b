"""Dynamic Tanh (DyT): the element-wise stand-in for LayerNorm used by EdgeSAM-DyT.

y = weight * tanh(alpha * x) + bias, with a single learnable scalar ``alpha`` and a per-channel affine.
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import LayerNorm2d


class DynamicTanh(nn.Module):
    """Per-channel affine after ``tanh(alpha * x)``.

    Args:
        normalized_shape: number of channels C (the size of ``weight`` and ``bias``).
        channels_last: True for token tensors ``(..., C)``; False for images ``(B, C, H, W)``.
        alpha_init_value: initial value of the scalar ``alpha`` (stored with shape ``[1]``).
    """

    def __init__(self, normalized_shape: int, channels_last: bool, alpha_init_value: float = 0.5) -> None:
        super().__init__()
        self.normalized_shape = normalized_shape
        self.channels_last = channels_last
        self.alpha_init_value = alpha_init_value
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init_value)))
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.alpha * x)
        if self.channels_last:
            return x * self.weight + self.bias
        # Two unsqueezes instead of [:, None, None] keep the ONNX graph free of advanced indexing.
        return x * self.weight.unsqueeze(-1).unsqueeze(-1) + self.bias.unsqueeze(-1).unsqueeze(-1)

    def extra_repr(self) -> str:
        return (
            f"normalized_shape={self.normalized_shape}, alpha_init_value={self.alpha_init_value}, "
            f"channels_last={self.channels_last}"
        )


def _as_dyt(norm: nn.Module, channels_last: bool, alpha_init_value: float) -> DynamicTanh:
    if isinstance(norm, nn.LayerNorm):
        num_channels = int(norm.normalized_shape[-1])
    else:
        num_channels = int(norm.weight.shape[0])
    dyt = DynamicTanh(num_channels, channels_last, alpha_init_value)
    weight = getattr(norm, "weight", None)
    if weight is not None:
        dyt = dyt.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            dyt.weight.copy_(weight)
            if getattr(norm, "bias", None) is not None:
                dyt.bias.copy_(norm.bias)
    dyt.train(norm.training)
    return dyt


def convert_ln_to_dyt(module: nn.Module, alpha_init_value: float = 0.5) -> nn.Module:
    """Replace every ``nn.LayerNorm`` and ``LayerNorm2d`` below ``module`` with a ``DynamicTanh``.

    LayerNorm weight/bias are copied into the DyT affine (``alpha`` starts at ``alpha_init_value``), and the
    module names are kept, so a LayerNorm checkpoint loads into the result with only the ``alpha`` keys missing.

    Args:
        module: the model (or a single norm layer) to convert; children are replaced in place.
        alpha_init_value: initial ``alpha`` of every new DyT.

    Returns:
        The converted module (a new object only when ``module`` itself is a norm layer).
    """
    # Checked first and also by class name: other libraries' LayerNorm2d (SAM's, timm's nn.LayerNorm subclass)
    # normalise channels-first tensors too.
    if isinstance(module, LayerNorm2d) or type(module).__name__ == "LayerNorm2d":
        return _as_dyt(module, channels_last=False, alpha_init_value=alpha_init_value)
    if isinstance(module, nn.LayerNorm):
        return _as_dyt(module, channels_last=True, alpha_init_value=alpha_init_value)
    for name, child in module.named_children():
        converted = convert_ln_to_dyt(child, alpha_init_value)
        if converted is not child:
            setattr(module, name, converted)
    return module


class SigmoidDynamicTanh(nn.Module):
    """A :class:`DynamicTanh` rewritten with ``tanh(z) = 2 * sigmoid(2z) - 1`` for inference.

    ``weight * tanh(alpha * x) + bias`` equals ``(2 * weight) * sigmoid(2 * alpha * x) + (bias - weight)``;
    PyTorch's CPU sigmoid is ~5x faster than its tanh (measured, 2 threads). Built from a loaded DyT; the
    extra rounding is a few fp32 ulps of the output.
    """

    @staticmethod
    def sigmoid_affine(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``weight * sigmoid(alpha * x) + bias`` (``weight``/``bias`` shaped to broadcast against ``x``).

        Without autograd, in one scratch tensor updated in place: PyTorch's ``addcmul`` with per-channel
        operands broadcast over an image runs ~15x slower (measured 3.5 vs 0.24 ms on 1x64x128x128).
        """
        if torch.is_grad_enabled() and any(t.requires_grad for t in (x, alpha, weight, bias)):
            return torch.addcmul(bias, torch.sigmoid(alpha * x), weight)
        y = x * alpha
        return y.sigmoid_().mul_(weight).add_(bias)

    def __init__(self, dyt: DynamicTanh) -> None:
        super().__init__()
        self.channels_last = dyt.channels_last
        self.register_buffer("alpha", (2.0 * dyt.alpha).detach().clone())
        self.register_buffer("weight", (2.0 * dyt.weight).detach().clone())
        self.register_buffer("bias", (dyt.bias - dyt.weight).detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return self.sigmoid_affine(x, self.alpha, self.weight, self.bias)
        return self.sigmoid_affine(x, self.alpha, self.weight.unsqueeze(-1).unsqueeze(-1),
                                   self.bias.unsqueeze(-1).unsqueeze(-1))
