"""Small layers shared by the SAM-style modules."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def capturing_graph() -> bool:
    """Whether the running code is being captured rather than executed: ``torch.jit`` tracing, ONNX export,
    ``torch.compile`` or ``torch.export`` (older PyTorch releases lack the last check)."""
    exporting = getattr(torch.compiler, "is_exporting", None)
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
            or (exporting is not None and exporting()))


class MLPBlock(nn.Module):
    """Two-layer feed-forward block ``lin2(act(lin1(x)))`` (transformer MLP)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: Callable[[], nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them and none after the last (decoder heads)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self.num_layers - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


class UpSampleLayer(nn.Module):
    """Fixed-factor interpolation (no parameters); ``mode`` may be changed after construction."""

    def __init__(self, factor: int = 2, mode: str = "bicubic") -> None:
        super().__init__()
        if mode not in ("bicubic", "bilinear"):
            raise ValueError(f"Unknown upsample mode '{mode}'; choose 'bicubic' or 'bilinear'.")
        self.factor = factor
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=False)

    def extra_repr(self) -> str:
        return f"factor={self.factor}, mode={self.mode}"
