"""The decoder's per-image work, computed once (``ImageContext``), gives the same masks as recomputing it.

Checked in float64, where only the order of additions differs, for both transformer forms (SAM's and the
channels-first inference form), LayerNorm and DyT decoders, HQ, and prompts grouped over several images.
"""

from __future__ import annotations

import copy

import pytest
import torch

from edgesam_core.models import build_sam
from edgesam_core.models.inference_form import to_inference_form
from edgesam_core.models.layers.dyt import DynamicTanh, SigmoidDynamicTanh
from tests.helpers.perturb import perturb_prompt_path


def _model(variant: str, inference_form: bool):
    torch.manual_seed(0)
    model = perturb_prompt_path(build_sam(variant)).double().eval()
    if inference_form:
        to_inference_form(model)
    return model


def _decode(model, emb, sparse, dense, interm, context=None):
    kwargs = {"interm_embeddings": interm} if model.is_hq else {}
    if context is not None:
        kwargs["context"] = context
    with torch.no_grad():
        return model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense,
                                  num_multimask_outputs=3, **kwargs)


@pytest.mark.parametrize("variant", ["edge_sam_dyt_debug", "edge_sam_debug", "edge_sam_dyt_hq_debug"])
@pytest.mark.parametrize("inference_form", [False, True])
@pytest.mark.parametrize("images", [1, 2])
def test_context_gives_the_same_masks_in_float64(variant, inference_form, images):
    plain = _model(variant, False)
    model = _model(variant, inference_form)
    grid = model.prompt_encoder.get_dense_pe().shape[-1]
    emb = torch.randn(images, model.mask_decoder.transformer_dim, grid, grid, dtype=torch.float64)
    interm = None
    if model.is_hq:
        with torch.no_grad():
            feats = plain.image_encoder(torch.randn(images, 3, model.img_size, model.img_size, dtype=torch.float64))
        emb, interm = feats[0], list(feats[1])
    # Three prompt sets per image, grouped by image, as distillation batches them.
    coords = torch.rand(3 * images, 2, 2, dtype=torch.float64) * model.img_size
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]] * images)
    with torch.no_grad():
        sparse, dense = plain.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        context = model.mask_decoder.image_context(emb, model.prompt_encoder.get_dense_pe(), dense[:1])
    reference = _decode(plain, emb, sparse, dense, interm)
    for got in (_decode(model, emb, sparse, dense, interm), _decode(model, emb, sparse, dense, interm, context)):
        for r, g in zip(reference, got):
            torch.testing.assert_close(g, r, atol=1e-10, rtol=0)
    # The masks really depend on the prompt (a context that ignored it would also "match" a constant).
    assert (reference[0][0] - reference[0][1]).abs().max() > 1e-3


def test_sigmoid_dyt_is_dyt():
    for channels_last, shape in ((True, (4, 7, 16)), (False, (2, 16, 5, 5))):
        dyt = DynamicTanh(16, channels_last).double()
        with torch.no_grad():
            dyt.alpha.fill_(0.7)
            dyt.weight.normal_()
            dyt.bias.normal_()
        x = 3 * torch.randn(*shape, dtype=torch.float64)
        fast = SigmoidDynamicTanh(dyt)
        before = x.clone()
        torch.testing.assert_close(fast(x), dyt(x), atol=1e-12, rtol=0)  # in place on a scratch tensor
        assert torch.equal(x, before)  # ... never on the input
        x.requires_grad_(True)  # with autograd: the out-of-place formula, same values
        torch.testing.assert_close(fast(x), dyt(x), atol=1e-12, rtol=0)
        assert fast.apply(lambda m: None) is fast  # nn.Module.apply is not shadowed


