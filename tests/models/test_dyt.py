"""DynamicTanh maths, the LayerNorm -> DyT converter and the norm factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgesam_core.models import DynamicTanh, convert_ln_to_dyt, get_norm_layer
from edgesam_core.models.layers.norm import LayerNorm2d


def test_dyt_parameters_and_defaults():
    dyt = DynamicTanh(6, channels_last=True)
    assert dyt.alpha.shape == (1,) and dyt.alpha.item() == 0.5
    assert torch.equal(dyt.weight, torch.ones(6)) and torch.equal(dyt.bias, torch.zeros(6))
    assert "channels_last=True" in repr(dyt) and "alpha_init_value=0.5" in repr(dyt)


@pytest.mark.parametrize("channels_last", [True, False])
def test_dyt_matches_formula(channels_last):
    torch.manual_seed(0)
    dyt = DynamicTanh(5, channels_last=channels_last, alpha_init_value=0.8)
    with torch.no_grad():
        dyt.weight.normal_()
        dyt.bias.normal_()
    x = torch.randn(2, 7, 5) if channels_last else torch.randn(2, 5, 3, 4)
    shape = (1, 1, 5) if channels_last else (1, 5, 1, 1)
    expected = dyt.weight.view(shape) * torch.tanh(0.8 * x) + dyt.bias.view(shape)
    torch.testing.assert_close(dyt(x), expected, rtol=0, atol=1e-6)


def test_dyt_alpha_gets_a_gradient():
    dyt = DynamicTanh(3, channels_last=True)
    dyt(torch.randn(4, 3)).sum().backward()
    assert dyt.alpha.grad is not None and dyt.alpha.grad.shape == (1,)


def test_convert_ln_to_dyt_replaces_every_layernorm_and_keeps_names():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1),
        LayerNorm2d(4),
        nn.Sequential(nn.Flatten(2), nn.LayerNorm(9)),
    )
    with torch.no_grad():
        model[1].weight.uniform_()
        model[2][1].bias.uniform_()
    names_before = [n for n, _ in model.named_modules()]
    ln2d_weight = model[1].weight.clone()
    ln_bias = model[2][1].bias.clone()

    convert_ln_to_dyt(model, alpha_init_value=0.3)

    assert [n for n, _ in model.named_modules()] == names_before
    assert not any(isinstance(m, (nn.LayerNorm, LayerNorm2d)) for m in model.modules())
    assert isinstance(model[1], DynamicTanh) and model[1].channels_last is False
    assert isinstance(model[2][1], DynamicTanh) and model[2][1].channels_last is True
    torch.testing.assert_close(model[1].weight, ln2d_weight, rtol=0, atol=0)
    torch.testing.assert_close(model[2][1].bias, ln_bias, rtol=0, atol=0)
    assert model[1].alpha.item() == pytest.approx(0.3)
    assert model(torch.randn(1, 3, 3, 3)).shape == (1, 4, 9)


def test_converted_layernorm_model_loads_with_only_alpha_missing():
    from edgesam_core.models import build_sam

    ln_model = build_sam("edge_sam_dyt_frozen_mask_debug")
    dyt_model = build_sam("edge_sam_dyt_frozen_mask_debug")
    # Upstream's step-3 init: the decoder's LayerNorms become DyT; the prompt encoder keeps LayerNorm2d.
    convert_ln_to_dyt(dyt_model.mask_decoder)
    reference = build_sam("edge_sam_dyt_debug")
    assert set(dyt_model.state_dict()) == set(reference.state_dict())
    result = dyt_model.load_state_dict(ln_model.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(k.endswith(".alpha") for k in result.missing_keys)


@pytest.mark.parametrize(
    ("name", "cls", "channels_last"),
    [("layernorm", nn.LayerNorm, None), ("layernorm2d", LayerNorm2d, None), ("dyt", DynamicTanh, True),
     ("dyt2d", DynamicTanh, False)],
)
def test_get_norm_layer(name, cls, channels_last):
    layer = get_norm_layer(name)(8)
    assert isinstance(layer, cls)
    if channels_last is not None:
        assert layer.channels_last is channels_last
    assert get_norm_layer(cls) is cls


def test_get_norm_layer_rejects_unknown_names():
    with pytest.raises(ValueError, match="dyt2d"):
        get_norm_layer("batchnorm")


def test_layernorm2d_matches_layernorm_over_channels():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 5)
    ln2d = LayerNorm2d(6)
    reference = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln2d(x), reference, rtol=1e-5, atol=1e-5)
