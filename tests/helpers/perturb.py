"""Seeded noise on a model's prompt encoder and mask decoder.

Freshly initialised decoders give near-constant logits, so every mask is empty or full and a wrong prompt
semantics or a wrong mask index would pass unnoticed; tests that compare masks perturb these weights first.
"""

from __future__ import annotations

import torch


def perturb_prompt_path(model, seed: int = 1, scale: float = 0.2, generator: torch.Generator | None = None):
    """Add ``N(0, scale)`` noise to the prompt encoder and decoder weights; returns ``model``.

    The noise comes from ``generator`` when given (so a caller can keep drawing from the same stream),
    else from a new generator seeded with ``seed``.
    """
    generator = generator or torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in list(model.prompt_encoder.parameters()) + list(model.mask_decoder.parameters()):
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return model
