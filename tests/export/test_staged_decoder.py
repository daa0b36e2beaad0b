"""The staged decoder: ``X_decoder_image.onnx`` once per image, ``X_decoder_prompts.onnx`` per batch of prompts.

Judged by the export gate against the float64 model (single prompts and a batch), used by the ONNX predictor
when present, and equal there to the upstream-contract decoder it stands in for.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgesam_core.export.parity import synthetic_image

pytest.importorskip("onnxruntime")


def test_export_writes_and_checks_both_stages(dyt_debug_export):
    _, result = dyt_debug_export
    assert {"decoder_image", "decoder_prompts"} <= set(result.files)
    assert result.files["decoder_prompts"].name.endswith("_decoder_prompts.onnx")
    entries = [e for e in result.parity.entries if e.graph == "decoder_prompts"]
    assert {e.case for e in entries} == {"points", "box", "box+points", "labels-2,2,3", "3 points batched"}
    assert all(result.parity.ok(e) and e.floor_max > 0 for e in entries)


def test_hq_and_portable_exports_keep_to_the_contract(hq_debug_export, tmp_path):
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from tests.export.conftest import make_model

    assert set(hq_debug_export[1].files) == {"encoder", "decoder"}
    portable = export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=tmp_path, opset=17,
                                                   runtime_rewrites=False), model=make_model("edge_sam_dyt_debug"))
    assert set(portable.files) == {"encoder", "decoder"}


def test_a_wrong_prompt_stage_fails_the_gate(tmp_path, monkeypatch):
    """A prompt stage that computes something slightly different (masks x 1.001) is refused (exit 4's error)."""
    from edgesam_core.errors import ExportParityError
    from edgesam_core.export import wrappers
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx
    from tests.export.conftest import make_model

    class Slightly(wrappers.DecoderPromptStageForExport):
        def forward(self, *args):
            scores, masks = super().forward(*args)
            return scores, masks * 1.001

    monkeypatch.setattr(wrappers, "DecoderPromptStageForExport", Slightly)
    with pytest.raises(ExportParityError, match="decoder_prompts"):
        export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=tmp_path),
                    model=make_model("edge_sam_dyt_debug"))


@pytest.fixture()
def predictors(dyt_debug_export):
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    _, result = dyt_debug_export
    staged = OnnxSamPredictor(result.files["encoder"])
    contract = OnnxSamPredictor(result.files["encoder"])
    contract.staged = None  # the upstream-contract decoder, one prompt set per call
    image = synthetic_image(100, 130, seed=3)
    staged.set_image(image)
    contract.set_image(image)
    return staged, contract


def test_predictor_uses_the_stages_and_agrees_with_the_contract_decoder(predictors):
    staged, contract = predictors
    assert staged.staged is not None and staged.context is not None
    box = np.array([10, 15, 90, 70])
    for kwargs in (dict(point_coords=np.array([[40, 30]]), point_labels=np.array([1])), dict(box=box),
                   dict(point_coords=np.array([[40, 30], [70, 60]]), point_labels=np.array([1, 0]), box=box)):
        for outputs in (1, 3, 4):
            a = contract.predict(**kwargs, num_multimask_outputs=outputs, return_logits=True)
            b = staged.predict(**kwargs, num_multimask_outputs=outputs, return_logits=True)
            scale = max(1.0, float(np.abs(a.low_res_logits).max()))
            assert np.abs(b.low_res_logits - a.low_res_logits).max() <= 1e-5 * scale
            assert np.abs(b.scores - a.scores).max() <= 1e-5 * max(1.0, float(np.abs(a.scores).max()))
            assert np.abs(a.low_res_logits).max() > 0.1  # the masks are not trivially zero


def test_batched_rows_equal_one_call_per_row(predictors):
    staged, contract = predictors
    staged.prompt_batch = 3  # 7 rows: calls of 3, 3 and 1
    points = torch.tensor(np.random.default_rng(0).uniform(0, 128, (7, 1, 2)), dtype=torch.float)
    labels = torch.ones(7, 1, dtype=torch.int)
    scores, low_res = staged.predict_low_res_torch(points, labels, 3, False)
    ref_scores, ref_low_res = contract.predict_low_res_torch(points, labels, 3, False)
    assert low_res.shape == (7, 3, 32, 32)
    torch.testing.assert_close(low_res, ref_low_res, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
    masks, _, _ = staged.predict_torch(point_coords=points, point_labels=labels, num_multimask_outputs=3,
                                       return_logits=True)
    torch.testing.assert_close(masks, staged.upscale_masks(low_res), atol=1e-5, rtol=0)


def test_box_rows_through_every_decoder_form_give_the_models_masks(dyt_debug_export):
    """Box proposals decoded in batches (the generator's box strategy) equal one ``predict(box=...)`` per box on
    both ONNX decoder forms, and the PyTorch predictor's batched boxes within fp32 noise (the graphs themselves
    are judged against the float64 model on box prompts by the export gate, test above)."""
    from edgesam_core.inference import SamPredictor
    from edgesam_core.inference.onnx_predictor import OnnxSamPredictor

    model, result = dyt_debug_export
    image = synthetic_image(100, 130, seed=3)
    boxes = np.array([[10, 15, 90, 70], [0, 0, 130, 100], [60, 40, 75, 52], [5, 50, 40, 99]], np.float64)
    reference = SamPredictor(model)
    reference.set_image(image)
    in_boxes = torch.as_tensor(reference.transform.apply_boxes(boxes, (100, 130)), dtype=torch.float)
    ref_scores, ref_low_res = reference.predict_low_res_torch(None, None, 1, False, boxes=in_boxes)
    for row, box in enumerate(boxes):  # the PyTorch rows are its single-box predictions
        one = reference.predict(box=box, num_multimask_outputs=1, return_logits=True)
        np.testing.assert_allclose(ref_low_res[row].numpy(), one.low_res_logits, atol=1e-5, rtol=1e-5)
    scale = float(ref_low_res.abs().max())
    assert scale > 0.1
    for staged_form in (True, False):
        onnx = OnnxSamPredictor(result.files["encoder"])
        if not staged_form:
            onnx.staged = None
        onnx.prompt_batch = 3
        onnx.set_image(image)
        scores, low_res = onnx.predict_low_res_torch(None, None, 1, False, boxes=in_boxes)
        assert low_res.shape == (4, 1, 32, 32)
        for row, box in enumerate(boxes):
            one = onnx.predict(box=box, num_multimask_outputs=1, return_logits=True)
            np.testing.assert_allclose(low_res[row].numpy(), one.low_res_logits, atol=1e-5, rtol=1e-5)
        assert (low_res - ref_low_res).abs().max() <= 1e-4 * scale
        assert (scores - ref_scores).abs().max() <= 1e-4 * max(1.0, float(ref_scores.abs().max()))
