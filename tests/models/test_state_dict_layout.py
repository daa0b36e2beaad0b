"""Every real variant's state dict equals upstream's (keys, shapes, dtypes) from tests/fixtures/reference/*.tsv."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgesam_core.models import list_variants, resolve_variant
from edgesam_core.models.build import _build_sam

# Upstream's state-dict tables live in the repository: tests never read anything beside the clone.
REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
REAL_VARIANTS = list_variants(include_debug=False)


def _read_tsv(name: str) -> dict[str, tuple[str, str]]:
    path = REFERENCE / f"{name}_state_dict.tsv"
    if not path.is_file():
        pytest.fail(f"reference table {path} is missing from the repository")
    rows = path.read_text().splitlines()
    assert rows[0].split("\t") == ["key", "shape", "dtype"]
    table = {}
    for row in rows[1:]:
        key, shape, dtype = row.split("\t")
        table[key] = (shape, dtype)
    return table


def _describe(model: torch.nn.Module) -> dict[str, tuple[str, str]]:
    return {
        key: ("x".join(str(d) for d in value.shape), str(value.dtype).removeprefix("torch."))
        for key, value in model.state_dict().items()
    }


def test_every_real_variant_has_a_reference_table():
    assert sorted(REAL_VARIANTS) == sorted(
        ["edge_sam", "edge_sam_dyt", "edge_sam_dyt_hq", "edge_sam_dyt_frozen_mask", "vit_b", "vit_l", "vit_h", "vit_h_hq"]
    )


@pytest.mark.parametrize("name", REAL_VARIANTS)
def test_state_dict_matches_upstream_table(name):
    expected = _read_tsv(name)
    with torch.device("meta"):
        model = _build_sam(resolve_variant(name))
    got = _describe(model)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not missing, f"{len(missing)} keys missing, e.g. {missing[:5]}"
    assert not unexpected, f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}"
    wrong = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    assert not wrong, f"{len(wrong)} keys differ in shape/dtype, e.g. {list(wrong.items())[:5]}"


@pytest.mark.parametrize(
    ("name", "dyt_count"),
    [("edge_sam", 0), ("edge_sam_dyt", 12), ("edge_sam_dyt_frozen_mask", 2), ("edge_sam_dyt_hq", 17)],
)
def test_dyt_sits_exactly_where_upstream_puts_it(name, dyt_count):
    # neck.1/3 (2) + 9 transformer norms + output_upscaling.1 (10) [+ 5 HQ branches]
    alphas = [k for k in _read_tsv(name) if k.endswith(".alpha")]
    assert len(alphas) == dyt_count
    with torch.device("meta"):
        model = _build_sam(resolve_variant(name))
    assert sorted(k for k in model.state_dict() if k.endswith(".alpha")) == sorted(alphas)


def test_pixel_buffers_are_not_saved():
    with torch.device("meta"):
        model = _build_sam(resolve_variant("edge_sam_dyt"))
    names = dict(model.named_buffers())
    assert "pixel_mean" in names and "pixel_std" in names
    assert "pixel_mean" not in model.state_dict()
