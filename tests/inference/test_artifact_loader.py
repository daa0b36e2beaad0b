"""load_predictor: suffix dispatch through SUFFIXES, device checks, variant resolution."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from edgesam_core.errors import (
    ConfigError,
    InputError,
    MissingDependencyError,
    UnknownVariantError,
)
from edgesam_core.inference import artifact_loader as load
from edgesam_core.inference.segment_job import resolve_variant


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(InputError, match="Checkpoint not found"):
        load.load_predictor(tmp_path / "nope.pth")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(InputError, match=r"expected a file ending in .*\.pth"):
        load.load_predictor(tmp_path / "model.bin")


def test_suffix_table_is_resolved_lazily(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("fake_backend")
    fake.open_artifact = lambda path, model=None, device="cpu", **kw: calls.append((path.name, model, device, kw))
    monkeypatch.setitem(sys.modules, "fake_backend", fake)
    monkeypatch.setitem(load.SUFFIXES, ".fake", "fake_backend:open_artifact")
    (tmp_path / "m.FAKE").write_bytes(b"x")
    load.load_predictor(tmp_path / "m.FAKE", model="edge_sam", device="cpu", threads=2)
    assert calls == [("m.FAKE", "edge_sam", "cpu", {"threads": 2})]


def test_torch_checkpoint_round_trip(tmp_path, debug_model):
    path = tmp_path / "w.pt"
    torch.save(debug_model.state_dict(), path)
    predictor = load.load_predictor(path, model="edge_sam_dyt_debug", fast=False)
    assert predictor.model.variant == "edge_sam_dyt_debug" and not predictor.is_hq
    for name, tensor in debug_model.state_dict().items():
        torch.testing.assert_close(predictor.model.state_dict()[name], tensor)
    fast = load.load_predictor(path)  # default: inference form (folded, channels-last)
    assert fast.model.variant == "edge_sam_dyt_debug" and fast.channels_last  # recognised from the weights
    # The inference form computes the same function: embeddings and logits agree to fp32 noise.
    import numpy as np

    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for p in (predictor, fast):
        p.set_image(image)
    torch.testing.assert_close(fast.get_image_embedding(), predictor.get_image_embedding(), atol=1e-5, rtol=1e-4)
    a = predictor.predict(point_coords=np.array([[40, 30]]), point_labels=np.array([1]), return_logits=True)
    b = fast.predict(point_coords=np.array([[40, 30]]), point_labels=np.array([1]), return_logits=True)
    np.testing.assert_allclose(b.low_res_logits, a.low_res_logits, atol=1e-4 * max(1.0, np.abs(a.low_res_logits).max()))


def test_resolve_device():
    assert load.resolve_device(None) == "cpu"
    with pytest.raises(InputError, match="Unknown device"):
        load.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(MissingDependencyError, match="CUDA is not available"):
            load.resolve_device("cuda")


def test_resolve_variant():
    assert resolve_variant(None) == "edge_sam_dyt"
    assert resolve_variant(None, hq=True) == "edge_sam_dyt_hq"
    assert resolve_variant("edge_sam_dyt_hq_debug", hq=True) == "edge_sam_dyt_hq_debug"
    with pytest.raises(UnknownVariantError, match="Did you mean 'edge_sam_dyt'"):
        resolve_variant("edge_sam_dty")
    with pytest.raises(ConfigError, match="--hq needs an HQ model"):
        resolve_variant("edge_sam", hq=True)