def test_predictor_reuses_the_context_across_clicks():
    import numpy as np

    from edgesam_core.inference.predictor import SamPredictor

    model = _model("edge_sam_dyt_debug", False).float()
    predictor = SamPredictor(copy.deepcopy(model))
    image = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    predictor.set_image(image)
    assert predictor.decoder_context is None
    first = predictor.predict(point_coords=np.array([[30, 40]]), point_labels=np.array([1]), return_logits=True)
    context = predictor.decoder_context
    second = predictor.predict(point_coords=np.array([[80, 20]]), point_labels=np.array([1]), return_logits=True)
    assert context is not None and predictor.decoder_context is context  # computed once per image
    # A mask input changes the dense embedding: that click does not use the context, and still works.
    third = predictor.predict(point_coords=np.array([[80, 20]]), point_labels=np.array([1]),
                              mask_input=first.low_res_logits[:1], return_logits=True)
    assert np.abs(third.low_res_logits - second.low_res_logits).max() > 0
    predictor.set_image(image)
    assert predictor.decoder_context is None  # a new image, a new context


@pytest.mark.parametrize("variant", ["edge_sam_dyt_debug", "edge_sam_debug"])
@pytest.mark.parametrize("points", [1, 4])
@pytest.mark.parametrize("images", [1, 2])
def test_absorbed_projections_give_the_same_masks_in_float64(variant, points, images):
    """Prompt tokens through the image-side weights (few tokens) or image tokens through them (many tokens):
    both orders of the same products, in the channels-first (DyT) and the token-layout (LayerNorm) inference
    transformer, against SAM's transformer."""
    from edgesam_core.models.two_way_absorbed import AbsorbingTwoWayTransformer, absorbs
    from edgesam_core.models.two_way_channels_first import ChannelsFirstTwoWayTransformer

    plain = _model(variant, False)
    model = _model(variant, True)
    grid = model.prompt_encoder.get_dense_pe().shape[-1]
    emb = torch.randn(images, model.mask_decoder.transformer_dim, grid, grid, dtype=torch.float64)
    coords = torch.rand(3 * images, points, 2, dtype=torch.float64) * model.img_size
    labels = torch.randint(0, 2, (3 * images, points))
    with torch.no_grad():
        sparse, dense = plain.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        context = model.mask_decoder.image_context(emb, model.prompt_encoder.get_dense_pe(), dense[:1])
    tokens = model.mask_decoder.num_mask_tokens + 1 + sparse.shape[1]
    transformer = model.mask_decoder.transformer
    kind = ChannelsFirstTwoWayTransformer if "dyt" in variant else AbsorbingTwoWayTransformer
    assert isinstance(transformer, kind)
    assert absorbs(transformer.base.final_attn_token_to_image, tokens) is (points == 1)
    reference = _decode(plain, emb, sparse, dense, None)
    layouts = (True, False) if kind is ChannelsFirstTwoWayTransformer else (False,)
    assert getattr(transformer, "token_major_output", False) is ("dyt" in variant)  # set by to_inference_form
    token_layouts = []
    transformer.register_forward_hook(lambda m, args, out: token_layouts.append(out[1].is_contiguous()))
    for absorb in (True, False):
        transformer.absorb_projections = absorb
        for token_major in layouts:  # the blocks' image tokens token-major or channels-first
            if kind is ChannelsFirstTwoWayTransformer:
                transformer.token_major_output = token_major
            token_layouts.clear()
            for got in (_decode(model, emb, sparse, dense, None), _decode(model, emb, sparse, dense, None, context)):
                for r, g in zip(reference, got):
                    torch.testing.assert_close(g, r, atol=1e-10, rtol=0)
            # (B, hw, C) tokens: contiguous when token-major or in the token layout, else a transposed view.
            expected = kind is AbsorbingTwoWayTransformer or (token_major and absorb and points == 1)
            assert token_layouts == [expected] * 2, (absorb, token_major, token_layouts)
    assert (reference[0][0] - reference[0][1]).abs().max() > 1e-3


