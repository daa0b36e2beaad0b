"""The export gate judges ONNX against the float64 model with a tolerance from the fp32 noise floor.

A correct export of weights with trained-like BatchNorm statistics (fp32 itself ~1e-3 from float64) must pass,
and the same gate must fail an export that computes a slightly different function.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.cli.test_segment import run_cli
from tests.export.conftest import make_model
from tests.helpers.realistic import realistic_batchnorm

pytest.importorskip("onnxruntime")


def _checkpoint(tmp_path, variant: str):
    model = realistic_batchnorm(make_model(variant))
    path = tmp_path / f"{variant}.pth"
    torch.save(model.state_dict(), path)  # upstream's plain state-dict format
    return model, path


@pytest.mark.slow
def test_export_onnx_passes_full_size_weights_with_trained_batchnorm_statistics(tmp_path, capsys, monkeypatch):
    model, ckpt = _checkpoint(tmp_path, "edge_sam_dyt")
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        floor = (model.image_encoder(x).double() - copy.deepcopy(model).double().image_encoder(x.double())).abs().max()
    assert floor > 1e-4  # the weights really are ill-conditioned: the old fixed 1e-3-style gate had no margin
    code, out, err = run_cli(["export-onnx", str(ckpt), "--out", str(tmp_path / "out"), "--model", "edge_sam_dyt"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert (tmp_path / "out" / "edge_sam_dyt_encoder.onnx").is_file()
    assert not list((tmp_path / "out").glob(".*.partial"))


def _flip_gelu(model):
    for module in model.modules():
        if isinstance(module, torch.nn.GELU):
            module.approximate = "none" if module.approximate == "tanh" else "tanh"
    return model


def _scale_decoder_dyt_alpha(model):
    from edgesam_core.models.layers.dyt import DynamicTanh

    dyts = [m for m in model.mask_decoder.modules() if isinstance(m, DynamicTanh)]
    with torch.no_grad():
        dyts[0].alpha.mul_(1.01)
    return model


@pytest.mark.parametrize("variant,breakage,role", [
    ("edge_sam_dyt_debug", _flip_gelu, "--encoder-only"),
    ("edge_sam_dyt", _flip_gelu, "--encoder-only"),
    ("edge_sam_dyt_debug", _scale_decoder_dyt_alpha, "--decoder-only"),
])
def test_export_onnx_exits_4_on_a_deliberately_broken_export(tmp_path, capsys, monkeypatch, variant, breakage, role):
    """The exported graph comes from a copy that computes something else (flipped GELU approximation, one DyT
    alpha off by 1 %); the gate compares with the untouched model and must refuse it."""
    import edgesam_core.export.onnx_export as onnx_export

    real_copy = onnx_export.reparameterized_copy
    _, ckpt = _checkpoint(tmp_path, variant)
    broken_calls = []

    def broken_copy(model, *args, **kwargs):
        fused, count = real_copy(model, *args, **kwargs)
        if not broken_calls:  # the first copy is the graph that gets exported; the gate's own copies stay right
            broken_calls.append(True)
            fused = breakage(copy.deepcopy(fused))
        return fused, count

    monkeypatch.setattr(onnx_export, "reparameterized_copy", broken_copy)
    out = tmp_path / "out"
    code, _, err = run_cli(["export-onnx", str(ckpt), "--out", str(out), "--model", variant, role], capsys, monkeypatch)
    assert code == 4, err
    assert "beyond fp32 noise" in err and "Traceback" not in err
    # Files are kept for inspection (exit 4 documents that), with the failing parity in the sidecar.
    import json

    sidecars = [json.loads(p.read_text()) for p in out.glob("*.json")]
    assert sidecars and not all(s["parity"]["passed"] for s in sidecars)


def test_export_interrupted_during_the_check_leaves_no_final_files(tmp_path, monkeypatch):
    """Ctrl+C during the parity check: no file under a final name, no staging leftovers."""
    import edgesam_core.export.onnx_export as onnx_export
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export, "check_parity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(None, OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=tmp_path),
                    model=make_model("edge_sam_dyt_debug"))
    assert list(tmp_path.iterdir()) == []
