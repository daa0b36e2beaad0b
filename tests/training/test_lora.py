"""Low-rank adapters on the encoder's pointwise convolutions: zero at the start, exact when merged, original keys."""

from __future__ import annotations

import torch

from edgesam_core.models import build_sam
from edgesam_core.training.lora import LoRAConv2d, add_lora, merge_lora


def test_adapters_start_at_the_model_and_merge_exactly():
    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_debug").eval()
    keys = set(model.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = model.image_encoder(x)
    adapters = add_lora(model.image_encoder, rank=4)
    assert len(adapters) > 10 and all(isinstance(a, LoRAConv2d) for a in adapters)
    assert {p for p in model.parameters() if p.requires_grad} >= {a.up for a in adapters}
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(x), before, rtol=0, atol=0)  # up = 0: the same model
        for a in adapters:
            a.up.normal_(0, 0.05)
        adapted = model.image_encoder(x)
    assert (adapted - before).abs().max() > 1e-3
    assert merge_lora(model) == len(adapters)
    assert set(model.state_dict()) == keys and not any(isinstance(m, LoRAConv2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model.image_encoder(x), adapted, rtol=1e-4, atol=1e-5)
    # The merged state dict loads into a fresh model of the variant.
    fresh = build_sam("edge_sam_dyt_debug")
    fresh.load_state_dict(model.state_dict())
