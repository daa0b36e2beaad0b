"""Checkpoint reading (every upstream format, safely) and strict loading with a diagnosis of mismatches."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from edgesam_core.errors import CheckpointError, CheckpointMismatchError
from edgesam_core.models.build import _build_sam
from edgesam_core.models.checkpoint import (
    guess_variant,
    load_image_encoder_weights,
    load_model_weights,
    read_checkpoint,
    read_checkpoint_full,
)
from edgesam_core.models.variants import resolve_variant


def _model(name: str, seed: int = 0, device: str = "cpu"):
    torch.manual_seed(seed)
    with torch.device(device):
        return _build_sam(resolve_variant(name))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def dyt():
    return _model("edge_sam_dyt_debug", seed=1)


def _save_with_yacs_config(path, payload_factory):
    """Pickle a training checkpoint whose config is a yacs-like CfgNode, then make yacs unimportable."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            # The attributes a real CfgNode keeps in its __dict__ (pickled as BUILD state).
            self.__dict__.update({"__immutable__": True, "__deprecated_keys__": set(),
                                  "__renamed_keys__": {}, "__new_allowed__": False})

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    package = types.ModuleType("yacs")
    package.config = module
    saved = {k: sys.modules.get(k) for k in ("yacs", "yacs.config")}
    sys.modules.update({"yacs": package, "yacs.config": module})
    try:
        torch.save(payload_factory(CfgNode), path)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def test_training_checkpoint_with_yacs_config_round_trips(dyt, tmp_path):
    path = tmp_path / "ckpt_epoch_3.pth"
    optimizer = torch.optim.AdamW(dyt.parameters(), lr=1e-3)

    def payload(cfg_node):
        config = cfg_node({"MODEL": cfg_node({"TYPE": "rep_vit_m1_dyt", "MASK_HQ": False}),
                           "TRAIN": cfg_node({"EPOCHS": 20, "BASE_LR": 1e-3, "BETAS": (0.9, 0.999)})})
        return {"model": dyt.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": {"t": 7},
                "max_accuracy": np.float64(0.25), "scaler": {"scale": 65536.0}, "epoch": 3, "config": config}

    _save_with_yacs_config(path, payload)
    assert "yacs" not in sys.modules
    assert _same(read_checkpoint(path), dyt.state_dict())
    full = read_checkpoint_full(path)
    assert full["epoch"] == 3 and full["lr_scheduler"] == {"t": 7} and full["max_accuracy"] == 0.25
    assert full["config"] == {"MODEL": {"TYPE": "rep_vit_m1_dyt", "MASK_HQ": False},
                              "TRAIN": {"EPOCHS": 20, "BASE_LR": 1e-3, "BETAS": (0.9, 0.999)}}
    assert type(full["config"]["MODEL"]) is dict
    assert full["optimizer"]["param_groups"][0]["lr"] == 1e-3
    fresh = _model("edge_sam_dyt_debug", seed=2)
    load_model_weights(fresh, path, "edge_sam_dyt_debug")
    assert _same(fresh.state_dict(), dyt.state_dict())


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "ddp"])
def test_state_dict_wrappers_round_trip(dyt, tmp_path, wrap):
    state = dyt.state_dict()
    payload = {"plain": state, "model": {"model": state, "epoch": 1}, "state_dict": {"state_dict": state},
               "ddp": {"model": {"module." + k: v for k, v in state.items()}}}[wrap]
    torch.save(payload, tmp_path / "w.pth")
    assert _same(read_checkpoint(tmp_path / "w.pth"), state)
    assert read_checkpoint_full(tmp_path / "w.pth")["model"].keys() == state.keys()


