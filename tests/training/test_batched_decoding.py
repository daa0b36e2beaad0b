"""A training batch decodes in one decoder call per network (upstream's MaskDecoderBatch): images with different
prompt counts share the call through ``image_index``, and the result equals one call per image."""

from __future__ import annotations

import functools

import pytest
import torch

from edgesam_core.config import load_config
from tests.training.conftest import HQ_STUDENT, HQ_TEACHER, STUDENT, TEACHER

COUNTS = (2, 0, 3)  # prompts per image; the empty image must not shift the others


def _prompts(img_size: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    boxes, points = [], []
    for n in COUNTS:
        xy = torch.rand((n, 2), generator=g, dtype=torch.float64) * img_size * 0.5
        boxes.append(torch.cat([xy, xy + img_size * 0.4], dim=1))
        points.append(torch.rand((n, 1, 2), generator=g, dtype=torch.float64) * img_size)
    return boxes, points


@pytest.mark.parametrize("variant", [STUDENT, HQ_STUDENT, HQ_TEACHER])
def test_one_call_with_image_index_equals_one_call_per_image(variant):
    from edgesam_core.models import build_sam
    from edgesam_core.training.teacher import run_decoder, split_features

    torch.manual_seed(3)
    sam = build_sam(variant).double().eval()
    images = torch.randn(len(COUNTS), 3, sam.img_size, sam.img_size, dtype=torch.float64)
    with torch.no_grad():
        emb, interm = split_features(sam.image_encoder(images))
        boxes, points = _prompts(sam.img_size, seed=4)
        owners = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
        coords = torch.cat(points)
        labels = torch.ones(coords.shape[:2], dtype=torch.float64)
        one = run_decoder(sam, emb, (coords, labels), torch.cat(boxes), 3, interm, owners)
        per_image = []
        for i, n in enumerate(COUNTS):
            if n:
                feats = None if interm is None else [f[i : i + 1] for f in interm]
                per_image.append(run_decoder(sam, emb[i : i + 1], (points[i], labels[:n]), boxes[i], 3, feats))
    for k, out in enumerate(one):
        expected = torch.cat([p[k] for p in per_image])
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-9)
    # Without the index the rows would pair with the wrong images: the test can tell them apart.
    assert not torch.allclose(one[0][:2], one[0][2:4])


def test_a_prompt_per_image_mismatch_is_one_input_error():
    from edgesam_core.errors import InputError
    from edgesam_core.models.mask_decoder import expand_to_prompts

    with pytest.raises(InputError, match="one image row per prompt set"):
        expand_to_prompts(torch.zeros(2, 4), 5, torch.tensor([0, 1, 1]))


@pytest.mark.parametrize("kind", ["box", "point"])
def test_batch_loss_is_the_prompt_weighted_mean_of_per_image_losses(kind, assets):
    """The batched step's loss equals the per-image losses weighted by prompt share, with two decoder
    iterations (the second adds clicks sampled from the first's disagreement, from the same RNG stream)."""
    from edgesam_core.models import build_sam
    from edgesam_core.training.steps import Batch, decoder_losses
    from edgesam_core.training.teacher import Teacher

    cfg = load_config("3", overrides=[f"prompts.types=[{kind}]", "prompts.decode_iters=2",
                                      "prompts.iter_on_box=true", "prompts.min_error_pixels=1"])
    teacher = Teacher(TEACHER, assets["teacher"], torch.device("cpu"), "online")
    torch.manual_seed(0)
    student = build_sam(STUDENT).eval()
    size = student.img_size
    images = torch.randn(len(COUNTS), 3, size, size)
    sizes = torch.tensor([[size, size], [size // 2, size], [size, 3 * size // 4]])
    boxes, points = _prompts(size, seed=9)
    boxes, points = [b.float() for b in boxes], [p.float() for p in points]
    keys = [f"img{i}" for i in range(len(COUNTS))]
    fn = functools.partial(decoder_losses, teacher=teacher, cfg=cfg)
    ctx = {"autocast": torch.autocast("cpu", enabled=False), "step": 0}

    with torch.no_grad():
        torch.manual_seed(21)
        whole = fn(student, Batch(images, sizes, boxes, points, keys), ctx)
        torch.manual_seed(21)
        parts = [(n, fn(student, Batch(images[i : i + 1], sizes[i : i + 1], [boxes[i]], [points[i]], [keys[i]]), ctx))
                 for i, n in enumerate(COUNTS) if n]
    for name in ("loss", "bce", "dice"):
        expected = sum(n * out[name] for n, out in parts) / sum(COUNTS)
        torch.testing.assert_close(whole[name], expected, rtol=1e-5, atol=1e-6)
    assert float(whole["loss"]) > 0
