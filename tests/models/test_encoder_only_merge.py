"""Encoder-only (distillation step-1) checkpoints completed with SAM's prompt encoder + mask decoder (spec §2.3)."""

from __future__ import annotations

import pytest
import torch

from edgesam_core.errors import CheckpointMismatchError, InputError
from edgesam_core.merge import merge_encoder_checkpoint, variant_for
from edgesam_core.models import build_sam
from edgesam_core.models.build import _build_sam
from edgesam_core.models.checkpoint import checkpoint_is_encoder_only, decoder_weights, guess_variant
from edgesam_core.models.layers.dyt import DynamicTanh
from edgesam_core.models.variants import resolve_variant

PARTS = ("prompt_encoder.", "mask_decoder.")


def _model(name: str, seed: int):
    torch.manual_seed(seed)
    return build_sam(name)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Step-1 files (upstream's unprefixed {'model': ...} and a prefixed plain dict) and a debug "SAM" whose
    LayerNorm decoder has the debug students' widths (vit_b_debug)."""
    root = tmp_path_factory.mktemp("encoder_only")
    sam = _model("vit_b_debug", seed=1)
    torch.save(sam.state_dict(), root / "sam.pth")
    out = {"root": root, "sam": root / "sam.pth", "sam_state": sam.state_dict()}
    for name in ("edge_sam_debug", "edge_sam_dyt_debug"):
        encoder = _model(name, seed=2).image_encoder.state_dict()
        torch.save({"model": encoder, "epoch": 19}, root / f"{name}_step1.pth")
        torch.save({f"image_encoder.{k}": v for k, v in encoder.items()}, root / f"{name}_prefixed.pth")
        out[name] = encoder
    return out


def _by_hand(variant: str, encoder: dict, sam_state: dict):
    """The model upstream's convert_weights.py + step-3 init would give: encoder copied, SAM's prompt encoder
    and decoder copied by name, DyT alphas left at their initial 0.5."""
    model = _model(variant, seed=7)
    own = model.state_dict()
    with torch.no_grad():
        for key, value in encoder.items():
            own[f"image_encoder.{key}"].copy_(value)
        for key, value in sam_state.items():
            if key.startswith(PARTS):
                own[key].copy_(value)
        for module in model.modules():
            if isinstance(module, DynamicTanh):
                module.alpha.fill_(0.5)
    return model


def _outputs(model) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    image = torch.rand(1, 3, 128, 128) * 255
    points = (torch.tensor([[[40.0, 50.0], [90.0, 20.0]]]), torch.tensor([[1, 0]]))
    with torch.no_grad():
        embedding = model.encode_image(model.preprocess(image))
        sparse, dense = model.prompt_encoder(points=points, boxes=torch.tensor([[10.0, 10.0, 100.0, 90.0]]),
                                             masks=None)
        return embedding, *model.mask_decoder(embedding, model.prompt_encoder.get_dense_pe(), sparse, dense,
                                              num_multimask_outputs=3)


@pytest.mark.parametrize("variant", ["edge_sam_debug", "edge_sam_dyt_debug"])
@pytest.mark.parametrize("layout", ["step1", "prefixed"])
def test_encoder_only_plus_sam_equals_the_model_assembled_by_hand(files, variant, layout):
    path = files["root"] / f"{variant}_{layout}.pth"
    assert checkpoint_is_encoder_only(path) and not checkpoint_is_encoder_only(files["sam"])
    model = build_sam(variant, path, decoder_source=files["sam"])  # strict: any missing/extra key would raise
    expected = _by_hand(variant, files[variant], files["sam_state"])
    got_state, want_state = model.state_dict(), expected.state_dict()
    assert got_state.keys() == want_state.keys()
    assert all(torch.equal(got_state[k], want_state[k]) for k in got_state)
    for got, want in zip(_outputs(model), _outputs(expected)):
        assert torch.equal(got, want)  # same weights, same graph: bit-identical
    alphas = [v for k, v in got_state.items() if k.startswith("mask_decoder.") and k.endswith(".alpha")]
    assert (len(alphas) > 0) == (variant == "edge_sam_dyt_debug") and all(torch.all(a == 0.5) for a in alphas)


def test_decoder_source_callable_is_used_only_for_encoder_only_files(files):
    calls = []

    def fetch():
        calls.append(1)
        return files["sam"]

    build_sam("edge_sam_debug", files["root"] / "edge_sam_debug_step1.pth", decoder_source=fetch)
    assert calls == [1]
    full = _model("edge_sam_debug", seed=3).state_dict()
    loaded = build_sam("edge_sam_debug", full, decoder_source=fetch).state_dict()
    assert calls == [1] and all(torch.equal(loaded[k], v) for k, v in full.items())  # full file: source unused


def test_without_decoder_source_the_error_says_how(files):
    with pytest.raises(CheckpointMismatchError, match="encoder-only checkpoint .*--decoder-from"):
        build_sam("edge_sam_debug", files["root"] / "edge_sam_debug_prefixed.pth")


def test_incompatible_decoder_sources_are_refused_with_the_reason(files):
    step1 = files["root"] / "edge_sam_dyt_debug_step1.pth"
    with torch.device("meta"):
        full_size_sam = _build_sam(resolve_variant("vit_b")).state_dict()  # 256-wide decoder, no memory
    with pytest.raises(CheckpointMismatchError, match="decoder source does not fit .*shape mismatches.*another width"):
        build_sam("edge_sam_dyt_debug", step1, decoder_source=full_size_sam)
    with pytest.raises(CheckpointMismatchError, match=r"decoder source .*step1.pth holds no prompt_encoder"):
        build_sam("edge_sam_dyt_debug", step1, decoder_source=step1)
    hq_step1 = {k: v for k, v in _model("edge_sam_dyt_hq_debug", seed=0).image_encoder.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match="HQ model's decoder cannot come from SAM"):
        build_sam("edge_sam_dyt_hq_debug", hq_step1, decoder_source=files["sam"])
    # A DyT decoder does not go back into LayerNorm: the alphas are reported as unexpected.
    with pytest.raises(CheckpointMismatchError, match="unexpected keys .*alpha"):
        decoder_weights(_model("edge_sam_dyt_frozen_mask_debug", 0), _model("edge_sam_dyt_debug", 0).state_dict())


def test_variant_is_recognised_from_an_encoder_only_file(files):
    root = files["root"]
    assert guess_variant(files["edge_sam_debug"]) == "edge_sam_debug"
    # A DyT encoder completes to the model that keeps SAM's LayerNorm decoder unchanged (upstream's merge).
    assert variant_for(root / "edge_sam_dyt_debug_prefixed.pth", "x") == "edge_sam_dyt_frozen_mask_debug"
    assert variant_for(files["sam"], "edge_sam_dyt") == "edge_sam_dyt"


def test_merge_writes_a_plain_full_state_dict_that_loads_unchanged(files, tmp_path):
    out = tmp_path / "sub" / "full.pth"
    path, variant = merge_encoder_checkpoint(files["root"] / "edge_sam_dyt_debug_step1.pth", files["sam"], out,
                                             model="edge_sam_dyt_debug")
    assert path == out and variant == "edge_sam_dyt_debug" and sorted(p.name for p in out.parent.iterdir()) == [
        "full.pth"]
    state = torch.load(out, map_location="cpu", weights_only=True)
    direct = build_sam(variant, files["root"] / "edge_sam_dyt_debug_step1.pth", decoder_source=files["sam"])
    assert state.keys() == direct.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in direct.state_dict().items())
    reloaded = build_sam(variant, out)  # no decoder source needed any more
    assert all(torch.equal(a, b) for a, b in zip(_outputs(reloaded), _outputs(direct)))
    _, guessed = merge_encoder_checkpoint(files["root"] / "edge_sam_dyt_debug_step1.pth", files["sam"],
                                          tmp_path / "auto.pth")
    assert guessed == "edge_sam_dyt_frozen_mask_debug"
    build_sam(guessed, tmp_path / "auto.pth")
    with pytest.raises(CheckpointMismatchError, match="not an encoder-only checkpoint"):
        merge_encoder_checkpoint(out, files["sam"], tmp_path / "again.pth")
    with pytest.raises(InputError, match="would overwrite an input"):
        merge_encoder_checkpoint(files["root"] / "edge_sam_dyt_debug_step1.pth", files["sam"], files["sam"])
