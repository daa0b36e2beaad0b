"""Student initialisation per step: every accepted layout really loads, a file that fits nothing fails loudly."""

from __future__ import annotations

import pytest
import torch

from edgesam_core.errors import CheckpointMismatchError
from edgesam_core.training.student_init import freeze_for_step, initialise_student, normalise_init_keys, set_train_mode


def _models():
    from edgesam_core.models import build_sam

    torch.manual_seed(0)
    teacher = build_sam("vit_b_debug").state_dict()
    torch.manual_seed(1)
    donor = build_sam("edge_sam_dyt_debug").state_dict()
    torch.manual_seed(2)
    return teacher, donor, build_sam("edge_sam_dyt_debug")


@pytest.mark.parametrize("layout", ["full", "encoder_only", "imagenet_wrapped"])
def test_step1_and_2_load_the_encoder_from_any_layout(layout, tmp_path):
    teacher, donor, student = _models()
    enc = {k[len("image_encoder."):]: v for k, v in donor.items() if k.startswith("image_encoder.")}
    payload = {"full": {"model": donor}, "encoder_only": enc,
               "imagenet_wrapped": {"model": {**enc, "classifier.l.weight": torch.zeros(3, 3)}}}[layout]
    path = tmp_path / "init.pth"
    torch.save(payload, path)
    counts = initialise_student(student, "1", path, teacher)
    own = student.state_dict()
    assert counts["init"] == len(enc)
    assert all(torch.equal(own[f"image_encoder.{k}"], v) for k, v in enc.items())
    assert torch.equal(own["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"],
                       teacher["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"])
    # LN -> DyT: weight/bias copied, alpha left at 0.5.
    assert torch.equal(own["mask_decoder.output_upscaling.1.weight"], teacher["mask_decoder.output_upscaling.1.weight"])
    assert float(own["mask_decoder.output_upscaling.1.alpha"]) == 0.5


def test_joint_takes_encoder_and_decoder_from_init(tmp_path):
    teacher, donor, student = _models()
    torch.save({"model": donor}, tmp_path / "s3.pth")
    initialise_student(student, "joint", tmp_path / "s3.pth", teacher)
    own = student.state_dict()
    assert all(torch.equal(own[k], donor[k]) for k in own if k.startswith(("image_encoder.", "mask_decoder.")))
    assert all(torch.equal(own[k], teacher[k]) for k in own if k.startswith("prompt_encoder."))


def test_init_that_fits_nothing_is_an_error(tmp_path):
    teacher, _, student = _models()
    torch.save({"model": {"something.else": torch.zeros(2)}}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError, match="image_encoder"):
        initialise_student(student, "1", tmp_path / "bad.pth", teacher)
    torch.save({"image_encoder.neck.0.weight": torch.zeros(1, 1, 1, 1)}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointMismatchError, match="shape"):
        initialise_student(student, "2", tmp_path / "shape.pth", teacher)


def test_freezing_and_bn_modes_per_step():
    _, _, student = _models()
    trained = freeze_for_step(student, "3")
    assert trained and all(n.startswith("mask_decoder.") for n in trained)
    set_train_mode(student, "3", eval_bn=True)
    bns = [m for m in student.image_encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and student.mask_decoder.training
    freeze_for_step(student, "1")
    set_train_mode(student, "1", eval_bn=False)
    assert all(m.training for m in bns) and not student.prompt_encoder.training
    assert list(normalise_init_keys({"features.0.weight": torch.zeros(1), "classifier.w": torch.zeros(1)})) == [
        "image_encoder.features.0.weight"]