def test_scores_on_token_major_tokens_are_the_matmul_within_float32_noise():
    """Rows times token-major image tokens (every block's output in the token-major inference form), which
    inference runs through oneDNN's inner product: as close to float64 as PyTorch's matmul, within a small
    factor; batches and autograd take the matmul."""
    from edgesam_core.models import two_way_absorbed
    from edgesam_core.models.two_way_absorbed import rows_times_image

    torch.manual_seed(0)
    rows = torch.randn(1, 56, 256)
    tokens = 3 * torch.randn(1, 4096, 256)  # token-major; the function takes the (1, C, n) view
    expected = torch.matmul(rows.double(), tokens.double().transpose(1, 2))
    with torch.no_grad():
        fast = rows_times_image(rows, tokens.transpose(1, 2))
        plain = torch.matmul(rows, tokens.transpose(1, 2))
    noise = (plain.double() - expected).abs().max().item()
    assert fast.shape == (1, 56, 4096)
    assert two_way_absorbed._ONEDNN_LINEAR, "oneDNN's inner product failed and fell back to the matmul"
    assert (fast.double() - expected).abs().max().item() <= 4 * noise + 1e-6
    two = rows_times_image(rows.expand(2, -1, -1), tokens.expand(2, -1, -1).transpose(1, 2))
    torch.testing.assert_close(two, plain.expand(2, -1, -1))
    rows.requires_grad_(True)
    rows_times_image(rows, tokens.transpose(1, 2)).sum().backward()
    assert rows.grad is not None


def test_pooled_image_product_is_the_matmul_within_float32_noise():
    """The pooled image product (attention weights times the image tokens) that inference runs through oneDNN's
    inner product: as close to float64 as PyTorch's own matmul, within a small factor, for every
    path (one image, batches, autograd)."""
    from edgesam_core.models import two_way_absorbed
    from edgesam_core.models.two_way_absorbed import rows_times_image_t

    torch.manual_seed(0)
    rows = torch.softmax(torch.randn(1, 56, 4096), dim=-1)
    x = 3 * torch.randn(1, 256, 4096)
    expected = torch.matmul(rows.double(), x.double().transpose(1, 2))
    with torch.no_grad():
        fast = rows_times_image_t(rows, x)
        plain = torch.matmul(rows, x.transpose(1, 2))
    noise = (plain.double() - expected).abs().max().item()
    assert fast.shape == (1, 56, 256)
    assert two_way_absorbed._ONEDNN_LINEAR, "oneDNN's inner product failed and fell back to the matmul"
    assert (fast.double() - expected).abs().max().item() <= 4 * noise + 1e-6
    two = rows_times_image_t(rows.expand(2, -1, -1), x.expand(2, -1, -1))  # batched: the matmul
    torch.testing.assert_close(two, plain.expand(2, -1, -1))
    with torch.no_grad():  # token-major tokens (a transposed view): the inner product on them as stored
        token_major = rows_times_image_t(rows, x.transpose(1, 2).contiguous().transpose(1, 2))
    assert two_way_absorbed._ONEDNN_LINEAR
    assert (token_major.double() - expected).abs().max().item() <= 4 * noise + 1e-6
    rows.requires_grad_(True)
    rows_times_image_t(rows, x).sum().backward()  # with autograd: the matmul, differentiable
    assert rows.grad is not None


