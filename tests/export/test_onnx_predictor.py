"""OnnxSamPredictor gives SamPredictor's masks, scores and logits from the exported graphs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

IMAGE_HW = (150, 200)


def _image():
    from edgesam_core.export.parity import synthetic_image

    return synthetic_image(*IMAGE_HW, seed=3)


PROMPTS = {
    "point": {"point_coords": np.array([[60.0, 50.0], [140.0, 90.0]]), "point_labels": np.array([1, 0])},
    "box": {"box": np.array([30.0, 20.0, 150.0, 120.0])},
    "box+points": {"box": np.array([30.0, 20.0, 150.0, 120.0]), "point_coords": np.array([[80.0, 60.0]]),
                   "point_labels": np.array([1])},
}


def _compare(torch_pred, onnx_pred, **kwargs):
    a = torch_pred.predict(**kwargs)
    b = onnx_pred.predict(**kwargs)
    assert a.masks.shape == b.masks.shape and a.scores.shape == b.scores.shape
    assert np.abs(a.low_res_logits - b.low_res_logits).max() < 1e-4
    assert np.abs(a.scores - b.scores).max() < 1e-4
    logits_a = torch_pred.predict(**kwargs, return_logits=True).masks
    logits_b = onnx_pred.predict(**kwargs, return_logits=True).masks
    assert np.abs(logits_a - logits_b).max() < 1e-4
    # Binary masks agree except where |logit| is within float noise of the threshold.
    disagree = a.masks != b.masks
    assert not disagree.any() or np.abs(logits_a[disagree]).max() < 1e-4
    return a


@pytest.mark.parametrize("fixture", ["dyt_debug_export", "hq_debug_export"])
def test_onnx_predictor_matches_torch_predictor(request, fixture):
    from edgesam_core.inference import SamPredictor, load_predictor
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    model, result = request.getfixturevalue(fixture)
    torch_pred = SamPredictor(model)
    onnx_pred = load_predictor(result.files["encoder"])
    assert isinstance(onnx_pred, OnnxSamPredictor) and onnx_pred.is_hq == model.is_hq
    image = _image()
    torch_pred.set_image(image)
    onnx_pred.set_image(image)
    assert np.abs(torch_pred.get_image_embedding().numpy() - onnx_pred.get_image_embedding()).max() < 1e-4
    for prompt in PROMPTS.values():
        for n in (1, 3, 4):
            out = _compare(torch_pred, onnx_pred, num_multimask_outputs=n, **prompt)
            assert out.masks.shape == ((1 if model.is_hq else n), *IMAGE_HW)
        _compare(torch_pred, onnx_pred, use_stability_score=True, **prompt)
        best = _compare(torch_pred, onnx_pred, num_multimask_outputs=4, best_only=True, **prompt)
        assert best.masks.shape == (1, *IMAGE_HW)


def test_predictor_finds_pairs_and_rejects_unsupported_options(dyt_debug_export, tmp_path):
    from edgesam_core.errors import InputError
    from edgesam_core.inference import load_predictor
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor, decoder_path_for

    _, result = dyt_debug_export
    assert decoder_path_for(result.files["encoder"]) == result.files["decoder"]
    pred = load_predictor(result.files["decoder"])  # the decoder file also resolves to the pair
    assert pred.encoder_path == result.files["encoder"]
    with pytest.raises(InputError, match="set_image"):
        pred.predict(box=np.array([1, 1, 20, 20]))
    pred.set_image(_image())
    with pytest.raises(InputError, match="mask input"):
        pred.predict(box=np.array([1, 1, 20, 20]), mask_input=np.zeros((1, 32, 32), np.float32))
    with pytest.raises(ValueError):
        pred.predict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([7]))
    lonely = tmp_path / "lonely_encoder.onnx"
    lonely.write_bytes(result.files["encoder"].read_bytes())
    with pytest.raises(InputError, match="lonely_decoder.onnx"):
        OnnxSamPredictor(lonely)


def test_upsampled_decoder_gives_the_same_masks(export_factory):
    from edgesam_core.inference import SamPredictor
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    model, result = export_factory("edge_sam_dyt_debug", True)
    torch_pred, onnx_pred = SamPredictor(model), OnnxSamPredictor(result.files["encoder"])
    image = _image()
    torch_pred.set_image(image)
    onnx_pred.set_image(image)
    for prompt in PROMPTS.values():
        a = torch_pred.predict(num_multimask_outputs=4, return_logits=True, **prompt)
        b = onnx_pred.predict(num_multimask_outputs=4, return_logits=True, **prompt)
        assert np.abs(a.masks - b.masks).max() < 1e-4
        assert np.abs(a.scores - b.scores).max() < 1e-4


def test_decoder_with_upstreams_extra_masks_sam_output(hq_debug_export, tmp_path):
    """The published EdgeSAM-DyT HQ decoder (upstream dev/onnx) has outputs scores, masks, masks_sam."""
    import onnx

    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    _, result = hq_debug_export
    graph = onnx.load(str(result.files["decoder"]))
    graph.graph.node.append(onnx.helper.make_node("Identity", ["masks"], ["masks_sam"]))
    graph.graph.output.append(onnx.helper.make_tensor_value_info("masks_sam", onnx.TensorProto.FLOAT, None))
    (tmp_path / "ko_encoder.onnx").write_bytes(result.files["encoder"].read_bytes())
    onnx.save(graph, str(tmp_path / "ko_decoder.onnx"))
    ours, ko = OnnxSamPredictor(result.files["encoder"]), OnnxSamPredictor(tmp_path / "ko_encoder.onnx")
    assert [o.name for o in ko.decoder.get_outputs()] == ["scores", "masks", "masks_sam"]
    image = _image()
    ours.set_image(image)
    ko.set_image(image)
    for prompt in PROMPTS.values():
        a, b = ours.predict(**prompt, return_logits=True), ko.predict(**prompt, return_logits=True)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.scores, b.scores)


@pytest.fixture(scope="module")
def perturbed_export(tmp_path_factory):
    """edge_sam_dyt_debug with seeded noise on the prompt encoder/decoder (so masks vary), exported."""
    import torch

    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from edgesam_core.models import build_sam

    from tests.helpers.perturb import perturb_prompt_path

    torch.manual_seed(0)
    model = perturb_prompt_path(build_sam("edge_sam_dyt_debug").eval(), seed=1, scale=0.5)
    out = tmp_path_factory.mktemp("perturbed")
    result = export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=out, name="p"), model=model)
    return model, result


def test_predict_torch_batches_match_the_pytorch_predictor(perturbed_export):
    import torch

    from edgesam_core.inference import SamPredictor
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    import copy

    model, result = perturbed_export
    torch_pred, onnx_pred = SamPredictor(model), OnnxSamPredictor(result.files["encoder"])
    ref_pred = SamPredictor(copy.deepcopy(model).double())  # the float64 reference of the same weights
    image = _image()
    for predictor in (torch_pred, onnx_pred, ref_pred):
        predictor.set_image(image)
    points = torch.tensor([[[10.0, 20.0]], [[60.0, 40.0]], [[100.0, 90.0]]])
    labels = torch.ones(3, 1, dtype=torch.int)
    boxes = torch.tensor([[5.0, 5.0, 60.0, 50.0], [30.0, 10.0, 120.0, 100.0], [0.0, 0.0, 127.0, 95.0]])
    for kwargs in ({"point_coords": points, "point_labels": labels}, {"boxes": boxes},
                   {"point_coords": points, "point_labels": labels, "boxes": boxes}):
        for n in (1, 3):
            a, b, ref = (p.predict_torch(**kwargs, num_multimask_outputs=n, return_logits=True,
                                         use_stability_score=True) for p in (torch_pred, onnx_pred, ref_pred))
            assert b[0].shape == a[0].shape == (3, n, *IMAGE_HW)
            # The export's rule: within 3x fp32 PyTorch's own distance from float64, plus 1e-5 of the scale
            # (perturbed weights give logits of ~50, whose fp32 rounding is relative to that).
            for i in (0, 2):
                floor = (a[i].double() - ref[i]).abs().max().item()
                scale = max(1.0, ref[i].abs().max().item())
                assert (b[i].double() - ref[i]).abs().max().item() <= 3 * floor + 1e-5 * scale
            assert torch.allclose(a[1], b[1], atol=1e-3, equal_nan=True)


def test_segment_everything_runs_on_the_onnx_pair(perturbed_export):
    from edgesam_core.inference import SamPredictor
    from edgesam_core.inference.automatic_mask_generator import SamAutomaticMaskGenerator
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    model, result = perturbed_export
    image = _image()
    options = {"points_per_side": 6, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.6}
    reference = SamAutomaticMaskGenerator(SamPredictor(model), **options).generate(image)
    exported = SamAutomaticMaskGenerator(OnnxSamPredictor(result.files["encoder"]), **options).generate(image)
    assert len(reference) > 0, "the test needs masks to compare"
    assert len(exported) == len(reference)
    for a, b in zip(sorted(reference, key=lambda r: r["bbox"]), sorted(exported, key=lambda r: r["bbox"])):
        inter = np.logical_and(a["segmentation"], b["segmentation"]).sum()
        union = np.logical_or(a["segmentation"], b["segmentation"]).sum()
        assert inter / union > 0.99
