"""The RepViT encoder against a functional re-implementation written from the upstream spec (§1.4, §10).

The reference below reads nothing but the state dict: RepViT-M0.9's block table (widths 48/96/192/384,
stride 2 at features 4, 8, 24, SE on features 1, 5, 9, 11, ..., 21, 25, SE width 16/24/48/96), both RepVGGDW
layouts (K: ``bn(conv + conv1 + x)`` with a plain biased ``conv1``; E: ``conv + conv1 + x`` with a
Conv2d_BN ``conv1``), the fuse neck ``conv1x1(stage2) + up2(conv1x1(stage3))`` and the neck
``conv1x1 -> norm -> conv3x3 -> norm``. Full-size weights, all randomised (BatchNorm statistics included),
on a small input so the test stays fast: the encoder is fully convolutional.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgesam_core.models import build_sam, resolve_variant
from edgesam_core.models.build import _build_sam

# features index -> (channels, SE, stride), from the spec's table (§1.4.1), not from the code under test.
_WIDTH = {**{i: 48 for i in range(1, 4)}, **{i: 96 for i in range(4, 8)}, **{i: 192 for i in range(8, 24)},
          **{i: 384 for i in range(24, 27)}}
_SE = {1, 5, 9, 11, 13, 15, 17, 19, 21, 25}
_STRIDE2 = {4, 8, 24}
_STAGE_OUT = {3: "stage0", 7: "stage1", 23: "stage2", 26: "stage3"}
_SE_WIDTH = {48: 16, 96: 24, 192: 48, 384: 96}

Sd = dict[str, torch.Tensor]


def _bn(x: torch.Tensor, sd: Sd, p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        training=False, eps=1e-5)


def _conv_bn(x: torch.Tensor, sd: Sd, p: str, stride: int = 1, groups: int = 1) -> torch.Tensor:
    w = sd[p + "c.weight"]
    return _bn(F.conv2d(x, w, None, stride, w.shape[-1] // 2, 1, groups), sd, p + "bn.")


def _se(x: torch.Tensor, sd: Sd, p: str) -> torch.Tensor:
    assert sd[p + "fc1.weight"].shape[0] == _SE_WIDTH[x.shape[1]]
    s = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), sd[p + "fc1.weight"], sd[p + "fc1.bias"]))
    return x * torch.sigmoid(F.conv2d(s, sd[p + "fc2.weight"], sd[p + "fc2.bias"]))


def _repvggdw(x: torch.Tensor, sd: Sd, p: str, layout: str) -> torch.Tensor:
    c = x.shape[1]
    y = _conv_bn(x, sd, p + "conv.", groups=c)
    if layout == "K":
        return _bn(y + F.conv2d(x, sd[p + "conv1.weight"], sd[p + "conv1.bias"], groups=c) + x, sd, p + "bn.")
    return y + _conv_bn(x, sd, p + "conv1.", groups=c) + x


def _dyt(x: torch.Tensor, sd: Sd, p: str) -> torch.Tensor:
    assert sd[p + "alpha"].shape == (1,)
    return sd[p + "weight"][:, None, None] * torch.tanh(sd[p + "alpha"] * x) + sd[p + "bias"][:, None, None]


def _ln2d(x: torch.Tensor, sd: Sd, p: str) -> torch.Tensor:
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).mean(1, keepdim=True)
    return sd[p + "weight"][:, None, None] * (x - mu) / torch.sqrt(var + 1e-6) + sd[p + "bias"][:, None, None]


def reference_repvit(sd: Sd, x: torch.Tensor, layout: str, gelu: str, dyt: bool,
                     upsample: str = "bicubic") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Embedding and named intermediate features of RepViT-M0.9 + fuse neck, from a state dict."""
    def act(t: torch.Tensor) -> torch.Tensor:
        return F.gelu(t, approximate=gelu)

    feats = {}
    x = _conv_bn(act(_conv_bn(x, sd, "features.0.0.", stride=2)), sd, "features.0.2.", stride=2)
    feats["stem"] = x
    for i in range(1, 27):
        p = f"features.{i}."
        if i in _STRIDE2:
            y = _conv_bn(x, sd, p + "token_mixer.0.", stride=2, groups=x.shape[1])
            y = _se(y, sd, p + "token_mixer.1.") if i in _SE else y
            y = _conv_bn(y, sd, p + "token_mixer.2.")
        else:
            y = _repvggdw(x, sd, p + "token_mixer.0.", layout)
            y = _se(y, sd, p + "token_mixer.1.") if i in _SE else y
        assert y.shape[1] == _WIDTH[i]
        x = y + _conv_bn(act(_conv_bn(y, sd, p + "channel_mixer.m.0.")), sd, p + "channel_mixer.m.2.")
        if i in _STAGE_OUT:
            feats[_STAGE_OUT[i]] = x
    s3 = F.conv2d(feats["stage3"], sd["fuse_stage3.op_list.0.weight"])  # conv first, then the x2 upsampling
    s3 = F.interpolate(s3, scale_factor=2, mode=upsample, align_corners=False)
    x = F.conv2d(feats["stage2"], sd["fuse_stage2.weight"]) + s3
    norm = _dyt if dyt else _ln2d
    x = norm(F.conv2d(x, sd["neck.0.weight"]), sd, "neck.1.")
    x = norm(F.conv2d(x, sd["neck.2.weight"], padding=1), sd, "neck.3.")
    return x, feats


