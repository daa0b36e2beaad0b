"""ONNX export of debug-size models: I/O contract, parity with PyTorch, multi-box graph, CLI and exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.export.conftest import assert_io_matches, make_model, section_for

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


@pytest.mark.parametrize("variant", ["edge_sam_dyt_debug", "edge_sam_dyt_hq_debug"])
@pytest.mark.parametrize("upsample", [False, True])
def test_debug_io_contract_and_parity(export_factory, io_tables, variant, upsample):
    model, result = export_factory(variant, upsample, multi_box=False)
    hq = "hq" in variant
    for role in ("encoder", "decoder"):
        assert_io_matches(result.files[role], io_tables[section_for(role, hq, upsample)], exact_shapes=False)
    assert result.parity.passed, result.parity.to_dict()
    cases = {e.case for e in result.parity.entries if e.graph == "decoder"}
    assert cases == {"points", "box", "box+points", "labels-2,2,3"}
    assert max(e.max_abs for e in result.parity.entries) < 1e-4
    side = model.img_size if upsample else 4 * model.prompt_encoder.image_embedding_size[0]
    masks = [e for e in result.parity.entries if e.output == "masks"]
    assert masks and all(e.ref_abs_max > 0 for e in masks)
    from edgesam_core.export.parity import decoder_feed, prompt_cases
    from edgesam_core.inference.onnx_predictor import create_session

    emb = np.zeros(onnx_input_shape(result.files["decoder"], "image_embeddings"), np.float32)
    interm = None
    if hq:
        interm = [np.zeros(onnx_input_shape(result.files["decoder"], f"interm_embeddings_{i}"), np.float32)
                  for i in range(3)]
    scores, out = create_session(result.files["decoder"]).run(None, decoder_feed(prompt_cases(model.img_size)["box"],
                                                                                   emb, interm))
    tokens = 1 if hq else 4
    assert scores.shape == (1, tokens) and out.shape == (1, tokens, side, side)


def onnx_input_shape(path, name):
    model = onnx.load(str(path))
    value = next(v for v in model.graph.input if v.name == name)
    return [d.dim_value for d in value.type.tensor_type.shape.dim]


def test_parity_check_would_catch_a_missing_padding_point(dyt_debug_export):
    """The decoder must add SAM's padding token for point-only prompts; without it the logits move > 1e-3."""
    import torch

    from edgesam_core.export.onnx_export import prepare_image
    from edgesam_core.export.parity import decoder_feed, prompt_cases, synthetic_image
    from edgesam_core.inference.onnx_predictor import create_session

    model, result = dyt_debug_export
    case = prompt_cases(model.img_size)["points"]
    with torch.no_grad():
        emb = model.encode_image(prepare_image(model, synthetic_image()))
        _, onnx_masks = create_session(result.files["decoder"]).run(None, decoder_feed(case, emb.numpy(), None))
        sparse, dense = model.prompt_encoder(points=(torch.from_numpy(case["coords"]), torch.from_numpy(case["labels"])),
                                             boxes=None, masks=None)
        pe = model.prompt_encoder.get_dense_pe()
        with_pad, _ = model.mask_decoder(emb, pe, sparse, dense, num_multimask_outputs=4)
        without_pad, _ = model.mask_decoder(emb, pe, sparse[:, :-1], dense, num_multimask_outputs=4)
    assert np.abs(onnx_masks - with_pad.numpy()).max() < 1e-4
    assert np.abs(onnx_masks - without_pad.numpy()).max() > 1e-3


def test_multi_box_graph_equals_single_box_calls(dyt_debug_export):
    import torch

    from edgesam_core.export.onnx_export import prepare_image
    from edgesam_core.export.parity import synthetic_image
    from edgesam_core.inference.onnx_predictor import create_session

    model, result = dyt_debug_export
    assert result.parity.for_graph("decoder_multibox").entries
    single = create_session(result.files["decoder"])
    multi = create_session(result.files["decoder_multibox"])
    with torch.no_grad():
        emb = model.encode_image(prepare_image(model, synthetic_image())).numpy()
    s = model.img_size
    boxes = np.array([[0.1, 0.1, 0.5, 0.6], [0.3, 0.2, 0.9, 0.5], [0.05, 0.4, 0.6, 0.95]], np.float32) * s
    pts = np.array([[[0.4 * s, 0.45 * s], [0.2 * s, 0.2 * s]]], np.float32)
    labels = np.array([[1, 0]], np.float32)
    for n in (1, 3):
        for with_points in (False, True):
            scores, masks = multi.run(None, {"image_embeddings": emb, "point_coords": pts, "point_labels": labels,
                                             "boxes": boxes[:n], "point_valid": np.array([[with_points]])})
            assert scores.shape == (n, 4) and masks.shape[:2] == (n, 4)
            for i in range(n):
                s1, m1 = single.run(None, {"image_embeddings": emb, "point_coords": pts, "point_labels": labels,
                                           "boxes": boxes[i].reshape(1, 1, 4), "point_valid": np.array([[with_points]]),
                                           "boxes_valid": np.array([[True]])})
                assert np.abs(scores[i] - s1[0]).max() < 1e-5
                assert np.abs(masks[i] - m1[0]).max() < 1e-5