def test_token_major_image_update_is_the_matmul_within_float32_noise():
    """The image tokens' update written token-major (the softmax over the prompt tokens, transposed, times the
    mixed values, plus the output bias, plus the block's residual when given), which inference runs as
    PyTorch's softmax and oneDNN's inner product on its transposed weights with the bias fused: as close to
    float64 as PyTorch's own softmax and matmul, within a small factor; batches and autograd take the plain
    path."""
    from edgesam_core.models import two_way_absorbed
    from edgesam_core.models.two_way_absorbed import image_update_token_major

    torch.manual_seed(0)
    scores_t = 4 * torch.randn(1, 8, 7, 4096)
    mixed = 3 * torch.randn(1, 256, 56)
    bias = torch.randn(256)

    def reference(scores, values, b):
        weights = torch.softmax(scores, dim=-2).reshape(scores.shape[0], 56, 4096)
        return torch.matmul(weights.transpose(1, 2), values.transpose(1, 2)) + b

    expected = reference(scores_t.double(), mixed.double(), bias.double())
    with torch.no_grad():
        fast = image_update_token_major(scores_t, mixed, bias)
        plain = reference(scores_t, mixed, bias)
    noise = (plain.double() - expected).abs().max().item()
    assert fast.shape == (1, 4096, 256) and fast.is_contiguous()
    assert two_way_absorbed._ONEDNN_LINEAR, "oneDNN's inner product failed and fell back to the matmul"
    assert (fast.double() - expected).abs().max().item() <= 4 * noise + 1e-6
    two = image_update_token_major(scores_t.expand(2, -1, -1, -1), mixed.expand(2, -1, -1), bias)
    torch.testing.assert_close(two, plain.expand(2, -1, -1))
    residual = 2 * torch.randn(1, 4096, 256)
    with torch.no_grad():
        with_residual = image_update_token_major(scores_t, mixed, bias, residual)
        plain_residual = reference(scores_t, mixed, bias) + residual
    noise = (plain_residual.double() - expected - residual.double()).abs().max().item()
    assert (with_residual.double() - expected - residual.double()).abs().max().item() <= 4 * noise + 1e-6
    two = image_update_token_major(scores_t.expand(2, -1, -1, -1), mixed.expand(2, -1, -1), bias,
                                   residual.expand(2, -1, -1))
    torch.testing.assert_close(two, plain_residual.expand(2, -1, -1))
    mixed.requires_grad_(True)
    image_update_token_major(scores_t, mixed, bias).sum().backward()  # with autograd: the plain path
    assert mixed.grad is not None


def test_norm_with_pe_is_the_norm_and_the_norm_plus_pe():
    """The image tokens' last norm of a block, with the positional encoding added for the next block's scores:
    a sigmoid DyT writes both from one sigmoid pass (overwriting its input, which the caller hands over), as
    close to float64 as the module plus an addition, within a small factor; a LayerNorm runs as itself."""
    from edgesam_core.models.layers.dyt import DynamicTanh, SigmoidDynamicTanh
    from edgesam_core.models.transformer import ImageContext
    from edgesam_core.models.two_way_absorbed import norm_with_pe

    torch.manual_seed(0)
    dyt = DynamicTanh(256, channels_last=True, alpha_init_value=0.7)
    with torch.no_grad():
        dyt.weight.normal_()
        dyt.bias.normal_()
    x, pe = 3 * torch.randn(1, 4096, 256), torch.randn(1, 256, 4096)  # pe: the (1, C, n) view of the caller
    context = ImageContext(x, pe.transpose(1, 2), x, x, x)
    expected = dyt.double()(x.double())
    expected_pe = expected + pe.double().transpose(1, 2)
    dyt.float()
    sigmoid = SigmoidDynamicTanh(dyt)
    with torch.no_grad():
        plain = sigmoid(x)
        normed, with_pe = norm_with_pe(sigmoid, x.clone(), context, pe)
        again, _ = norm_with_pe(sigmoid, x.clone(), context, pe)  # the per-image pe + bias is reused
    noise = (plain.double() - expected).abs().max().item()
    assert (normed.double() - expected).abs().max().item() <= 4 * noise + 1e-6
    assert (with_pe.double() - expected_pe).abs().max().item() <= 4 * noise + 1e-6
    assert torch.equal(normed, again)
    layer_norm = torch.nn.LayerNorm(256)
    with torch.no_grad():
        y, y_pe = norm_with_pe(layer_norm, x.clone(), context, pe)
        torch.testing.assert_close(y, layer_norm(x))
        torch.testing.assert_close(y_pe, layer_norm(x) + pe.transpose(1, 2))
    x.requires_grad_(True)  # with autograd: the module and an addition, differentiable
    normed, with_pe = norm_with_pe(sigmoid, x * 1.0, context, pe)
    (normed.sum() + with_pe.sum()).backward()
    assert x.grad is not None