def test_full_size_models_round_trip_on_meta_device(tmp_path):
    # Full-size edge_sam_dyt (K layout) and edge_sam (E layout): keys and shapes of the published files.
    for name, count in (("edge_sam_dyt", 856), ("edge_sam", 821)):
        source = _model(name)
        assert len(source.state_dict()) == count
        torch.save(source.state_dict(), tmp_path / f"{name}.pth")
        target = _model(name, device="meta")
        load_model_weights(target, tmp_path / f"{name}.pth", name)
        assert _same(target.state_dict(), source.state_dict())


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_unreadable_files_name_the_file(dyt, tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save(dyt.state_dict(), path)
        path.write_bytes(path.read_bytes()[:4096])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    assert str(info.value) == f"{path} is truncated or not a PyTorch checkpoint; re-download it"


def test_missing_file_and_unsafe_pickle(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pth")
    torch.save({"model": {"w": torch.zeros(1)}, "obj": types.SimpleNamespace(a=1)}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match=r"pickles a Python object \(types.SimpleNamespace\)"):
        read_checkpoint(tmp_path / "unsafe.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no model weights"):
        read_checkpoint(tmp_path / "empty.pth")


def _mismatch(model_name: str, state) -> str:
    with pytest.raises(CheckpointMismatchError) as info:
        load_model_weights(_model(model_name, device="meta"), state, model_name)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_layernorm_checkpoint_into_dyt_model(dyt):
    frozen = _model("edge_sam_dyt_frozen_mask_debug").state_dict()  # DyT neck, LayerNorm decoder
    message = _mismatch("edge_sam_dyt_debug", frozen)
    assert "10 missing keys (mask_decoder.output_upscaling.1.alpha" in message
    assert "only DyT 'alpha' keys are missing" in message and "convert_ln_to_dyt" in message
    assert "pass --model edge_sam_dyt_frozen_mask_debug" in message
    message = _mismatch("edge_sam_dyt_frozen_mask_debug", dyt.state_dict())
    assert "10 unexpected keys" in message and "DyT layers where" in message
    assert "pass --model edge_sam_dyt_debug" in message


def test_hq_and_non_hq_mixups(dyt):
    hq = _model("edge_sam_dyt_hq_debug").state_dict()
    message = _mismatch("edge_sam_dyt_debug", hq)
    assert "42 unexpected keys (mask_decoder.compress_vit_feat" in message
    assert "HQ checkpoint" in message and "pass --model edge_sam_dyt_hq_debug" in message
    message = _mismatch("edge_sam_dyt_hq_debug", dyt.state_dict())
    assert "42 missing keys" in message and "has an HQ decoder but the checkpoint has none" in message


def test_sam_vit_teacher_into_edgesam():
    vit = _model("vit_b_debug").state_dict()
    message = _mismatch("edge_sam_dyt_debug", vit)
    assert "SAM ViT (teacher) checkpoint" in message
    assert guess_variant(vit) == "vit_b_debug"
    assert "this is an EdgeSAM checkpoint" in _mismatch("vit_b_debug", _model("edge_sam_dyt_debug").state_dict())


def test_original_edgesam_layout_into_dyt_layout(dyt):
    message = _mismatch("edge_sam_dyt_debug", _model("edge_sam_debug").state_dict())
    assert "original EdgeSAM layer layout" in message and "pass --model edge_sam_debug" in message
    message = _mismatch("edge_sam_debug", dyt.state_dict())
    assert "EdgeSAM-DyT layer layout" in message and "pass --model edge_sam_dyt_debug" in message


def test_shape_mismatch_is_reported():
    message = _mismatch("edge_sam_dyt_debug", _model("edge_sam_dyt").state_dict())
    assert "shape mismatches (image_encoder." in message and "different size" in message
    assert "pass --model edge_sam_dyt" in message


def test_encoder_only_step1_file(dyt, tmp_path):
    encoder_state = dyt.image_encoder.state_dict()
    assert all(k.startswith(("features.", "fuse_stage", "neck.")) for k in encoder_state)
    torch.save({"model": encoder_state, "epoch": 19}, tmp_path / "step1.pth")
    with pytest.raises(CheckpointMismatchError, match="encoder-only checkpoint .*decoder_source"):
        load_model_weights(_model("edge_sam_dyt_frozen_mask_debug"), tmp_path / "step1.pth")
    # Decoder from a SAM-style file, as upstream's convert_weights.py does.
    sam_like = _model("edge_sam_dyt_frozen_mask_debug", seed=5)
    torch.save(sam_like.state_dict(), tmp_path / "sam.pth")
    target = _model("edge_sam_dyt_frozen_mask_debug", seed=9)
    load_model_weights(target, tmp_path / "step1.pth", decoder_source=tmp_path / "sam.pth")
    assert _same(target.image_encoder.state_dict(), encoder_state)
    assert _same(target.mask_decoder.state_dict(), sam_like.mask_decoder.state_dict())
    assert _same(target.prompt_encoder.state_dict(), sam_like.prompt_encoder.state_dict())
    keep = _model("edge_sam_dyt_debug", seed=9)
    decoder_before = {k: v.clone() for k, v in keep.mask_decoder.state_dict().items()}
    load_model_weights(keep, tmp_path / "step1.pth", encoder_only_ok=True)
    assert _same(keep.mask_decoder.state_dict(), decoder_before)


def test_image_encoder_weights_from_every_source(dyt, tmp_path):
    encoder_state = dyt.image_encoder.state_dict()
    for payload in (dyt.state_dict(), {"model": encoder_state}):
        encoder = _model("edge_sam_dyt_debug", seed=4).image_encoder
        assert load_image_encoder_weights(encoder, payload) == []
        assert _same(encoder.state_dict(), encoder_state)
    # RepViT ImageNet file: features + classifier, no fuse neck / neck.
    imagenet = {k: v for k, v in encoder_state.items() if k.startswith("features.")}
    imagenet.update({"classifier.classifier.l.weight": torch.zeros(10, 4),
                     "classifier.classifier.l.bias": torch.zeros(10)})
    torch.save({"model": imagenet}, tmp_path / "repvit.pth")
    encoder = _model("edge_sam_dyt_debug", seed=4).image_encoder
    neck_before = {k: v.clone() for k, v in encoder.state_dict().items() if not k.startswith("features.")}
    untouched = load_image_encoder_weights(encoder, tmp_path / "repvit.pth")
    assert untouched and all(k.startswith(("neck.", "fuse_stage")) for k in untouched)
    assert set(untouched) == set(neck_before)
    after = encoder.state_dict()
    assert all(torch.equal(after[k], imagenet[k]) for k in imagenet if k.startswith("features."))
    assert all(torch.equal(after[k], v) for k, v in neck_before.items())
    with pytest.raises(CheckpointMismatchError, match="ImageNet classifier"):
        load_model_weights(_model("edge_sam_dyt_debug"), tmp_path / "repvit.pth")
    broken = dict(imagenet)
    broken.pop("features.0.0.c.weight")
    with pytest.raises(CheckpointMismatchError, match=r"1 missing keys \(features.0.0.c.weight\)"):
        load_image_encoder_weights(_model("edge_sam_dyt_debug").image_encoder, broken)
