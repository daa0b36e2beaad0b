"""The inference form computes the same function: every rewrite checked in float64, where rounding vanishes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from edgesam_core.models import build_sam
from edgesam_core.models.inference_form import PixelShuffleUpsample, SeparableUpsample, to_inference_form
from tests.helpers.realistic import realistic_batchnorm


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [(32, 32), (8, 12)])
def test_separable_upsample_is_torch_interpolate(mode, size):
    x = torch.randn(2, 5, *size, dtype=torch.float64)
    expected = F.interpolate(x, scale_factor=2, mode=mode, align_corners=False)
    torch.testing.assert_close(SeparableUpsample(2, mode)(x), expected, atol=1e-12, rtol=0)


def test_pixel_shuffle_upsample_is_the_deconvolution():
    deconv = torch.nn.ConvTranspose2d(16, 8, kernel_size=2, stride=2).double()
    x = torch.randn(3, 16, 7, 9, dtype=torch.float64)
    torch.testing.assert_close(PixelShuffleUpsample(deconv)(x), deconv(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("variant", ["edge_sam_dyt_debug", "edge_sam_debug", "edge_sam_dyt_hq_debug"])
@pytest.mark.parametrize("for_export", [False, True])
def test_inference_form_equals_the_model_in_float64(variant, for_export):
    torch.manual_seed(0)
    model = realistic_batchnorm(build_sam(variant)).double().eval()
    fast = copy.deepcopy(model)
    done = to_inference_form(fast, for_export=for_export)
    assert done["repvgg_blocks"] > 0 and done["neck_folds"] >= 1
    assert (done["deconvs"] > 0) is (not for_export) and (done["upsamplers"] > 0) is for_export
    # The decoder's transformer goes channels-first where its norms are DyT (LayerNorm keeps the token layout).
    assert done["channels_first_transformer"] == ("dyt" in variant)
    # PyTorch only: DyT through sigmoid (ONNX Runtime's Tanh is fast); the neck and decoder of DyT variants.
    assert (done["sigmoid_dyts"] > 0) is (not for_export and "dyt" in variant)
    # PyTorch on CPUs: image tokens token-major out of the channels-first transformer (not HQ: its features
    # take the plain layout); exports keep channels-first.
    assert done.get("token_major_output", 0) == (not for_export and variant == "edge_sam_dyt_debug")
    # LayerNorm2d over the last axis: every one for export (the prompt encoder's mask path has some in DyT
    # variants too), in PyTorch the LayerNorm decoder's upscaling.
    assert (done["last_axis_norms"] > 0) is (for_export or "dyt" not in variant)
    x = torch.randn(1, 3, model.img_size, model.img_size, dtype=torch.float64)
    coords = torch.tensor([[[30.0, 40.0], [90.0, 20.0]]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        outs = []
        for m in (model, fast):
            feats = m.image_encoder(x)
            emb, interm = (feats[0], list(feats[1])) if m.is_hq else (feats, None)
            sparse, dense = m.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            kwargs = {"interm_embeddings": interm} if m.is_hq else {}
            decoded = m.mask_decoder(emb, m.prompt_encoder.get_dense_pe(), sparse, dense,
                                     num_multimask_outputs=4, **kwargs)  # (masks, iou); HQ: (hq, sam, iou)
            outs.append((emb, *decoded))
    for a, b in zip(*outs):
        torch.testing.assert_close(b, a, atol=1e-10 * max(1.0, a.abs().max().item()), rtol=0)


def test_last_axis_layernorm2d_is_layernorm2d_and_exports_as_one_layernormalization(tmp_path):
    """The channels-first LayerNorm as a LayerNorm over the last axis: the same function (float64), traced to
    ONNX as Transpose + LayerNormalization + Transpose instead of the formula's reduction over channels."""
    import onnx

    from edgesam_core.export.onnx_export import torch_onnx_export
    from edgesam_core.models.inference_form import LastAxisLayerNorm2d
    from edgesam_core.models.layers.norm import LayerNorm2d

    torch.manual_seed(0)
    norm = LayerNorm2d(16)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 3 * torch.randn(2, 16, 9, 11, dtype=torch.float64) + 1
    torch.testing.assert_close(LastAxisLayerNorm2d(norm.double())(x), norm(x), atol=1e-12, rtol=0)
    path = tmp_path / "norm.onnx"
    with torch.no_grad():
        torch_onnx_export(LastAxisLayerNorm2d(norm.float()), (x.float(),), path, ["x"], ["y"], {}, 20)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("LayerNormalization") == 1 and "ReduceMean" not in ops


def test_fast_tanh_gelu_is_torchs_tanh_gelu_and_leaves_its_input():
    from edgesam_core.models.inference_form import FastTanhGelu

    x = 4 * torch.randn(2, 8, 9, 7, dtype=torch.float64)
    before = x.clone()
    expected = torch.nn.GELU(approximate="tanh")(x)
    torch.testing.assert_close(FastTanhGelu()(x), expected, atol=1e-12, rtol=0)
    assert torch.equal(x, before)
    x.requires_grad_(True)  # with autograd: the out-of-place formula, and gradients flow
    FastTanhGelu()(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.autograd.grad(torch.nn.GELU(approximate="tanh")(x).sum(), x)[0],
                               atol=1e-10, rtol=0)


@pytest.mark.parametrize("variant", ["edge_sam_dyt_debug", "edge_sam_debug"])
def test_fused_upscaling_is_the_upscaling_within_float32_noise(variant):
    """oneDNN's transposed convolutions with the sigmoid (DyT) and the GELU fused in give the upscaling's
    numbers: against float64, no further off than the unfused float32 modules (and a wrongly folded DyT
    scale would be far off); with autograd the unfused modules run and gradients reach the weights."""
    from edgesam_core.models.inference_form import ChannelsLastUpscaling

    torch.manual_seed(0)
    model = build_sam(variant).eval()
    reference = copy.deepcopy(model.mask_decoder.output_upscaling).double()
    fast = copy.deepcopy(model)
    to_inference_form(fast)
    up = fast.mask_decoder.output_upscaling
    assert isinstance(up, ChannelsLastUpscaling)
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch build has no oneDNN")
    assert up.fused, "oneDNN is there but the upscaling was not fused"
    assert up.sigmoid_norm is ("dyt" in variant)
    x = 3 * torch.randn(2, model.mask_decoder.transformer_dim, 8, 8)
    with torch.no_grad():
        expected = reference(x.double())
        fused = up(x)
        up.fused = False
        plain = up(x)
        up.fused = True
    noise = (plain.double() - expected).abs().max().item()
    assert up.fused, "the fused path fell back to the plain modules"
    assert fused.shape == expected.shape
    assert (fused.double() - expected).abs().max().item() <= 4 * noise + 1e-6
    up(x.requires_grad_(True)).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in up.parameters())