def test_exporter_is_the_torchscript_tracer_not_dynamo(monkeypatch, tmp_path):
    """torch 2.14 defaults to dynamo; every export call must ask for the tracer explicitly."""
    import torch

    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx

    calls = []
    real = torch.onnx.export

    def spy(*args, **kwargs):
        calls.append(kwargs.get("dynamo", "default"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", spy)
    model = make_model("edge_sam_dyt_debug")
    result = export_onnx(None, OnnxExportOptions(out_dir=tmp_path, simplify=False), model=model)
    assert calls == [False] * 4  # encoder, decoder, and the staged decoder's two graphs
    sidecar = json.loads(result.sidecars["decoder"].read_text())
    assert "dynamo=False" in sidecar["exporter"]
    # The tracer's data-dependent token selection (bool indexing) is what upstream's graphs contain.
    ops = {n.op_type for n in onnx.load(str(result.files["decoder"])).graph.node}
    assert "NonZero" in ops


def test_sidecar_has_provenance_and_parity(dyt_debug_export):
    _, result = dyt_debug_export
    for role, path in result.sidecars.items():
        meta = json.loads(path.read_text())
        assert path.name == result.files[role].with_suffix(".json").name
        for key in ("model_type", "checkpoint_sha256", "opset", "exporter", "upsample_mode", "io", "parity",
                    "tolerance", "versions", "fused_repvgg_blocks"):
            assert key in meta, key
        assert meta["model_type"] == "edge_sam_dyt_debug" and meta["opset"] == 20
        assert meta["upsample_mode"] == "bicubic" and meta["parity"]["passed"] is True
        assert {"torch", "onnx", "onnxruntime"} <= set(meta["versions"])
        checked_by = "decoder_prompts" if role == "decoder_image" else role  # a stage is checked with its successor
        assert meta["parity"]["entries"] and all(e["graph"] == checked_by for e in meta["parity"]["entries"])


def _save_checkpoint(tmp_path, variant="edge_sam_dyt_debug"):
    import torch

    path = tmp_path / "tiny.pth"
    torch.save(make_model(variant).state_dict(), path)
    return path


def test_cli_export_writes_files_and_parity_failure_exits_4(tmp_path, monkeypatch):
    import hashlib

    import torch
    from typer.testing import CliRunner

    from edgesam_cli.main import app
    from edgesam_core.errors import ExportParityError
    from edgesam_core.export import onnx_export

    ckpt = _save_checkpoint(tmp_path)
    out = tmp_path / "onnx"
    args = ["export-onnx", str(ckpt), "--model", "edge_sam_dyt_debug", "--out", str(out), "--no-simplify"]
    ok = CliRunner().invoke(app, args, terminal_width=200)
    assert ok.exit_code == 0, ok.output
    meta = json.loads((out / "tiny_decoder.json").read_text())
    assert meta["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert "ONNX vs the float64 model" in ok.output and "FAIL" not in ok.output

    real = onnx_export.check_parity

    def perturbed(model, *a, **kw):
        # A weight that changes after export: the ONNX files no longer match the PyTorch model.
        with torch.no_grad():
            model.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.5)
        return real(model, *a, **kw)

    for f in out.iterdir():
        f.unlink()
    monkeypatch.setattr(onnx_export, "check_parity", perturbed)
    failed = CliRunner().invoke(app, args, terminal_width=200)
    # edgesam_cli.main.main() turns the error into its exit_code (4) and a one-line message.
    assert isinstance(failed.exception, ExportParityError) and failed.exception.exit_code == 4
    assert "beyond fp32 noise" in str(failed.exception) and "FAIL" in failed.output
    assert (out / "tiny_encoder.onnx").is_file() and (out / "tiny_decoder.onnx").is_file()
    meta = json.loads((out / "tiny_decoder.json").read_text())
    assert meta["parity"]["passed"] is False


def test_cli_rejects_conflicting_flags(tmp_path):
    from typer.testing import CliRunner

    from edgesam_cli.main import app
    from edgesam_core.errors import ConfigError

    ckpt = tmp_path / "x.pth"
    ckpt.write_bytes(b"unused")
    result = CliRunner().invoke(app, ["export-onnx", str(ckpt), "--encoder-only", "--decoder-only"])
    assert isinstance(result.exception, ConfigError)
    result = CliRunner().invoke(app, ["export-onnx", str(ckpt), "--hq", "--model", "edge_sam_dyt"])
    assert isinstance(result.exception, ConfigError)


@pytest.mark.parametrize("explicit", [False, True])
def test_onnxsim_failure_keeps_the_unsimplified_graph(tmp_path, monkeypatch, explicit):
    """Upstream exits 0 silently; here the default warns, and an explicit --simplify fails (exit 1)."""
    pytest.importorskip("onnxsim")
    import onnxsim

    from edgesam_core.errors import EdgeSamError
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx

    def broken(model, *a, **kw):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    opts = OnnxExportOptions(out_dir=tmp_path, simplify=True if explicit else None, encoder=False)
    model = make_model("edge_sam_dyt_debug")
    if explicit:
        with pytest.raises(EdgeSamError, match="--no-simplify") as info:
            export_onnx(None, opts, model=model)
        assert info.value.exit_code == 1
        result = info.value.result
    else:
        result = export_onnx(None, opts, model=model)
    assert result.parity.passed and result.files["decoder"].is_file()
    assert any("simulated onnxsim crash" in n for n in result.notes)
    meta = json.loads(result.sidecars["decoder"].read_text())
    assert meta["simplified"] is False and meta["notes"]
    assert not list(tmp_path.glob("*.tmp"))
