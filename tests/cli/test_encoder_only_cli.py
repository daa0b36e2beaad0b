"""Encoder-only (step-1) checkpoints through the CLI: --decoder-from, the SAM ViT-H fallback and `weights merge`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli.test_segment import error_lines, run_cli

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

MODEL = "edge_sam_debug"  # LayerNorm decoder: SAM's (vit_b_debug's) decoder fits it unchanged


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """An upstream step-1 file ({'model': unprefixed encoder}), a debug "SAM" and the two merged by hand."""
    from edgesam_core.models import build_sam

    root = tmp_path_factory.mktemp("encoder_only_cli")
    torch.manual_seed(0)
    student = build_sam(MODEL)
    torch.manual_seed(1)
    sam = build_sam("vit_b_debug")
    torch.save({"model": student.image_encoder.state_dict(), "epoch": 0}, root / "step1.pth")
    torch.save(sam.state_dict(), root / "sam.pth")
    full = {k: v for k, v in student.state_dict().items() if k.startswith("image_encoder.")}
    full.update({k: v for k, v in sam.state_dict().items() if k.startswith(("prompt_encoder.", "mask_decoder."))})
    torch.save(full, root / "by_hand.pth")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / "photo.png")
    return {"root": root, "step1": root / "step1.pth", "sam": root / "sam.pth", "by_hand": root / "by_hand.pth",
            "photo": root / "photo.png"}


def _segment(files, checkpoint: Path, out: Path, capsys, monkeypatch, *extra: str) -> tuple[list, str]:
    code, _, stderr = run_cli(["segment", str(files["photo"]), "--box", "10,10,60,50", "--point", "30,30",
                               "--multimask", "--model", MODEL, "--checkpoint", str(checkpoint), "--out", str(out),
                               *extra], capsys, monkeypatch)
    assert code == 0, stderr
    masks = json.loads((out / "photo.json").read_text())["masks"]
    return [(m["score"], m["segmentation"]["counts"]) for m in masks], stderr


def test_segment_with_decoder_from_equals_the_merged_model(files, tmp_path, capsys, monkeypatch):
    want, _ = _segment(files, files["by_hand"], tmp_path / "a", capsys, monkeypatch)
    got, _ = _segment(files, files["step1"], tmp_path / "b", capsys, monkeypatch, "--decoder-from", str(files["sam"]))
    assert got == want and len(got) == 3


def test_segment_falls_back_to_published_vit_h_once(files, tmp_path, capsys, monkeypatch):
    from edgesam_core import weight_registry as weights

    # A local mirror stands in for the SAM ViT-H download; the entry keeps its name, the file is the debug SAM.
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "sam_debug.pth").write_bytes(files["sam"].read_bytes())
    monkeypatch.setitem(weights.REGISTRY, "vit_h", weights.WeightsEntry(
        "vit_h", "vit_b_debug", "sam_debug.pth", "SAM ViT-H (test stand-in)", url="https://unused.invalid/x"))
    monkeypatch.setenv(weights.MIRROR_ENV, str(mirror))
    monkeypatch.setenv(weights.HOME_ENV, str(tmp_path / "home"))
    want, _ = _segment(files, files["by_hand"], tmp_path / "a", capsys, monkeypatch)
    got, stderr = _segment(files, files["step1"], tmp_path / "b", capsys, monkeypatch)
    assert got == want
    assert "step1.pth is encoder-only" in stderr and "--decoder-from" in stderr
    assert (tmp_path / "home" / "weights" / "sam_debug.pth").is_file()
    # Full checkpoints never look for a decoder.
    _, stderr = _segment(files, files["by_hand"], tmp_path / "c", capsys, monkeypatch)
    assert "encoder-only" not in stderr


def test_evaluate_with_decoder_from_equals_the_merged_model(files, tmp_path, capsys, monkeypatch):
    from tests.training.conftest import write_sa1b

    data = write_sa1b(tmp_path / "sa1b", split="val", count=1, masks=2)
    reports = []
    for name, extra in (("by_hand", []), ("step1", ["--decoder-from", str(files["sam"])])):
        code, stdout, stderr = run_cli(["evaluate", "--checkpoint", str(files[name]), "--model", MODEL,
                                        "--data-root", str(data), "--refine-clicks", "1", "--out",
                                        str(tmp_path / name), "--json", *extra], capsys, monkeypatch)
        assert code == 0, stderr
        reports.append(json.loads(stdout)["clicks"])
    assert reports[0] == reports[1] and reports[0][0]["all"]["miou"] is not None


def test_export_onnx_of_an_encoder_only_checkpoint(files, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    code, stdout, stderr = run_cli(["export-onnx", str(files["step1"]), "--decoder-from", str(files["sam"]),
                                    "--model", MODEL, "--out", str(tmp_path), "--no-simplify",
                                    "--json"], capsys, monkeypatch)
    assert code == 0, stderr
    payload = json.loads(stdout)
    # The contract pair plus the staged decoder the ONNX predictor runs.
    assert set(payload["files"]) == {"encoder", "decoder", "decoder_image", "decoder_prompts"}
    assert payload["parity"]["passed"]
    assert Path(payload["files"]["encoder"]).name == "step1_encoder.onnx"
    assert json.loads(Path(payload["sidecars"]["decoder"]).read_text())["model_type"] == MODEL


def test_weights_merge_cli(files, tmp_path, capsys, monkeypatch):
    from edgesam_core.models import build_sam

    out = tmp_path / "full.pth"
    code, stdout, stderr = run_cli(["weights", "merge", str(files["step1"]), "--decoder-from", str(files["sam"]),
                                    "--out", str(out)], capsys, monkeypatch)
    assert code == 0, stderr
    assert stdout.strip() == str(out) and f"'{MODEL}'" in stderr  # variant recognised from the encoder layout
    merged = build_sam(MODEL, out).state_dict()
    by_hand = torch.load(files["by_hand"], weights_only=True)
    assert merged.keys() == by_hand.keys() and all(torch.equal(merged[k], by_hand[k]) for k in merged)

    code, _, stderr = run_cli(["weights", "merge", str(out), "--decoder-from", str(files["sam"]), "--out",
                               str(tmp_path / "again.pth")], capsys, monkeypatch)
    [line] = error_lines(stderr)
    assert code != 0 and "not an encoder-only checkpoint" in line and not (tmp_path / "again.pth").exists()


def test_incompatible_decoder_from_is_one_error_line(files, tmp_path, capsys, monkeypatch):
    # The decoder of a DyT model does not fit edge_sam's LayerNorm decoder.
    from edgesam_core.models import build_sam

    torch.save(build_sam("edge_sam_dyt_debug").state_dict(), tmp_path / "dyt.pth")
    code, _, stderr = run_cli(["segment", str(files["photo"]), "--point", "30,30", "--model", MODEL,
                               "--checkpoint", str(files["step1"]), "--decoder-from", str(tmp_path / "dyt.pth"),
                               "--out", str(tmp_path / "o")], capsys, monkeypatch)
    [line] = error_lines(stderr)
    assert code != 0 and "decoder source" in line and "dyt.pth" in line and "unexpected keys" in line