def _randomise(module: nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("alpha"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.3)
            else:
                fan = max(1, t[0].numel()) if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=gen) / fan**0.5 * (0.3 if t.ndim == 1 else 1.0)
                        + (1.0 if t.ndim == 1 and name.endswith(("bn.weight", "neck.1.weight", "neck.3.weight"))
                           else 0.0))


@pytest.mark.parametrize(
    ("name", "layout", "gelu", "dyt", "upsample"),
    [
        ("edge_sam_dyt", "K", "tanh", True, "bicubic"),
        ("edge_sam_dyt_hq", "K", "tanh", True, "bilinear"),
        ("edge_sam", "E", "none", False, "bicubic"),
    ],
)
def test_full_size_repvit_matches_the_spec_reimplementation(name, layout, gelu, dyt, upsample):
    torch.manual_seed(0)
    model = build_sam(name, upsample_mode=upsample)
    encoder = model.image_encoder
    _randomise(encoder)
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        out = encoder(x)
        ref, feats = reference_repvit(encoder.state_dict(), x, layout, gelu, dyt, upsample)
    emb, low = out if isinstance(out, tuple) else (out, None)
    assert emb.shape == (1, 256, 8, 10)
    # The same float32 ops in the same order: any structural slip (a missing SE, the upsampling before the
    # conv, exact instead of tanh GELU) moves the embedding by far more than 1e-4.
    torch.testing.assert_close(emb, ref, rtol=1e-4, atol=1e-4)
    if low is not None:
        assert [tuple(f.shape[1:]) for f in low] == [(48, 32, 40), (48, 32, 40), (96, 16, 20)]
        for got, key in zip(low, ("stem", "stage0", "stage1")):
            torch.testing.assert_close(got, feats[key], rtol=1e-4, atol=1e-4)


def test_gelu_flavours_sit_where_upstream_puts_them():
    # DyT models: tanh GELU in the encoder and the decoder (HQ branches too); the prompt encoder's mask
    # downscaler keeps exact GELU and LayerNorm2d; the transformer MLPs and SE gates use ReLU (no GELU).
    expected = {
        "edge_sam": ("none", "none", 27, 2),
        "edge_sam_dyt": ("tanh", "tanh", 27, 2),
        "edge_sam_dyt_frozen_mask": ("tanh", "none", 27, 2),
        "edge_sam_dyt_hq": ("tanh", "tanh", 27, 7),
    }
    for name, (enc, dec, n_enc, n_dec) in expected.items():
        with torch.device("meta"):
            model = _build_sam(resolve_variant(name))
        gelus = {n: m.approximate for n, m in model.named_modules() if isinstance(m, nn.GELU)}
        by_part = {part: [a for n, a in gelus.items() if n.startswith(part + ".")]
                   for part in ("image_encoder", "prompt_encoder", "mask_decoder")}
        assert by_part["image_encoder"] == [enc] * n_enc, name
        assert by_part["mask_decoder"] == [dec] * n_dec, name
        assert by_part["prompt_encoder"] == ["none", "none"], name
        assert not any(".transformer." in n for n in gelus), name
        relus = [n for n, m in model.mask_decoder.transformer.named_modules() if isinstance(m, nn.ReLU)]
        assert len(relus) == 2, name  # one per two-way block MLP


def test_norm_epsilons_follow_sam():
    # Token LayerNorms (LayerNorm variants' transformer) use torch's 1e-5; every LayerNorm2d (neck, output
    # upscaling, prompt-encoder mask downscaler) uses SAM's 1e-6.
    from edgesam_core.models.layers.norm import LayerNorm2d

    for name in ("edge_sam", "edge_sam_dyt_frozen_mask", "edge_sam_dyt", "vit_b"):
        with torch.device("meta"):
            model = _build_sam(resolve_variant(name))
        token = [m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)]
        chan = [m.eps for m in model.modules() if isinstance(m, LayerNorm2d)]
        assert chan and set(chan) == {1e-6}, name
        if name != "edge_sam_dyt":
            # ViT blocks use 1e-6 LayerNorms (SAM's image encoder); the decoder's token norms use 1e-5.
            dec = [m.eps for m in model.mask_decoder.modules() if isinstance(m, nn.LayerNorm)]
            assert len(dec) == 9 and set(dec) == {1e-5}, name
        else:
            assert not token, name  # every token norm is DyT
