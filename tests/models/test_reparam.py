"""RepViT re-parameterisation keeps the encoder's function (eval mode)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgesam_core.models import build_sam
from edgesam_core.models.image_encoder_repvit import Conv2d_BN, RepVGGDW
from edgesam_core.models.reparam import reparameterize_repvit


def _randomize_bn(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                for t, lo in ((module.weight, 0.5), (module.running_var, 0.5)):
                    t.copy_(torch.rand(t.shape, generator=gen) + lo)
                module.bias.normal_(0, 0.1, generator=gen)
                module.running_mean.normal_(0, 0.1, generator=gen)
            elif isinstance(module, nn.Conv2d) and module.bias is not None:
                module.bias.normal_(0, 0.1, generator=gen)


@pytest.mark.parametrize("name", ["edge_sam_debug", "edge_sam_dyt_hq_debug"])
def test_reparameterized_encoder_matches(name):
    torch.manual_seed(0)
    model = build_sam(name)
    _randomize_bn(model)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        before = model.encode_image(x)
        reparameterize_repvit(model.image_encoder)
        after = model.encode_image(x)
    assert not any(isinstance(m, (Conv2d_BN, RepVGGDW, nn.BatchNorm2d)) for m in model.image_encoder.modules())
    pairs = [(before[0], after[0]), *zip(before[1], after[1])] if model.is_hq else [(before, after)]
    for a, b in pairs:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_reparameterize_rejects_vit():
    with pytest.raises(TypeError):
        reparameterize_repvit(build_sam("vit_b_debug").image_encoder)
