"""Forward behaviour of the built models (debug sizes unless marked), prompt encoding and decoder slicing."""

from __future__ import annotations

import pytest
import torch

from edgesam_core.errors import InputError
from edgesam_core.models import Sam, build_sam, list_variants, sam_model_registry

DEBUG_VARIANTS = [n for n in list_variants() if n.endswith("_debug")]


def _prompt(model: Sam, coords, labels, boxes=None):
    pts = None
    if coords is not None:
        pts = (torch.tensor(coords, dtype=torch.float32), torch.tensor(labels))
    return model.prompt_encoder(points=pts, boxes=boxes, masks=None)


@pytest.mark.parametrize("name", DEBUG_VARIANTS)
def test_debug_variant_end_to_end_shapes(name):
    torch.manual_seed(0)
    model = build_sam(name)
    assert isinstance(model, Sam) and not model.training
    assert model.img_size == 128 and model.variant == name
    assert model.is_hq == name.endswith("hq_debug")
    x = model.preprocess(torch.rand(2, 3, 96, 128) * 255)
    assert x.shape == (2, 3, 128, 128)
    with torch.no_grad():
        features = model.encode_image(x)
        emb, interm = features if model.is_hq else (features, None)
        assert emb.shape == (2, 32, 8, 8)
        sparse, dense = _prompt(model, [[[10.0, 20.0], [60.0, 40.0]]] * 3, [[1, 0]] * 3)
        assert sparse.shape == (3, 3, 32) and dense.shape == (3, 32, 8, 8)
        single = [f[:1] for f in interm] if interm else None
        out = model.mask_decoder(emb[:1], model.prompt_encoder.get_dense_pe(), sparse, dense, 3, single)
    if model.is_hq:
        hq, sam_mask, iou = out
        assert hq.shape == sam_mask.shape == (3, 1, 32, 32) and iou.shape == (3, 1)
    else:
        masks, iou = out
        assert masks.shape == (3, 3, 32, 32) and iou.shape == (3, 3)
    assert all(torch.isfinite(t).all() for t in out)


def test_hq_encoder_features_are_stem_stage0_stage1():
    model = build_sam("edge_sam_dyt_hq_debug")
    with torch.no_grad():
        emb, feats = model.encode_image(torch.randn(1, 3, 128, 128))
    # stride 4, 4, 8 like (48x256x256, 48x256x256, 96x128x128) at full size
    assert [tuple(f.shape) for f in feats] == [(1, 8, 32, 32), (1, 8, 32, 32), (1, 16, 16, 16)]


def test_full_size_edge_sam_dyt_forward():
    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt")
    with torch.no_grad():
        emb = model.encode_image(model.preprocess(torch.rand(1, 3, 768, 1024) * 255))
        sparse, dense = _prompt(model, [[[500.0, 400.0]]], [[1]])
        masks, iou = model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, 4)
    assert emb.shape == (1, 256, 64, 64)
    assert masks.shape == (1, 4, 256, 256) and iou.shape == (1, 4)
    full = model.postprocess_masks(masks, (768, 1024), (600, 800))
    assert full.shape == (1, 4, 600, 800)


@pytest.mark.parametrize(("n", "tokens"), [(1, [0]), (3, [1, 2, 3]), (4, [0, 1, 2, 3])])
def test_num_multimask_outputs_slices_tokens(n, tokens):
    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_debug")
    emb = torch.randn(1, 32, 8, 8)
    sparse, dense = _prompt(model, [[[30.0, 40.0]]], [[1]])
    pe = model.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        all_masks, all_iou = model.mask_decoder.predict_masks(emb, pe, sparse, dense)
        masks, iou = model.mask_decoder(emb, pe, sparse, dense, num_multimask_outputs=n)
    assert all_masks.shape[1] == 4 and all_iou.shape[1] == 4
    torch.testing.assert_close(masks, all_masks[:, tokens], rtol=0, atol=0)
    torch.testing.assert_close(iou, all_iou[:, tokens], rtol=0, atol=0)


