"""Bad input across every subcommand, through the installed ``edgesam`` executable.

Each row must end with a non-zero exit (2 for bad input), one ``Error:`` line that names the problem, no
traceback, and no file created, changed or deleted outside the row's ``--out`` folder.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXECUTABLE = Path(sys.executable).with_name("edgesam")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace of inputs: a debug checkpoint, photos, a corrupt and a swapped ONNX pair, bad text files."""
    import torch

    from edgesam_core.models import build_sam

    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    model = build_sam("edge_sam_dyt_debug")
    torch.save(model.state_dict(), root / "tiny.pth")
    torch.save(model.image_encoder.state_dict(), root / "encoder_only.pth")  # upstream's step-1 layout
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    Image.fromarray(rng.integers(0, 255, (1, 4000, 3), dtype=np.uint8)).save(root / "thin.png")
    (root / "photos").mkdir()
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "photos" / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / "photos" / "a_mask0.png")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "m_encoder.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 20)
    (root / "corrupt" / "m_decoder.onnx").write_bytes(b"\x00\xff" * 100)
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00bad" * 50)
    (root / "not_a_checkpoint.pth").write_bytes(b"PK\x03\x04 truncated zip")
    (root / "empty").mkdir()
    (root / "one_image_boxes.json").write_text("[[1, 2, 30, 40]]")
    (root / "flipped_box.json").write_text('{"photo.png": [[30, 2, 1, 40]]}')
    (root / "other_image_boxes.json").write_text('{"elsewhere.png": [[1, 2, 30, 40]]}')
    return root


def _swapped_pair(ws: Path) -> Path:
    """A real ONNX pair whose files carry each other's names (made once, lazily: it needs an export)."""
    folder = ws / "swapped"
    if not folder.is_dir():
        from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx

        real = ws / "real_onnx"
        export_onnx(ws / "tiny.pth", OnnxExportOptions(model_type="edge_sam_dyt_debug", out_dir=real, name="m"))
        folder.mkdir()
        (folder / "m_encoder.onnx").write_bytes((real / "m_decoder.onnx").read_bytes())
        (folder / "m_decoder.onnx").write_bytes((real / "m_encoder.onnx").read_bytes())
    return folder / "m_encoder.onnx"


