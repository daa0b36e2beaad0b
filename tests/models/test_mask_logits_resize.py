"""SAM's mask postprocessing, computed only where the crop keeps it: bit for bit the full computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgesam_core.models.sam import resize_mask_logits


def _reference(masks, img_size, input_size, original_size):
    """Upstream's order: the whole square, then the crop, then the original size."""
    if masks.shape[-1] != img_size:
        masks = F.interpolate(masks, (img_size, img_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    if tuple(masks.shape[-2:]) == tuple(original_size):
        return masks
    return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("img_size,low", [(64, 16), (48, 16), (64, 64), (60, 16)])
def test_every_crop_equals_the_full_resize(img_size, low):
    """Every crop height and width (factors 4 and 3, already full size, and a non-integer ratio)."""
    torch.manual_seed(0)
    masks = torch.randn(2, 3, low, low) * 4
    for h in range(1, img_size + 1):
        for w in (img_size, max(1, (h * 3) // 4), img_size - h + 1):
            got = resize_mask_logits(masks, img_size, (h, w), (h, w))
            assert torch.equal(got, _reference(masks, img_size, (h, w), (h, w))), (h, w)


@pytest.mark.parametrize("input_size,original_size", [((768, 1024), (768, 1024)), ((768, 1024), (1500, 2000)),
                                                      ((1024, 683), (600, 400)), ((3, 1024), (7, 2731))])
def test_full_size_model_frames(input_size, original_size):
    """SAM's 256x256 logits to 1024x1024 crops, resized up, down and to a sliver."""
    torch.manual_seed(1)
    masks = torch.randn(1, 4, 256, 256) * 8
    got = resize_mask_logits(masks, 1024, input_size, original_size)
    assert got.shape == (1, 4, *original_size)
    assert torch.equal(got, _reference(masks, 1024, input_size, original_size))