def test_num_multimask_outputs_rejects_other_values():
    model = build_sam("edge_sam_dyt_debug")
    sparse, dense = _prompt(model, [[[30.0, 40.0]]], [[1]])
    with pytest.raises(InputError, match="1, 3 or 4"):
        model.mask_decoder(torch.randn(1, 32, 8, 8), model.prompt_encoder.get_dense_pe(), sparse, dense, 2)


def test_hq_predict_masks_returns_four_sam_tokens_and_the_hq_token():
    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_hq_debug")
    with torch.no_grad():
        emb, feats = model.encode_image(torch.randn(1, 3, 128, 128))
        sparse, dense = _prompt(model, [[[30.0, 40.0]]], [[1]])
        pe = model.prompt_encoder.get_dense_pe()
        masks, iou = model.mask_decoder.predict_masks(emb, pe, sparse, dense, feats)
        hq, sam_mask, iou0 = model.mask_decoder(emb, pe, sparse, dense, 3, feats)
    assert masks.shape == (1, 5, 32, 32) and iou.shape == (1, 4)
    torch.testing.assert_close(hq, masks[:, 4:5], rtol=0, atol=0)
    torch.testing.assert_close(sam_mask, masks[:, 0:1], rtol=0, atol=0)
    torch.testing.assert_close(iou0, iou[:, 0:1], rtol=0, atol=0)


def test_vit_hq_multimask_picks_best_of_tokens_1_to_3():
    torch.manual_seed(0)
    model = build_sam("vit_h_hq_debug")
    with torch.no_grad():
        emb, feats = model.encode_image(torch.randn(1, 3, 128, 128))
        assert [tuple(f.shape) for f in feats] == [(1, 8, 8, 32), (1, 8, 8, 32)]
        sparse, dense = _prompt(model, [[[30.0, 40.0]], [[90.0, 10.0]]], [[1], [1]])
        pe = model.prompt_encoder.get_dense_pe()
        masks, iou = model.mask_decoder.predict_masks(emb, pe, sparse, dense, feats)
        _, sam_mask, best_iou = model.mask_decoder(emb, pe, sparse, dense, 3, feats)
    best = iou[:, 1:4].argmax(dim=1) + 1
    torch.testing.assert_close(sam_mask[:, 0], masks[torch.arange(2), best], rtol=0, atol=0)
    torch.testing.assert_close(best_iou[:, 0], iou[torch.arange(2), best], rtol=0, atol=0)


