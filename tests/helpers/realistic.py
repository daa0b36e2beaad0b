"""Upstream-format weights whose BatchNorm layers carry trained-looking running statistics.

Freshly built models have running mean 0 and variance 1, so every BatchNorm is nearly the identity and fp32
rounding stays tiny. Trained RepViT weights are not like that: per-channel variances spread over orders of
magnitude, and the encoder then amplifies fp32 noise to ~1e-2 on the embeddings. Parity gates must pass such
weights and still fail a broken export.
"""

from __future__ import annotations

import torch


def realistic_batchnorm(model: torch.nn.Module, seed: int = 7) -> torch.nn.Module:
    """Give every BatchNorm a spread of running statistics and affine terms; returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                module.running_var.copy_(torch.exp(torch.randn(c, generator=gen) * 1.0))
                module.weight.copy_(1.0 + torch.randn(c, generator=gen) * 0.3)
                module.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model
