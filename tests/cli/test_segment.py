"""`edgesam segment` end to end on a tiny model: outputs, and one clear line + exit code per bad input."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.perturb import perturb_prompt_path

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

DEBUG = "edge_sam_dyt_debug"


def run_cli(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run ``edgesam ARGS`` in-process through the real entry point; return (exit code, stdout, stderr)."""
    from edgesam_cli.main import main

    monkeypatch.setattr(sys, "argv", ["edgesam", *args])
    monkeypatch.delenv("EDGESAM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    code = info.value.code if isinstance(info.value.code, int) else (0 if info.value.code is None else 1)
    return code, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def _photo(h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 2, y * 2, (x + y)], axis=-1).astype(np.float64) + rng.normal(0, 5, (h, w, 3))
    image[20:60, 30:80] = (200, 40, 40)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with a debug checkpoint in upstream's training format ({'model': state_dict}) and photos."""
    from edgesam_core.models import build_sam

    root = tmp_path_factory.mktemp("segment_cli")
    torch.manual_seed(0)
    torch.save({"model": build_sam(DEBUG).state_dict()}, root / "ckpt.pth")
    torch.manual_seed(0)
    # A decoder spread wide enough that masks are stable (logits far from 0): the automatic mask generator's
    # default thresholds (stability >= 0.95) then keep several masks (6 on this photo).
    torch.save(perturb_prompt_path(build_sam(DEBUG), 1, 1.0).state_dict(), root / "stable.pth")
    torch.manual_seed(0)
    torch.save({"model": build_sam("vit_b_debug").state_dict()}, root / "vitb.pth")
    torch.manual_seed(0)
    torch.save(build_sam("edge_sam_dyt_hq_debug").state_dict(), root / "hq.pth")  # plain state-dict format
    data = (root / "ckpt.pth").read_bytes()
    (root / "truncated.pth").write_bytes(data[: len(data) // 3])
    Image.fromarray(_photo()).save(root / "photo.jpg", quality=95)
    return root


def test_point_prompt_writes_mask_overlay_and_json(workdir, tmp_path, capsys, monkeypatch):
    from pycocotools import mask as mask_utils

    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--point", "60,45", "--model", DEBUG,
                                    "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(out)],
                                   capsys, monkeypatch)
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["photo.json", "photo_mask0.png", "photo_overlay.png"]
    assert "photo_mask0.png" in stdout
    doc = json.loads((out / "photo.json").read_text())
    assert doc["model"] == DEBUG and doc["checkpoint"].endswith("ckpt.pth")
    [record] = doc["masks"]
    png = np.asarray(Image.open(out / "photo_mask0.png"))
    assert png.shape == (90, 120)
    rle = record["segmentation"]
    assert isinstance(rle["counts"], str) and rle["size"] == [90, 120]
    decoded = mask_utils.decode({**rle, "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), png == 255)
    assert record["area"] == int((png == 255).sum()) and 0.0 <= record["score"] <= 1.0
    assert record["prompt"]["points"] == [[60.0, 45.0]] and record["prompt"]["labels"] == [1]


def test_boxes_labels_and_multimask(workdir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--box", "10,10,70,60", "--box",
                               "30,20,110,85", "--point", "40,30", "--label", "1", "--negative-point", "5,5",
                               "--multimask", "--model", DEBUG, "--checkpoint", str(workdir / "ckpt.pth"),
                               "--out", str(out)], capsys, monkeypatch)
    assert code == 0, stderr
    doc = json.loads((out / "photo.json").read_text())
    assert len(doc["masks"]) == 6  # 2 boxes x 3 candidates
    assert doc["masks"][0]["prompt"]["labels"] == [1, 0] and doc["masks"][3]["prompt"]["box"] == [30, 20, 110, 85]


def test_hq_model_gives_one_mask_per_prompt(workdir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--point", "40,30", "--box", "10,10,70,60",
                               "--box", "30,20,110,85", "--hq", "--model", "edge_sam_dyt_hq_debug",
                               "--checkpoint", str(workdir / "hq.pth"), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, stderr
    assert len(json.loads((out / "photo.json").read_text())["masks"]) == 2
    code, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--point", "40,30", "--multimask",
                               "--model", "edge_sam_dyt_hq_debug", "--checkpoint", str(workdir / "hq.pth"),
                               "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and error_lines(stderr) == ["Error: HQ models predict one mask per prompt; drop --multimask"]


def test_model_is_recognised_from_the_checkpoint(workdir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--box", "10,10,70,60", "--checkpoint",
                               str(workdir / "hq.pth"), "--out", str(out)], capsys, monkeypatch)
    assert code == 0, stderr
    assert json.loads((out / "photo.json").read_text())["model"] == "edge_sam_dyt_hq_debug"
    code, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--box", "10,10,70,60", "--hq",
                               "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and error_lines(stderr) == ["Error: --hq needs an HQ model, but ckpt.pth is not one"]


def test_image_modes_are_converted(workdir, tmp_path, capsys, monkeypatch):
    photo = _photo()
    Image.fromarray(photo).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(photo).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(tmp_path / "deep.png")
    for name in ("gray.png", "rgba.png", "deep.png"):
        code, _, stderr = run_cli(["segment", str(tmp_path / name), "--point", "10,10", "--model", DEBUG,
                                   "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(tmp_path / "o")],
                                  capsys, monkeypatch)
        assert code == 0, (name, stderr)
        assert (tmp_path / "o" / f"{Path(name).stem}_mask0.png").exists()


def test_exif_rotated_jpeg_uses_displayed_coordinates(workdir, tmp_path, capsys, monkeypatch):
    """Stored 120x90 landscape with Orientation=6 is displayed 90x120 portrait; (80, 110) exists only there."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_photo()).save(tmp_path / "rot.jpg", exif=exif)
    args = ["segment", str(tmp_path / "rot.jpg"), "--point", "80,110", "--model", DEBUG,
            "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(tmp_path / "o")]
    code, _, stderr = run_cli(args, capsys, monkeypatch)
    assert code == 0, stderr
    assert np.asarray(Image.open(tmp_path / "o" / "rot_mask0.png")).shape == (120, 90)
    assert Image.open(tmp_path / "o" / "rot_overlay.png").size == (90, 120)


def test_folder_input(workdir, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_photo(seed=i)).save(folder / f"img{i}.png")
    code, _stdout, stderr = run_cli(["segment", str(folder), "--box", "5,5,100,80", "--model", DEBUG,
                                    "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(tmp_path / "o")],
                                   capsys, monkeypatch)
    assert code == 0, stderr
    for i in range(3):
        assert (tmp_path / "o" / f"img{i}.json").exists() and (tmp_path / "o" / f"img{i}_mask0.png").exists()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, _, stderr = run_cli(["segment", str(folder), "--box", "5,5,100,80", "--model", DEBUG,
                               "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(tmp_path / "o")],
                              capsys, monkeypatch)
    assert code == 2 and error_lines(stderr) == ["Error: 1 of 4 images could not be segmented (see above)"]


def test_everything(workdir, tmp_path, capsys, monkeypatch):
    code, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--everything", "--model", DEBUG,
                               "--checkpoint", str(workdir / "stable.pth"), "--out", str(tmp_path / "o")],
                              capsys, monkeypatch)
    assert code == 0, stderr
    doc = json.loads((tmp_path / "o" / "photo.json").read_text())
    assert (tmp_path / "o" / "photo_overlay.png").exists()
    # The CLI writes exactly what the library's generator finds on the same image and weights, and finds some.
    from edgesam_core.inference.artifact_loader import load_predictor
    from edgesam_core.inference.image_io import load_image
    from edgesam_core.inference.segment_job import predict_everything

    library = predict_everything(load_predictor(workdir / "stable.pth", model=DEBUG), load_image(workdir / "photo.jpg"))
    assert len(doc["masks"]) == len(library) > 0
    assert [m["area"] for m in doc["masks"]] == [int(r.mask.sum()) for r in library]
    assert len(list((tmp_path / "o").glob("photo_mask*.png"))) == len(doc["masks"])


def test_everything_with_box_proposals(workdir, tmp_path, capsys, monkeypatch):
    """--proposals: one decoder prompt per detector box, the same masks as the library's generator on the same
    boxes (clipped to the photo), each mask's JSON prompt naming its box; a folder maps file names to boxes."""
    from edgesam_core.inference.artifact_loader import load_predictor
    from edgesam_core.inference.image_io import load_image
    from edgesam_core.inference.segment_job import predict_everything

    boxes = [[10, 12, 70, 60], [25, 15, 85, 65], [-3, 30, 50, 95]]  # the last overhangs: clipped to 0..120 x 0..90
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    args = ["--everything", "--model", DEBUG, "--checkpoint", str(workdir / "stable.pth")]
    code, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), *args, "--proposals",
                               str(tmp_path / "boxes.json"), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 0, stderr
    doc = json.loads((tmp_path / "o" / "photo.json").read_text())
    clipped = np.array([[10, 12, 70, 60], [25, 15, 85, 65], [0, 30, 50, 90]], np.float64)
    library = predict_everything(load_predictor(workdir / "stable.pth", model=DEBUG), load_image(workdir / "photo.jpg"),
                                 boxes=clipped)
    assert len(doc["masks"]) == len(library) > 0
    assert [m["prompt"] for m in doc["masks"]] == [r.prompt for r in library]
    assert all(m["prompt"]["box"] in clipped.tolist() for m in doc["masks"])
    assert [m["area"] for m in doc["masks"]] == [int(r.mask.sum()) for r in library]
    assert doc["job"]["prompts"]["proposals"]["file"] == "boxes.json"

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((workdir / "photo.jpg").read_bytes())
    (folder / "b.jpg").write_bytes((workdir / "photo.jpg").read_bytes())
    (tmp_path / "per_image.json").write_text(json.dumps({"a.jpg": boxes, "b.jpg": []}))
    code, _, stderr = run_cli(["segment", str(folder), *args, "--proposals", str(tmp_path / "per_image.json"),
                               "--out", str(tmp_path / "f")], capsys, monkeypatch)
    assert code == 0, stderr
    a = json.loads((tmp_path / "f" / "a.json").read_text())
    assert [m["area"] for m in a["masks"]] == [m["area"] for m in doc["masks"]]
    assert json.loads((tmp_path / "f" / "b.json").read_text())["masks"] == []


def test_missing_checkpoint_fetches_published_weights_lazily(workdir, tmp_path, capsys, monkeypatch):
    calls = []

    def ensure_weights(variant, progress=None):
        calls.append(variant)
        return workdir / "ckpt.pth"

    monkeypatch.setitem(sys.modules, "edgesam_core.weight_registry",
                        types.SimpleNamespace(ensure_weights=ensure_weights))
    code, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--point", "5,5", "--model", DEBUG,
                               "--out", str(tmp_path / "o")], capsys, monkeypatch)
    assert code == 0, stderr
    assert calls == [DEBUG]


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--point", "500;375"], 2, "Malformed --point '500;375'"),
        (["--point", "500,375"], 2, "Point 500,375 is outside photo.jpg (120x90)"),
        (["--box", "50,10,20,40"], 2, "x1 (20) must be greater than x0 (50)"),
        (["--box", "10,10,200,40"], 2, "Box 10,10,200,40 is outside photo.jpg"),
        ([], 2, "No prompt given"),
        (["--point", "5,5", "--everything"], 2, "--everything segments the whole image"),
        (["--point", "5,5", "--model", "edge_sam_dty_debug"], 2, "Did you mean 'edge_sam_dyt_debug'?"),
        (["--point", "5,5", "--hq"], 2, "--hq needs an HQ model"),
        (["--point", "5,5", "--label", "1", "--label", "0"], 2, "one --label per --point"),
    ],
)
def test_bad_arguments(workdir, tmp_path, capsys, monkeypatch, extra, code, message):
    args = ["segment", str(workdir / "photo.jpg"), "--checkpoint", str(workdir / "ckpt.pth"),
            "--out", str(tmp_path / "o"), *extra]
    if "--model" not in extra:
        args += ["--model", DEBUG]
    got, _, stderr = run_cli(args, capsys, monkeypatch)
    lines = error_lines(stderr)
    assert got == code and len(lines) == 1 and message in lines[0], stderr


