"""SAM's mask postprocessing by fixed-weight phases and by mask boundaries: PyTorch's pixels, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgesam_core.models import mask_resize
from edgesam_core.models.mask_resize import mask_logits_positive, positive_after_resize, resize_mask_logits


def _upstream(masks, img_size, input_size, original_size):
    """segment-anything's order: the whole square, the crop, the original size (a resize to the same size is
    skipped: it is the identity, except that it turns infinities into NaNs)."""
    masks = F.interpolate(masks, (img_size, img_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    if tuple(masks.shape[-2:]) == tuple(original_size):
        return masks
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


def _hostile(shape, seed):
    """Logits over many magnitudes with exact zeros, denormals, cancelling pairs, infinities and NaNs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * torch.exp(4 * torch.randn(shape, generator=gen))
    flat = x.view(-1)
    flat[::37] = 0.0
    flat[5::101] = 1e-40
    flat[7::103] = -flat[8::103][: flat[7::103].numel()]
    flat[11::997] = float("inf")
    flat[13::991] = float("-inf")
    flat[17::983] = float("nan")
    return x


def _blobs(low, seed, noise=0.0):
    """Smooth logits whose zero set is the outline of a few discs (a trained model's kind of mask)."""
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(float(low)), torch.arange(float(low)), indexing="ij")
    masks = []
    for _ in range(3):
        cy, cx, r = (torch.rand(3, generator=gen) * torch.tensor([low, low, low / 3])).tolist()
        masks.append(r + 2 - ((y - cy) ** 2 + (x - cx) ** 2).sqrt())
    out = torch.stack(masks)[None] * 0.3
    return out + noise * torch.randn(out.shape, generator=gen)


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_this_pytorch_runs_the_reproduced_kernel():
    """On the pinned PyTorch both shortcuts apply; a release that changes its kernel fails here (the code then
    falls back to ``F.interpolate``, slower but right)."""
    assert mask_resize.separable_upsample_reproduced()
    assert mask_resize.kernel_reproduced()
    assert mask_resize.axis_table(768, 3024) is not None and mask_resize.axis_table(1024, 4032) is not None


@pytest.fixture
def two_threads():
    """PyTorch's generic kernel for three masks needs more than one thread (pytest workers may have one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("input_size", [(768, 1024), (1024, 683), (1024, 1024), (2, 1024), (1000, 997)])
def test_phase_upsampling_equals_the_kernel_bit_for_bit(channels, input_size, monkeypatch, two_threads):
    """The model-frame upscaling by fixed-weight phases: every value as ``F.interpolate`` computes it, on
    hostile values, for every crop shape; and it is the path taken."""
    taken = []
    real = mask_resize.upsample_logits
    monkeypatch.setattr(mask_resize, "upsample_logits", lambda *a: taken.append(1) or real(*a))
    masks = _hostile((2, channels, 256, 256), seed=channels)
    _same(resize_mask_logits(masks, 1024, input_size, input_size), _upstream(masks, 1024, input_size, input_size))
    assert taken


@pytest.mark.parametrize("input_size", [(300, 300), (225, 300), (300, 151), (2, 300)])
def test_a_factor_of_three_resizes_only_the_crop_with_the_same_bits(input_size, two_threads):
    """Not a power of two: ``F.interpolate`` on the rows and columns the crop keeps, the same numbers."""
    masks = _hostile((1, 4, 100, 100), seed=9)
    _same(resize_mask_logits(masks, 300, input_size, input_size), _upstream(masks, 300, input_size, input_size))


def test_channels_last_masks_keep_pytorchs_own_kernel(monkeypatch, two_threads):
    """Four masks laid out channels-last (as the PyTorch decoder returns them) take PyTorch's vectorised kernel,
    whose rounding differs: there upstream's own call runs, for logits and for binary masks."""
    monkeypatch.setattr(mask_resize, "upsample_logits", lambda *a: pytest.fail("the phases ran"))
    masks = _hostile((1, 4, 256, 256), seed=7).contiguous(memory_format=torch.channels_last)
    for original in ((768, 1024), (3024, 4032)):
        expected = _upstream(masks, 1024, (768, 1024), original)
        _same(resize_mask_logits(masks, 1024, (768, 1024), original), expected)
        assert torch.equal(mask_logits_positive(masks, 1024, (768, 1024), original), expected > 0)


