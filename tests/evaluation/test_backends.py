"""The same evaluation through the PyTorch and the exported ONNX backend of the debug model."""

from __future__ import annotations

import numpy as np
import pytest

from edgesam_core.evaluation import evaluate, open_eval_dataset


@pytest.mark.parametrize("prompt", ["box", "point-center"])
def test_torch_and_onnx_give_the_same_miou(debug_model_files, sa1b_root, prompt):
    from edgesam_core.inference import load_predictor

    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    reports = {}
    predictors = {"pth": load_predictor(debug_model_files["pth"], model="edge_sam_dyt_debug"),
                  "onnx": load_predictor(debug_model_files["onnx"])}
    for backend, predictor in predictors.items():
        reports[backend] = evaluate(predictor, ds, prompt=prompt, refine_clicks=2, num_multimask_outputs=3)
    torch_report, onnx_report = reports["pth"], reports["onnx"]
    assert torch_report.num_prompts == onnx_report.num_prompts == 6
    for click in (1, 2, 3):
        for size in ("all", "small", "medium", "large"):
            # mIoU is reported x100; the 1e-4 tolerance is on the IoU scale [0, 1].
            assert onnx_report.miou(click, size) / 100 == pytest.approx(torch_report.miou(click, size) / 100,
                                                                        abs=1e-4)
    # Per prompt too, so that compensating differences cannot hide: a few pixels whose logits sit within
    # float32 noise of the threshold may flip, nothing more.
    np.testing.assert_allclose(onnx_report.ious, torch_report.ious, atol=1e-3)

def test_hq_model_evaluates_with_its_single_hq_mask(sa1b_root):
    """HQ predictors return one mask whatever num_multimask_outputs says; every selection rule copes."""
    import torch

    from edgesam_core.inference import SamPredictor
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    predictor = SamPredictor(build_sam("edge_sam_dyt_hq_debug"))
    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    reports = {select: evaluate(predictor, ds, prompt="point-random", refine_clicks=1, num_multimask_outputs=4,
                                multimask_select=select) for select in ("score", "oracle")}
    for report in reports.values():
        assert report.num_prompts == 6 and report.ious.shape == (6, 2) and not np.isnan(report.ious).all()
        # The reported mIoU is the mean of the per-prompt IoUs it was built from, x100.
        assert report.miou(2) == pytest.approx(100 * np.nanmean(report.ious[:, 1]), abs=1e-9)
    # One HQ mask per prediction: "oracle" has nothing to choose from, so both rules keep the same mask.
    np.testing.assert_array_equal(reports["score"].ious, reports["oracle"].ious)


@pytest.mark.parametrize("backend", ["pth", "onnx"])
@pytest.mark.parametrize("prompt", ["box", "point-random"])
def test_the_objects_of_an_image_share_decoder_calls(debug_model_files, sa1b_root, backend, prompt):
    """With several prompt sets per call (CUDA's default), each round of an image is one decoder call for all
    its objects still clicking, and the scores and saved masks are those of one call per prompt."""
    from edgesam_core.inference import load_predictor

    ds = open_eval_dataset("sa1b", sa1b_root, "val")
    kwargs = {"model": "edge_sam_dyt_debug"} if backend == "pth" else {}
    one = load_predictor(debug_model_files[backend], **kwargs)
    many = load_predictor(debug_model_files[backend], **kwargs)
    many.prompt_batch = 4
    assert one.prompts_per_call == 1 and many.prompts_per_call == 4
    calls = {"predict": 0, "predict_torch": 0}
    for name in calls:
        def counted(*args, _name=name, _method=getattr(many, name), **kw):
            calls[_name] += 1
            return _method(*args, **kw)
        setattr(many, name, counted)
    records = {"one": [], "many": []}
    reports = {key: evaluate(predictor, ds, prompt=prompt, refine_clicks=2, num_multimask_outputs=3,
                             on_mask=records[key].append) for key, predictor in (("one", one), ("many", many))}
    # 2 images x 3 rounds, every object of an image in the same call (none reaches a perfect mask here).
    assert calls == {"predict": 0, "predict_torch": 6}
    np.testing.assert_allclose(reports["many"].ious, reports["one"].ious, atol=1e-3)
    assert [(r.obj.ann_id, r.click) for r in records["many"]] == [(r.obj.ann_id, r.click) for r in records["one"]]
    for a, b in zip(records["one"], records["many"]):
        assert np.count_nonzero(a.mask != b.mask) <= 0.001 * a.mask.size