def _missing(folder: Path) -> Path:
    return folder / "missing.jpg"


def _text_file(folder: Path) -> Path:
    (folder / "notes.jpg").write_text("plain text, not a JPEG")
    return folder / "notes.jpg"


def _truncated_jpeg(folder: Path) -> Path:
    Image.fromarray(_photo()).save(folder / "full.jpg", quality=95)
    (folder / "cut.jpg").write_bytes((folder / "full.jpg").read_bytes()[:400])
    return folder / "cut.jpg"


@pytest.mark.parametrize(
    ("make", "message"),
    [(_missing, "Image not found"), (_text_file, "Not an image file"), (_truncated_jpeg, "Corrupt or truncated")],
)
def test_bad_images(workdir, tmp_path, capsys, monkeypatch, make, message):
    image = make(tmp_path)
    got, _, stderr = run_cli(["segment", str(image), "--point", "5,5", "--model", DEBUG, "--checkpoint",
                              str(workdir / "ckpt.pth"), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    lines = error_lines(stderr)
    assert got == 2 and len(lines) == 1 and message in lines[0], stderr
    assert not (tmp_path / "o").exists()  # input is checked before anything is created


@pytest.mark.parametrize(
    ("checkpoint", "code", "message"),
    [("vitb.pth", 2, DEBUG), ("truncated.pth", 2, "truncated.pth"), ("nothere.pth", 2, "Checkpoint not found")],
)
def test_bad_checkpoints(workdir, tmp_path, capsys, monkeypatch, checkpoint, code, message):
    got, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--point", "5,5", "--model", DEBUG,
                              "--checkpoint", str(workdir / checkpoint), "--out", str(tmp_path / "o")],
                             capsys, monkeypatch)
    lines = error_lines(stderr)
    assert got == code and len(lines) == 1 and message in lines[0], stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing written


