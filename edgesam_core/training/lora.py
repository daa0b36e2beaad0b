"""Low-rank adapters (LoRA) for the image encoder's 1x1 convolutions, merged into plain weights at the end.

Fine-tuning a whole encoder on a few hundred images overfits; LoRA trains only ``W + (alpha / r) * B @ A`` with
``A`` (r x in) and ``B`` (out x r, zero at the start, so training starts from the original model) for every
pointwise convolution (RepViT's channel mixers, squeeze-excite and neck 1x1 convs). :func:`merge_lora` folds
each update into its convolution's weight and puts the plain ``nn.Conv2d`` back, so the state dict has exactly
the original keys and loads anywhere a checkpoint does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LoRAConv2d(nn.Module):
    """A frozen 1x1 convolution plus a trainable low-rank update of its weight."""

    def __init__(self, conv: nn.Conv2d, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        self.conv = conv
        for p in conv.parameters():
            p.requires_grad_(False)
        self.down = nn.Parameter(torch.randn(rank, conv.in_channels) / rank)
        self.up = nn.Parameter(torch.zeros(conv.out_channels, rank))
        self.scale = float(alpha if alpha is not None else rank) / rank

    def delta(self) -> torch.Tensor:
        """The weight update ``scale * up @ down`` as a ``out x in x 1 x 1`` kernel."""
        return (self.scale * self.up @ self.down)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + F.conv2d(x, self.delta().to(x.dtype), stride=self.conv.stride)

    def merged(self) -> nn.Conv2d:
        """The convolution with the update folded into its weight (a new module)."""
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 1, stride=self.conv.stride,
                         bias=self.conv.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(self.conv.weight + self.delta())
            if self.conv.bias is not None:
                conv.bias.copy_(self.conv.bias)
        return conv.to(self.conv.weight.device)


def _pointwise(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
            and module.padding == (0, 0) and module.dilation == (1, 1))


def add_lora(encoder: nn.Module, rank: int, alpha: float | None = None) -> list[LoRAConv2d]:
    """Wrap every pointwise convolution of ``encoder`` in a :class:`LoRAConv2d`; returns the adapters."""
    adapters = []
    for parent in list(encoder.modules()):
        for name, child in list(parent.named_children()):
            if _pointwise(child):
                adapter = LoRAConv2d(child, rank, alpha).to(child.weight.device)
                setattr(parent, name, adapter)
                adapters.append(adapter)
    return adapters


def merge_lora(module: nn.Module) -> int:
    """Replace every :class:`LoRAConv2d` in ``module`` by its merged convolution; returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRAConv2d):
                setattr(parent, name, child.merged())
                count += 1
    return count
