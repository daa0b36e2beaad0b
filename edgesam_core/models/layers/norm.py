"""Channels-first LayerNorm and the norm-layer factory that the encoders and decoders take."""

from __future__ import annotations

from functools import partial
from typing import Callable, Union

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]
NORM_NAMES = ("layernorm", "layernorm2d", "dyt", "dyt2d")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of a ``(B, C, H, W)`` tensor (SAM's, eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def get_norm_layer(norm: Union[str, NormLayer]) -> NormLayer:
    """Return a constructor ``f(num_channels) -> nn.Module`` for a norm layer.

    Args:
        norm: ``"layernorm"`` (tokens ``(..., C)``, eps 1e-5), ``"layernorm2d"`` (``(B, C, H, W)``, eps 1e-6),
            ``"dyt"`` (DyT on tokens), ``"dyt2d"`` (DyT on ``(B, C, H, W)``), or a class / ``functools.partial``
            that is returned unchanged.

    Raises:
        ValueError: for an unknown name.
    """
    if callable(norm):
        return norm
    from .dyt import DynamicTanh  # dyt imports LayerNorm2d from here

    table: dict[str, NormLayer] = {
        "layernorm": nn.LayerNorm,
        "layernorm2d": LayerNorm2d,
        "dyt": partial(DynamicTanh, channels_last=True),
        "dyt2d": partial(DynamicTanh, channels_last=False),
    }
    try:
        return table[norm]
    except KeyError:
        raise ValueError(f"Unknown norm layer '{norm}'; choose one of: {', '.join(NORM_NAMES)}.") from None
