"""Helpers shared by the benchmark scripts: the benchmarked model and the JSON report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def build_model(variant: str, checkpoint: str | None = None, seed: int = 0, spread: float = 0.0) -> Any:
    """``variant`` with checkpoint weights, or ``torch.manual_seed(seed)`` random ones, in eval mode.

    ``spread`` > 0 adds N(0, spread) noise to the prompt-encoder and decoder weights: freshly initialised
    decoders predict near-constant logits, which makes every mask trivially empty or full.
    """
    import torch

    from edgesam_core.models import build_sam

    torch.manual_seed(seed)
    model = build_sam(variant, checkpoint).eval()
    if spread > 0:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in list(model.prompt_encoder.parameters()) + list(model.mask_decoder.parameters()):
                param.add_(torch.randn(param.shape, generator=generator) * spread)
    return model


def emit_json(result: dict, out: str | Path | None) -> None:
    """Print ``result`` as indented JSON and, when ``out`` is given, write it there too."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)


def interleaved_rounds(cases: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per call of each case: one warm-up each, then ``rounds`` rounds visiting every case in turn
    (interleaved, so drift in the machine's speed hits all cases alike)."""
    import time

    import torch

    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.inference_mode():
        for fn in cases.values():
            fn()
        for _ in range(rounds):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    return times