def test_prompt_token_mlp_is_the_block_mlp_within_float32_noise():
    """A block's ReLU MLP on the prompt tokens, which inference runs as two oneDNN inner products (ReLU fused):
    as close to float64 as the module itself, within a small factor; other activations, batches and autograd
    run the module."""
    from edgesam_core.models import two_way_absorbed
    from edgesam_core.models.layers.common import MLPBlock
    from edgesam_core.models.two_way_absorbed import token_mlp

    torch.manual_seed(0)
    mlp = MLPBlock(256, 2048, torch.nn.ReLU)
    x = 2 * torch.randn(1, 7, 256)
    expected = mlp.double()(x.double())
    mlp.float()
    with torch.no_grad():
        fast, plain = token_mlp(mlp, x), mlp(x)
    noise = (plain.double() - expected).abs().max().item()
    assert two_way_absorbed._ONEDNN_LINEAR, "oneDNN's inner product failed and fell back to the module"
    assert fast.shape == (1, 7, 256)
    assert (fast.double() - expected).abs().max().item() <= 4 * noise + 1e-6
    assert (plain - mlp.lin2(mlp.lin1(x))).abs().max() > 1e-2  # the ReLU matters on this input
    with torch.no_grad():
        torch.testing.assert_close(token_mlp(mlp, x.expand(2, -1, -1)), plain.expand(2, -1, -1))
        gelu = MLPBlock(256, 2048)
        torch.testing.assert_close(token_mlp(gelu, x), gelu(x))

        class Adapted(torch.nn.Linear):  # a linear with more than its weight (an adapter): runs as the module
            def forward(self, inputs):
                return super().forward(inputs) + 1.0

        adapted = MLPBlock(256, 2048, torch.nn.ReLU)
        adapted.lin2 = Adapted(2048, 256)
        torch.testing.assert_close(token_mlp(adapted, x), adapted(x))
    assert two_way_absorbed._ONEDNN_LINEAR
    x.requires_grad_(True)
    token_mlp(mlp, x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("variant", ["edge_sam_dyt_debug", "edge_sam_debug"])
def test_a_failing_onednn_op_falls_back_to_pytorchs_modules_for_good(variant, monkeypatch):
    """If PyTorch's private inner-product op ever fails (renamed, new signature), the float32 inference form
    switches its oneDNN calls off and gives the same masks through PyTorch's own modules."""
    import types

    from edgesam_core.models import two_way_absorbed

    torch.manual_seed(0)
    model = perturb_prompt_path(build_sam(variant)).eval()
    to_inference_form(model)
    grid = model.prompt_encoder.get_dense_pe().shape[-1]
    emb = torch.randn(1, model.mask_decoder.transformer_dim, grid, grid)
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(points=(torch.tensor([[[30.0, 40.0]]]), torch.ones(1, 1)), boxes=None,
                                             masks=None)
    monkeypatch.setattr(two_way_absorbed, "_ONEDNN_LINEAR", True)  # restored after the test
    fast = _decode(model, emb, sparse, dense, None)
    assert two_way_absorbed._ONEDNN_LINEAR
    calls = []

    def changed_op(*args):
        calls.append(len(args))
        raise TypeError("_linear_pointwise() takes 5 positional arguments but 6 were given")

    upscaling_op = torch.ops.mkldnn._convolution_transpose_pointwise  # the other private op, kept working
    monkeypatch.setattr(torch.ops, "mkldnn", types.SimpleNamespace(_linear_pointwise=changed_op,
                                                                   _convolution_transpose_pointwise=upscaling_op))
    fallback = _decode(model, emb, sparse, dense, None)
    assert calls == [6] and not two_way_absorbed._ONEDNN_LINEAR  # tried once, then off
    again = _decode(model, emb, sparse, dense, None)
    assert calls == [6]
    for f, b, a in zip(fast, fallback, again):
        torch.testing.assert_close(b, f, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a, b, atol=0, rtol=0)