def test_unwritable_output_folder(workdir, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    got, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--point", "5,5", "--model", DEBUG,
                              "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(blocker / "out")],
                             capsys, monkeypatch)
    lines = error_lines(stderr)
    assert got == 2 and len(lines) == 1 and "Cannot write to output folder" in lines[0], stderr


@pytest.mark.slow
def test_fullsize_default_model_on_a_photo(tmp_path, capsys, monkeypatch):
    """The README example: default model (edge_sam_dyt, 1024 input), upstream training-format checkpoint."""
    import matplotlib
    from pycocotools import mask as mask_utils

    from edgesam_core.models import build_sam

    sample = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    photo = tmp_path / "photo.jpg"
    if sample.exists():
        photo.write_bytes(sample.read_bytes())  # 512x600 portrait photograph
    else:
        Image.fromarray(_photo(600, 512)).save(photo)
    torch.manual_seed(0)
    torch.save({"model": build_sam("edge_sam_dyt").state_dict()}, tmp_path / "ckpt.pth")
    monkeypatch.chdir(tmp_path)
    code, _stdout, stderr = run_cli(["segment", "photo.jpg", "--point", "500,375", "--checkpoint", "ckpt.pth"],
                                   capsys, monkeypatch)
    assert code == 0, stderr
    out = tmp_path / "segment_out"
    doc = json.loads((out / "photo.json").read_text())
    assert doc["model"] == "edge_sam_dyt" and (doc["width"], doc["height"]) == (512, 600)
    png = np.asarray(Image.open(out / "photo_mask0.png"))
    rle = doc["masks"][0]["segmentation"]
    decoded = mask_utils.decode({**rle, "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), png == 255)
    assert Image.open(out / "photo_overlay.png").size == (512, 600)


def test_missing_gpu_exits_3_before_any_download(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "edgesam_core.weight_registry", None)  # importing it would fail loudly
    got, _, stderr = run_cli(["segment", str(workdir / "photo.jpg"), "--point", "5,5", "--model", DEBUG,
                              "--device", "cuda", "--out", str(tmp_path / "o")], capsys, monkeypatch)
    lines = error_lines(stderr)
    assert got == 3 and len(lines) == 1 and "CUDA is not available" in lines[0], stderr


def test_output_folder_never_overwrites_or_deletes_inputs(workdir, tmp_path, capsys, monkeypatch):
    """`segment same/ --out same` is refused before anything is written; a user's own a_mask2.png in an
    output folder is never taken for a stale mask of ours."""
    same = tmp_path / "same"
    same.mkdir()
    for name in ("a.png", "a_mask0.png", "a_overlay.png", "a_mask2.png"):
        Image.fromarray(_photo(seed=len(name))).save(same / name)
    before = {p.name: p.read_bytes() for p in same.iterdir()}
    code, _, stderr = run_cli(["segment", str(same), "--point", "10,10", "--model", DEBUG,
                               "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(same)], capsys, monkeypatch)
    assert code == 2 and error_lines(stderr)[0].startswith(f"Error: --out {same} is the input folder")
    assert {p.name: p.read_bytes() for p in same.iterdir()} == before

    out = tmp_path / "out"
    out.mkdir()
    Image.fromarray(_photo(seed=9)).save(out / "photo_mask7.png")  # the user's file, not one of ours
    args = ["segment", str(workdir / "photo.jpg"), "--point", "10,10", "--model", DEBUG,
            "--checkpoint", str(workdir / "ckpt.pth"), "--out", str(out)]
    assert run_cli([*args, "--multimask"], capsys, monkeypatch)[0] == 0
    assert {p.name for p in out.glob("photo_mask*.png")} == {"photo_mask0.png", "photo_mask1.png", "photo_mask2.png",
                                                              "photo_mask7.png"}
    assert run_cli([*args, "--single-mask"], capsys, monkeypatch)[0] == 0
    # Our own earlier masks 1 and 2 are stale and go; the user's mask7 stays.
    assert {p.name for p in out.glob("photo_mask*.png")} == {"photo_mask0.png", "photo_mask7.png"}