def test_one_thread_with_three_masks_keeps_pytorchs_own_kernel(monkeypatch):
    """PyTorch resizes three channels on one thread with a vectorised kernel of other rounding: there the
    plain call runs, so the numbers stay PyTorch's."""
    monkeypatch.setattr(mask_resize, "upsample_logits", lambda *a: pytest.fail("the phases ran"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        masks = _hostile((1, 3, 256, 256), seed=5)
        _same(resize_mask_logits(masks, 1024, (768, 1024), (768, 1024)), _upstream(masks, 1024, (768, 1024),
                                                                                  (768, 1024)))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("original_size", [(96, 128), (430, 575), (1100, 1466), (50, 64), (200, 260)])
@pytest.mark.parametrize("kind", ["hostile", "blobs", "noisy blobs"])
def test_binary_masks_are_the_thresholded_logits(original_size, kind, two_threads):
    """``mask_logits_positive`` against upstream's logits thresholded at 0: the same pixels for photos of the
    model frame's size, much larger (the boundary shortcut), a bit larger and smaller (plain), on hostile,
    smooth and noisy logits."""
    low, img_size, input_size = 64, 256, (96, 128)
    masks = {"hostile": _hostile((1, 3, low, low), seed=1), "blobs": _blobs(low, seed=2),
             "noisy blobs": _blobs(low, seed=3, noise=0.2)}[kind]
    expected = _upstream(masks, img_size, input_size, original_size) > 0
    got = mask_logits_positive(masks, img_size, input_size, original_size)
    assert got.dtype == torch.bool and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_the_boundary_shortcut_computes_only_boundary_cells_and_declines_noise():
    """Smooth masks: the shortcut answers, equal to the thresholded resize, having computed the values of a few
    per cent of the pixels; sign changes everywhere: it declines (None), and the caller resizes."""
    x = F.interpolate(_blobs(64, seed=4), (192, 256), mode="bilinear", align_corners=False)[0].contiguous()
    table_y, table_x = mask_resize.axis_table(192, 900), mask_resize.axis_table(256, 1200)
    computed = []
    real = mask_resize._blend32
    mask_resize._blend32 = lambda a, wa, b, wb: computed.append(a.numel()) or real(a, wa, b, wb)
    try:
        got = positive_after_resize(x, table_y, table_x)
    finally:
        mask_resize._blend32 = real
    assert got is not None
    assert torch.equal(got, F.interpolate(x[None], (900, 1200), mode="bilinear", align_corners=False)[0] > 0)
    assert 0 < computed[-1] < 0.05 * got.numel()
    checkerboard = torch.where((torch.arange(192)[:, None] + torch.arange(256)) % 2 == 0, 1.0, -1.0)
    assert positive_after_resize(checkerboard[None], table_y, table_x) is None


def test_sam_binary_postprocessing_is_the_thresholded_logits(two_threads):
    """``Sam.postprocess_binary_masks`` is ``postprocess_masks(...) > mask_threshold`` (also at another
    threshold, where it thresholds the logits itself)."""
    from edgesam_core.models import build_sam

    model = build_sam("edge_sam_dyt", checkpoint=None)
    masks = _blobs(256, seed=6, noise=0.05)
    for original in ((768, 1024), (1536, 2048)):
        expected = model.postprocess_masks(masks, (768, 1024), original) > 0
        assert torch.equal(model.postprocess_binary_masks(masks, (768, 1024), original), expected)
    model.mask_threshold = 0.25
    expected = model.postprocess_masks(masks, (768, 1024), (1536, 2048)) > 0.25
    assert torch.equal(model.postprocess_binary_masks(masks, (768, 1024), (1536, 2048)), expected)
