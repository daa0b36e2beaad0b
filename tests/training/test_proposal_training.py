"""Box proposals learned from the user's boxes: targets decode back to their boxes, a head trained on the frozen
embeddings of a tiny model finds held-out objects it never saw, and ``segment --everything`` prompts with them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgesam_core.models.box_proposal_head import (
    BoxProposalHead,
    decode_proposals,
    load_proposal_head,
    proposal_loss,
    proposal_targets,
)
from tests.helpers.shapes_dataset import make_images, write_mask_folder

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

# As the fine-tuning tests: the random LayerNorm encoder's embeddings carry the image (the random DyT one's barely).
VARIANT = "edge_sam_debug"


def test_targets_decode_back_to_their_boxes():
    """Logits that peak exactly at the targets' centres decode to the boxes themselves; where two boxes share a
    centre cell the smaller is kept; boxes stay inside the resized image."""
    boxes = torch.tensor([[10.0, 20.0, 50.0, 44.0], [64.0, 8.0, 120.0, 100.0], [66.0, 30.0, 110.0, 80.0],
                          [0.0, 90.0, 30.0, 128.0]])
    heat, sides, centres = proposal_targets(boxes, grid=8, stride=16.0)
    assert int(centres.sum()) == 3 and heat.max() == 1.0  # boxes 1 and 2 share the centre cell (5, 3)
    logits = torch.where(heat >= 1.0, torch.tensor(4.0), torch.tensor(-6.0))
    found, scores = decode_proposals(logits, sides, 16.0, (128, 128))
    assert len(found) == 3 and torch.all(scores > 0.9)
    expected = boxes[[0, 2, 3]]  # the smaller of the two sharing a cell
    order = torch.argsort(found[:, 0] * 1000 + found[:, 1])
    torch.testing.assert_close(found[order], expected[torch.argsort(expected[:, 0] * 1000 + expected[:, 1])],
                               atol=1e-4, rtol=0)
    # A resized image 100 high: the last box's centre cell (row 6, centre y 104) lies in the padding and is not
    # proposed. 100 wide: the middle box (centre x 88) is kept, its right side clipped from 110 to 100.
    assert len(decode_proposals(logits, sides, 16.0, (100, 128))[0]) == 2
    clipped, _ = decode_proposals(logits, sides, 16.0, (128, 100))
    assert len(clipped) == 3 and sorted(clipped[:, 2].tolist()) == pytest.approx([30.0, 50.0, 100.0])
    assert float(decode_proposals(logits, sides, 16.0, (128, 128), max_boxes=2)[1].numel()) == 2
    # The loss is lower at its targets than for a random head.
    at_targets = proposal_loss(logits[None] * 3, sides[None], heat[None], sides[None], centres[None])
    random = proposal_loss(torch.randn(1, 8, 8), torch.randn(1, 4, 8, 8), heat[None], sides[None], centres[None])
    assert float(at_targets) < 0.2 * float(random)


@pytest.fixture(scope="module")
def proposals_run(tmp_path_factory):
    """A head trained for 10 epochs on 160 images of pasted shapes (32 held out): a few seconds."""
    from edgesam_core.evaluation.samples import open_user_dataset
    from edgesam_core.models import build_sam
    from edgesam_core.training.finetune import FinetuneOptions, finetune

    root = tmp_path_factory.mktemp("proposals")
    torch.manual_seed(0)
    torch.save(build_sam(VARIANT).state_dict(), root / "base.pth")
    write_mask_folder(root / "data", make_images(160, seed=0))
    opts = FinetuneOptions(model_type=VARIANT, train="proposals", epochs=10, lr=1e-3, batch=4, seed=0)
    return finetune(root / "base.pth", open_user_dataset(root / "data"), root / "out", opts), root


def test_a_trained_head_finds_heldout_objects(proposals_run):
    result, root = proposals_run
    before, best = result.before, result.best
    # Measured: recall (IoU >= 0.5) 25.0 -> 82.1 % of the 56 held-out boxes (best epoch 6), 4.6 boxes per image of
    # 1-3 objects; IoU >= 0.75: 1.8 -> 28.6 % (an 8x8 grid of 16-pixel cells places boxes coarsely).
    assert before["recall50"] < 40 and best["recall50"] >= 65 and best["recall50"] >= before["recall50"] + 30
    assert best["proposals_per_image"] <= 8
    report = json.loads(result.report.read_text())
    assert report["heldout_recall_best"] == best and report["train_images"] == 128 and report["heldout_images"] == 32
    assert result.plot.read_bytes()[:4] == b"\x89PNG"
    head, meta = load_proposal_head(str(result.checkpoint))
    assert (meta["grid"], meta["img_size"], meta["embed_dim"], meta["model"]) == (8, 128, 32, VARIANT)
    assert json.loads(meta["heldout"]) == best


def test_segment_prompts_with_the_heads_boxes(proposals_run, tmp_path):
    """The proposer gives the head's boxes in the photo's pixels; the generator prompts with exactly those."""
    from PIL import Image

    from edgesam_core.inference import SamAutomaticMaskGenerator, SamPredictor
    from edgesam_core.inference.box_proposals import load_box_proposals
    from edgesam_core.models import build_sam

    result, root = proposals_run
    image = np.asarray(Image.open(sorted((root / "data" / "images").iterdir())[0]).convert("RGB"))
    predictor = SamPredictor(build_sam(VARIANT, root / "base.pth"))
    proposer = load_box_proposals(result.checkpoint).boxes_for("any.png", image.shape[1], image.shape[0])
    predictor.set_image(image)
    boxes = proposer(predictor)
    head, _ = load_proposal_head(str(result.checkpoint))
    objectness, sides = head(predictor.get_image_embedding())
    expected, _ = decode_proposals(objectness[0], sides[0], 16.0, predictor.input_size)
    scale = image.shape[1] / predictor.input_size[1]
    assert len(boxes) == len(expected) >= 1
    np.testing.assert_allclose(boxes, expected.double().numpy() * scale, rtol=1e-6, atol=1e-6)
    records = SamAutomaticMaskGenerator(predictor, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                        box_nms_thresh=1.0).generate(image, boxes=proposer)
    prompted = sorted(tuple(np.round(r["prompt_box"], 3)) for r in records)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    assert prompted == sorted(tuple(np.round(b, 3)) for b in xywh)


def test_cli_trains_proposals_and_segments_with_them(proposals_run, tmp_path):
    result, root = proposals_run
    exe = str(Path(sys.executable).with_name("edgesam"))
    out = tmp_path / "ft"
    run = subprocess.run([exe, "finetune", str(root / "base.pth"), "--model", VARIANT, "--data", str(root / "data"),
                          "--out", str(out), "--epochs", "1", "--lr", "1e-3", "--train", "proposals"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "held-out box recall (IoU >= 0.5)" in run.stdout and (out / "proposals.pt").is_file()
    photo = sorted((root / "data" / "images").iterdir())[0]
    run = subprocess.run([exe, "segment", str(photo), "--everything", "--proposals", str(result.checkpoint),
                          "--checkpoint", str(root / "base.pth"), "--model", VARIANT, "--out", str(tmp_path / "seg")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    document = json.loads((tmp_path / "seg" / f"{photo.stem}.json").read_text())
    assert document["job"]["prompts"]["proposals"]["file"] == "proposals.pt"
    assert all("box" in m["prompt"] for m in document["masks"])
    # A head trained for another model's embedding is refused with the fix.
    run = subprocess.run([exe, "segment", str(photo), "--everything", "--proposals", str(result.checkpoint),
                          "--model", "edge_sam_dyt_debug", "--checkpoint", str(_dyt_checkpoint(tmp_path)),
                          "--out", str(tmp_path / "other")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--train proposals" in run.stderr and "embeddings" in run.stderr


def _dyt_checkpoint(folder: Path) -> Path:
    from edgesam_core.models import build_sam

    path = folder / "dyt.pth"
    torch.save(build_sam("edge_sam_dyt_debug").state_dict(), path)
    return path


def test_a_head_for_another_embedding_is_refused(proposals_run):
    from edgesam_core.errors import InputError
    from edgesam_core.inference.box_proposals import propose_boxes

    result, _ = proposals_run
    head, meta = load_proposal_head(str(result.checkpoint))

    class Wide:  # an exported model (no variant known) whose embedding is 64 x 8 x 8
        input_size, original_size = (96, 128), (96, 128)

        def get_image_embedding(self):
            return np.zeros((1, 64, 8, 8), np.float32)

    with pytest.raises(InputError, match="32x8x8 embeddings, this model gives 64x8x8; train proposals"):
        propose_boxes(head, meta, Wide(), "p.pt")


def test_head_shapes():
    head = BoxProposalHead(32, hidden=16)
    objectness, sides = head(torch.zeros(2, 32, 8, 8))
    assert objectness.shape == (2, 8, 8) and sides.shape == (2, 4, 8, 8)
    assert torch.allclose(objectness.sigmoid(), torch.full((2, 8, 8), 0.1), atol=0.05)  # CenterNet's prior