def test_padding_point_only_without_box():
    model = build_sam("edge_sam_dyt_debug")
    pe = model.prompt_encoder
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    labels = torch.tensor([[1, 0]])
    box = torch.tensor([[5.0, 6.0, 70.0, 80.0]])
    with torch.no_grad():
        points_only, _ = pe(points=(coords, labels), boxes=None, masks=None)
        with_box, _ = pe(points=(coords, labels), boxes=box, masks=None)
        box_only, _ = pe(points=None, boxes=box, masks=None)
    assert points_only.shape[1] == 3 and with_box.shape[1] == 4 and box_only.shape[1] == 2
    # the padding token is exactly the not-a-point embedding (its positional encoding is zeroed)
    torch.testing.assert_close(points_only[0, 2], pe.not_a_point_embed.weight[0], rtol=0, atol=0)
    torch.testing.assert_close(with_box[:, :2], points_only[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(with_box[:, 2:], box_only, rtol=0, atol=0)


def test_label_minus_two_zeroes_the_token_and_leaves_others():
    model = build_sam("edge_sam_dyt_debug")
    coords = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    with torch.no_grad():
        ignored, _ = model.prompt_encoder(points=(coords, torch.tensor([[1, -2]])), boxes=None, masks=None)
        normal, _ = model.prompt_encoder(points=(coords, torch.tensor([[1, 0]])), boxes=None, masks=None)
    assert torch.count_nonzero(ignored[0, 1]) == 0
    torch.testing.assert_close(ignored[0, 0], normal[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(ignored[0, 2], normal[0, 2], rtol=0, atol=0)


def test_point_encoding_uses_pixel_centres_and_input_frame():
    model = build_sam("edge_sam_dyt_debug")
    pe_layer = model.prompt_encoder.pe_layer
    coords = torch.tensor([[[10.0, 20.0]]])
    with torch.no_grad():
        sparse, _ = model.prompt_encoder(points=(coords, torch.tensor([[1]])), boxes=None, masks=None)
        expected = pe_layer._pe_encoding((coords + 0.5) / 128) + model.prompt_encoder.point_embeddings[1].weight
    torch.testing.assert_close(sparse[:, :1], expected, rtol=0, atol=1e-6)


def test_dense_pe_is_the_point_encoding_at_grid_cell_centres():
    model = build_sam("edge_sam_dyt_debug")
    with torch.no_grad():
        dense = model.prompt_encoder.get_dense_pe()
        # grid cell (row 2, col 5) centre = pixel ((5 + 0.5) * 16, (2 + 0.5) * 16) - 0.5 before the +0.5 shift
        point = torch.tensor([[[5.5 * 16 - 0.5, 2.5 * 16 - 0.5]]])
        sparse, _ = model.prompt_encoder(points=(point, torch.tensor([[-1]])), boxes=torch.zeros(1, 4), masks=None)
        enc = model.prompt_encoder.pe_layer.forward_with_coords(point + 0.5, (128, 128))
    assert dense.shape == (1, 32, 8, 8)
    torch.testing.assert_close(dense[0, :, 2, 5], enc[0, 0], rtol=0, atol=1e-5)


def test_mask_prompt_gives_dense_embedding():
    model = build_sam("edge_sam_dyt_debug")
    with torch.no_grad():
        _, dense = model.prompt_encoder(points=None, boxes=None, masks=torch.randn(2, 1, 32, 32))
    assert dense.shape == (2, 32, 8, 8)


def test_preprocess_normalises_then_pads_with_zero():
    model = build_sam("edge_sam_debug")
    img = torch.full((3, 50, 70), 200.0)
    out = model.preprocess(img)
    assert out.shape == (3, 128, 128)
    expected = (200.0 - model.pixel_mean) / model.pixel_std
    torch.testing.assert_close(out[:, :50, :70], expected.expand(3, 50, 70))
    assert torch.count_nonzero(out[:, 50:, :]) == 0 and torch.count_nonzero(out[:, :, 70:]) == 0


def test_postprocess_crops_padding_before_resizing():
    model = build_sam("edge_sam_debug")
    low = torch.zeros(1, 1, 32, 32)
    low[..., :16, :] = 5.0  # top half positive; the cropped input covers only the top 64 of 128 rows
    out = model.postprocess_masks(low, (64, 128), (32, 64))
    assert out.shape == (1, 1, 32, 64)
    assert (out > 0).all()


def test_sam_forward_runs_batched_records():
    model = build_sam("edge_sam_dyt_hq_debug")
    record = {
        "image": torch.rand(3, 96, 128) * 255,
        "original_size": (48, 64),
        "point_coords": torch.tensor([[[20.0, 30.0]]]),
        "point_labels": torch.tensor([[1]]),
    }
    (out,) = model([record])
    assert out["masks"].shape == (1, 1, 48, 64) and out["masks"].dtype == torch.bool
    assert out["low_res_logits"].shape == out["low_res_logits_sam"].shape == (1, 1, 32, 32)


def test_upsample_mode_default_and_override():
    assert build_sam("edge_sam_dyt_debug").image_encoder.upsample_mode == "bicubic"
    model = sam_model_registry["edge_sam_dyt_debug"](upsample_mode="bilinear")
    assert model.image_encoder.upsample_mode == "bilinear"
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        bilinear = model.encode_image(x)
        model.image_encoder.upsample_mode = "bicubic"
        bicubic = model.encode_image(x)
    assert not torch.equal(bilinear, bicubic)


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_hq_debug")
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1)
    clone = build_sam("edge_sam_dyt_hq_debug")
    clone.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, fa = model.encode_image(x)
        b, fb = clone.encode_image(x)
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(fa, fb))


def test_prompt_batch_pairs_with_image_batch():
    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_debug")
    emb = torch.randn(2, 32, 8, 8)
    pe = model.prompt_encoder.get_dense_pe()
    sparse, dense = _prompt(model, [[[30.0, 40.0]], [[90.0, 10.0]]], [[1], [1]])
    with torch.no_grad():
        both, _ = model.mask_decoder(emb, pe, sparse, dense, 1)
        second, _ = model.mask_decoder(emb[1:], pe, sparse[1:], dense[1:], 1)
    torch.testing.assert_close(both[1:], second, rtol=1e-5, atol=1e-5)


def test_corner_labels_on_points_match_box_tokens():
    model = build_sam("edge_sam_dyt_debug")
    box = torch.tensor([[5.0, 6.0, 70.0, 80.0]])
    with torch.no_grad():
        box_tokens, _ = model.prompt_encoder(points=None, boxes=box, masks=None)
        as_points, _ = model.prompt_encoder(
            points=(box.view(1, 2, 2), torch.tensor([[2, 3]])), boxes=None, masks=None
        )
    torch.testing.assert_close(as_points[:, :2], box_tokens, rtol=0, atol=0)


def test_sam_forward_takes_upstreams_flags():
    from edgesam_core.models.sam import stability_score

    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_debug")
    record = {
        "image": torch.rand(3, 96, 128) * 255,
        "original_size": (48, 64),
        "point_coords": torch.tensor([[[20.0, 30.0]], [[90.0, 60.0]]]),
        "point_labels": torch.tensor([[1], [1]]),
    }
    (plain,) = model([record], num_multimask_outputs=3)
    (stable,) = model([record], num_multimask_outputs=3, use_stability_score=True)
    assert torch.equal(plain["low_res_logits"], stable["low_res_logits"])
    expected = stability_score(plain["low_res_logits"], model.mask_threshold, 1.0)
    torch.testing.assert_close(stable["iou_predictions"], expected, equal_nan=True)
    assert not plain["low_res_logits"].requires_grad
    (trained,) = model([record], num_multimask_outputs=3, training_mode=True)
    assert trained["low_res_logits"].requires_grad
    trained["low_res_logits"].sum().backward()
    assert model.mask_decoder.iou_token.weight.grad is not None
    assert all(p.grad is None for p in model.image_encoder.parameters())  # the encoder never takes gradients


def test_box_labels_minus_one_turn_both_corners_into_not_a_point():
    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_debug")
    boxes = torch.tensor([[10.0, 20.0, 60.0, 70.0], [5.0, 5.0, 100.0, 90.0]])
    plain, _ = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    labelled, _ = model.prompt_encoder(points=None, boxes=boxes, masks=None, box_labels=torch.tensor([1, -1]))
    assert torch.equal(labelled[0], plain[0])
    not_a_point = model.prompt_encoder.not_a_point_embed.weight[0]
    assert torch.equal(labelled[1], not_a_point.expand(2, -1))


@pytest.mark.parametrize("name", ["edge_sam_dyt_debug", "edge_sam_dyt_hq_debug", "vit_h_hq_debug"])
def test_decoders_accept_upstreams_hq_token_only_keyword(name):
    torch.manual_seed(0)
    model = build_sam(name)
    features = model.encode_image(torch.rand(1, 3, model.img_size, model.img_size))
    emb, interm = features if isinstance(features, tuple) else (features, None)
    sparse, dense = _prompt(model, [[[20.0, 30.0]]], [[1]])
    kwargs = dict(image_embeddings=emb, image_pe=model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                  dense_prompt_embeddings=dense, num_multimask_outputs=1, interm_embeddings=interm)
    with torch.no_grad():
        base = model.mask_decoder(**kwargs)
        flagged = model.mask_decoder(**kwargs, hq_token_only=True)
    assert all(torch.equal(a, b) for a, b in zip(base, flagged))