# (id, args with {ws} and {out}, expected exit code, a word the message must contain)
CASES: list[tuple[str, list[str], int, str]] = [
    # the app itself
    ("unknown-command", ["frobnicate"], 2, "frobnicate"),
    ("unknown-option", ["segment", "{ws}/photo.png", "--bogus"], 2, "--bogus"),
    # segment
    ("segment-task-and-point", ["segment", "{ws}/photo.png", "--task", "x", "--point", "1,1", "--out", "{out}"], 2,
     "--task"),
    ("segment-task-without-tasks-file", ["segment", "{ws}/photo.png", "--checkpoint", "{ws}/tiny.pth", "--model",
                                         "edge_sam_dyt_debug", "--task", "x", "--out", "{out}"], 2, "No tasks file"),
    ("segment-missing-image", ["segment", "{ws}/nope.jpg", "--point", "1,1", "--out", "{out}"], 2, "nope.jpg"),
    ("segment-bad-point", ["segment", "{ws}/photo.png", "--point", "1;1", "--out", "{out}"], 2, "--point"),
    ("segment-point-outside", ["segment", "{ws}/photo.png", "--point", "500,1", "--checkpoint", "{ws}/tiny.pth",
                               "--out", "{out}"], 2, "outside"),
    ("segment-fast-without-everything", ["segment", "{ws}/photo.png", "--point", "1,1", "--fast",
                                         "--checkpoint", "{ws}/tiny.pth", "--out", "{out}"], 2, "--everything"),
    ("segment-proposals-without-everything", ["segment", "{ws}/photo.png", "--point", "1,1", "--proposals",
                                              "{ws}/one_image_boxes.json", "--out", "{out}"], 2, "--everything"),
    ("segment-proposals-not-json", ["segment", "{ws}/photo.png", "--everything", "--proposals", "{ws}/binary.txt",
                                    "--checkpoint", "{ws}/tiny.pth", "--out", "{out}"], 2, "not JSON"),
    ("segment-proposals-flipped-box", ["segment", "{ws}/photo.png", "--everything", "--proposals",
                                       "{ws}/flipped_box.json", "--checkpoint", "{ws}/tiny.pth", "--out", "{out}"], 2,
     "x1 > x0"),
    ("segment-proposals-no-entry", ["segment", "{ws}/photo.png", "--everything", "--proposals",
                                    "{ws}/other_image_boxes.json", "--checkpoint", "{ws}/tiny.pth", "--out", "{out}"],
     2, "no boxes for photo.png"),
    ("segment-proposals-not-a-head", ["segment", "{ws}/photo.png", "--everything", "--proposals", "{ws}/tiny.pth",
                                     "--checkpoint", "{ws}/tiny.pth", "--out", "{out}"], 2, "not a proposals file"),
    ("segment-proposals-list-for-folder", ["segment", "{ws}/photos", "--everything", "--proposals",
                                           "{ws}/one_image_boxes.json", "--checkpoint", "{ws}/tiny.pth", "--out",
                                           "{out}"], 2, "map file names"),
    ("segment-no-prompt", ["segment", "{ws}/photo.png", "--checkpoint", "{ws}/tiny.pth", "--out", "{out}"], 2,
     "prompt"),
    ("segment-out-is-input-folder", ["segment", "{ws}/photos", "--point", "10,10", "--checkpoint", "{ws}/tiny.pth",
                                     "--out", "{ws}/photos"], 2, "input folder"),
    ("segment-thin-image", ["segment", "{ws}/thin.png", "--point", "10,0", "--checkpoint", "{ws}/tiny.pth",
                            "--out", "{out}"], 2, "too thin"),
    ("segment-corrupt-onnx", ["segment", "{ws}/photo.png", "--point", "5,5", "--checkpoint",
                              "{ws}/corrupt/m_encoder.onnx", "--out", "{out}"], 2, "not an ONNX model"),
    ("segment-swapped-onnx", ["segment", "{ws}/photo.png", "--point", "5,5", "--checkpoint", "{swapped}",
                              "--out", "{out}"], 2, "swapped"),
    ("segment-not-a-checkpoint", ["segment", "{ws}/photo.png", "--point", "5,5", "--checkpoint",
                                  "{ws}/not_a_checkpoint.pth", "--out", "{out}"], 2, "not_a_checkpoint.pth"),
    ("segment-image-is-text", ["segment", "{ws}/binary.txt", "--point", "5,5", "--checkpoint", "{ws}/tiny.pth",
                               "--out", "{out}"], 2, "binary.txt"),
    ("segment-unknown-model", ["segment", "{ws}/photo.png", "--point", "5,5", "--model", "vit_z", "--out", "{out}"],
     2, "vit_z"),
    ("segment-label-count", ["segment", "{ws}/photo.png", "--point", "5,5", "--label", "1", "--label", "0",
                             "--checkpoint", "{ws}/tiny.pth", "--out", "{out}"], 2, "--label"),
    # export-onnx
    ("export-missing-checkpoint", ["export-onnx", "/nope.pth"], 2, "/nope.pth"),
    ("export-not-a-checkpoint", ["export-onnx", "{ws}/not_a_checkpoint.pth", "--out", "{out}"], 2,
     "not_a_checkpoint.pth"),
    ("export-wrong-variant", ["export-onnx", "{ws}/tiny.pth", "--model", "vit_b", "--out", "{out}"], 2, "vit_b"),
    ("export-bad-opset", ["export-onnx", "{ws}/tiny.pth", "--opset", "99", "--out", "{out}"], 2, "--opset"),
    ("export-both-only", ["export-onnx", "{ws}/tiny.pth", "--encoder-only", "--decoder-only", "--out", "{out}"], 2,
     "--decoder-only"),
    ("export-bad-upsample-mode", ["export-onnx", "{ws}/tiny.pth", "--upsample-mode", "lanczos", "--out", "{out}"],
     2, "lanczos"),
    # quantize
    ("quantize-corrupt-onnx", ["quantize", "{ws}/corrupt/m_encoder.onnx", "--calib", "{ws}/photos", "--out",
                               "{out}"], 2, "ONNX"),
    ("quantize-swapped-onnx", ["quantize", "{swapped}", "--calib", "{ws}/photos", "--out", "{out}"], 2, "swapped"),
    ("quantize-empty-calib", ["quantize", "{ws}/tiny.pth", "--model", "edge_sam_dyt_debug", "--calib", "{ws}/empty",
                              "--out", "{out}"], 2, "empty"),
    ("quantize-no-calib", ["quantize", "{ws}/tiny.pth"], 2, "--calib"),
    # convert-tflite / build-trt
    ("tflite-missing-source", ["convert-tflite", "{ws}/none_encoder.onnx"], 2, "none_encoder.onnx"),
    ("tflite-bad-points", ["convert-tflite", "{ws}/tiny.pth", "--num-points", "0"], 2, "--num-points"),
    ("trt-bad-precision", ["build-trt", "{ws}/tiny.pth", "--precision", "int3", "--out", "{out}"], 2, "int3"),
    ("trt-missing-source", ["build-trt", "{ws}/none_decoder.onnx"], 2, "none_decoder.onnx"),
    # export-executorch / export-coreml (checked before the runtime is imported: no extra needed)
    ("executorch-int8-without-calib", ["export-executorch", "{ws}/tiny.pth", "--int8", "--out", "{out}"], 2,
     "--calib"),
    ("executorch-missing-checkpoint", ["export-executorch", "{ws}/nope.pth"], 2, "nope.pth"),
    ("coreml-bad-precision", ["export-coreml", "{ws}/tiny.pth", "--precision", "int4", "--out", "{out}"], 2,
     "int4"),
    # export-web (checked before anything is exported or fetched)
    ("web-out-not-empty", ["export-web", "{ws}/tiny.pth", "--model", "edge_sam_dyt_debug", "--out", "{ws}/photos"],
     2, "not empty"),
    ("web-int8-without-calib", ["export-web", "{ws}/tiny.pth", "--int8", "--out", "{out}"], 2, "--calib"),
    ("web-ort-not-the-package", ["export-web", "{ws}/tiny.pth", "--model", "edge_sam_dyt_debug", "--ort-web",
                                 "{ws}/binary.txt", "--out", "{out}"], 2, "npm registry"),
    # download-data
    ("download-too-many-jobs", ["download-data", "--jobs", "99"], 2, "--jobs"),
    ("download-binary-links", ["download-data", "--links", "{ws}/binary.txt", "--out", "{out}"], 2, "binary.txt"),
    ("download-bad-split", ["download-data", "--links", "{ws}/binary.txt", "--split", "test", "--out", "{out}"], 2,
     "test"),
    # distill
    ("distill-bad-step", ["distill", "--step", "7"], 2, "--step"),
    ("distill-binary-config", ["distill", "--step", "1", "--config", "{ws}/binary.yaml", "--out", "{out}"], 2,
     "binary.yaml"),
    ("distill-unknown-key", ["distill", "--step", "1", "--set", "train.bogus_key=1", "--out", "{out}"], 2,
     "bogus_key"),
    ("distill-no-teacher", ["distill", "--step", "1", "--resume", "{ws}/not_a_checkpoint.pth",
                            "--data-root", "{ws}/empty", "--out", "{out}"], 2, "--teacher-checkpoint"),
    ("distill-resume-and-auto", ["distill", "--step", "1", "--resume", "{ws}/not_a_checkpoint.pth",
                                 "--auto-resume"], 2, "--auto-resume"),
    # finetune
    ("finetune-not-a-dataset", ["finetune", "{ws}/tiny.pth", "--data", "{ws}/empty", "--out", "{out}"], 2,
     "neither a COCO"),
    ("finetune-bad-train", ["finetune", "{ws}/tiny.pth", "--data", "{ws}/photos", "--train", "everything",
                            "--out", "{out}"], 2, "--train"),
    ("finetune-corrupt-coco", ["finetune", "{ws}/tiny.pth", "--data", "{ws}/binary.yaml", "--out", "{out}"], 2,
     "binary.yaml"),
    ("finetune-dense-without-prompt", ["finetune", "{ws}/tiny.pth", "--data", "{ws}/photos", "--task-dense",
                                       "--out", "{out}"], 2, "--task-dense"),
    # evaluate
    ("evaluate-save-masks-resume", ["evaluate", "--checkpoint", "{ws}/tiny.pth", "--data-root", "{ws}/empty",
                                    "--save-masks", "--resume", "--out", "{out}"], 2, "--save-masks"),
    ("evaluate-bad-data", ["evaluate", "--checkpoint", "{ws}/tiny.pth", "--data", "imagenet", "--data-root",
                           "{ws}/empty"], 2, "imagenet"),
    ("evaluate-empty-root", ["evaluate", "--checkpoint", "{ws}/tiny.pth", "--data-root", "{ws}/empty", "--out",
                             "{out}"], 2, "empty"),
    ("evaluate-bad-prompt", ["evaluate", "--checkpoint", "{ws}/tiny.pth", "--data-root", "{ws}/empty", "--prompt",
                             "lasso"], 2, "lasso"),
    # benchmark
    ("benchmark-huge-image", ["benchmark", "--model", "edge_sam_dyt_debug", "--image-size", "100000x100000"], 2,
     "--image-size"),
    ("benchmark-bad-size", ["benchmark", "--image-size", "axb"], 2, "--image-size"),
    ("benchmark-unknown-backend", ["benchmark", "--backends", "torch,cuda-magic"], 2, "cuda-magic"),
    ("benchmark-corrupt-onnx", ["benchmark", "--checkpoint", "{ws}/corrupt/m_encoder.onnx", "--backends", "onnx",
                                "--runs", "1", "--warmup", "0"], 2, "ONNX"),
    # weights
    ("weights-unknown-name", ["weights", "download", "sam_vit_z"], 2, "sam_vit_z"),
    ("weights-merge-out-in-proc", ["weights", "merge", "{ws}/encoder_only.pth", "--decoder-from", "{ws}/tiny.pth",
                                   "--model", "edge_sam_dyt_debug", "--out", "/proc/x/y.pth"], 2, "/proc/x"),
    ("weights-merge-full-checkpoint", ["weights", "merge", "{ws}/tiny.pth", "--out", "{out}/m.pth"], 2,
     "not an encoder-only"),
    ("weights-merge-not-a-checkpoint", ["weights", "merge", "{ws}/not_a_checkpoint.pth", "--out", "{out}/m.pth"],
     2, "not_a_checkpoint.pth"),
    # demo
    ("demo-nan-megapixels", ["demo", "--checkpoint", "{ws}/tiny.pth", "--max-megapixels", "nan"], 2,
     "--max-megapixels"),
    ("demo-bad-port", ["demo", "--port", "70000"], 2, "--port"),
    ("demo-corrupt-onnx", ["demo", "--checkpoint", "{ws}/corrupt/m_encoder.onnx", "--port", "0"], 2, "ONNX"),
    ("demo-client-side-not-a-site", ["demo", "--client-side", "{ws}/photos", "--port", "0"], 2, "export-web"),
    ("demo-client-side-and-checkpoint", ["demo", "--client-side", "{ws}/photos", "--checkpoint", "{ws}/tiny.pth"],
     2, "--client-side"),
    ("demo-not-a-tasks-file", ["demo", "--checkpoint", "{ws}/tiny.pth", "--model", "edge_sam_dyt_debug", "--tasks",
                               "{ws}/binary.txt", "--port", "0"], 2, "not a tasks file"),
    ("demo-negative-upload", ["demo", "--checkpoint", "{ws}/tiny.pth", "--max-upload-mb", "-5"], 2,
     "--max-upload-mb"),
]


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    state = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and skip not in path.parents:
            state[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.mark.parametrize(("args", "code", "word"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(ws, tmp_path, args, code, word):
    out = tmp_path / "out"
    swapped = str(_swapped_pair(ws)) if any("{swapped}" in a for a in args) else ""
    argv = [a.format(ws=ws, out=out, swapped=swapped) for a in args]
    before = _snapshot(ws, out)
    env = {**os.environ, "COLUMNS": "200", "EDGESAM_HOME": str(tmp_path / "home"),
           "EDGESAM_WEIGHTS_MIRROR": str(tmp_path / "no_mirror")}
    env.pop("EDGESAM_DEBUG", None)
    proc = subprocess.run([str(EXECUTABLE), *argv], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error:"), proc.stderr
    assert word.lower() in errors[0].lower(), errors[0]
    assert _snapshot(ws, out) == before, "an input file was created, changed or deleted"


def test_the_table_covers_every_subcommand():
    from edgesam_cli.main import _COMMANDS

    covered = {c[1][0] for c in CASES}
    assert {name for name, _, _ in _COMMANDS} <= covered
    assert len(CASES) >= 40


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    """SIGINT while a long command runs: 'Interrupted.' on stderr, exit 130, no traceback."""
    import signal
    import time

    proc = subprocess.Popen([str(EXECUTABLE), "benchmark", "--model", "edge_sam_dyt_debug", "--backends", "torch",
                             "--runs", "100000", "--warmup", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "200"})
    time.sleep(8)  # past start-up: the model is built and timing
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err + out
    assert "Interrupted." in [line.strip() for line in err.splitlines()]
