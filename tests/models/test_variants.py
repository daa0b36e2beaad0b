"""Variant table, registry and the models package's import rules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from edgesam_core.errors import UnknownVariantError
from edgesam_core.models import list_variants, resolve_variant, sam_model_registry

ROOT = Path(__file__).resolve().parents[2]


def test_registry_has_every_variant():
    names = list_variants()
    for name in ["edge_sam", "edge_sam_dyt", "edge_sam_dyt_hq", "edge_sam_dyt_frozen_mask", "vit_b", "vit_l", "vit_h",
                 "vit_h_hq", "edge_sam_debug", "edge_sam_dyt_debug", "edge_sam_dyt_hq_debug",
                 "edge_sam_dyt_frozen_mask_debug", "vit_b_debug", "vit_h_hq_debug"]:
        assert name in names and name in sam_model_registry
    assert "edge_sam_debug" not in list_variants(include_debug=False)
    assert resolve_variant("default").name == "edge_sam" and "default" in sam_model_registry


def test_unknown_variant_suggests_the_closest_name():
    with pytest.raises(UnknownVariantError) as err:
        resolve_variant("edge_sam_dty")
    message = str(err.value)
    assert message.startswith("Unknown model 'edge_sam_dty'. Did you mean 'edge_sam_dyt'?")
    assert "vit_h_hq" in message and "\n" not in message


def test_unknown_variant_without_close_match_lists_choices():
    with pytest.raises(UnknownVariantError, match="Choose one of: edge_sam, "):
        resolve_variant("resnet50")


def test_build_sam_raises_for_unknown_names():
    from edgesam_core.models import build_sam

    with pytest.raises(UnknownVariantError):
        build_sam("vit_x")


def test_variant_specs_follow_upstream():
    dyt = resolve_variant("edge_sam_dyt")
    assert (dyt.encoder_norm, dyt.encoder_gelu, dyt.decoder_norm, dyt.decoder_gelu) == ("dyt2d", "tanh", "dyt", "tanh")
    frozen = resolve_variant("edge_sam_dyt_frozen_mask")
    assert (frozen.encoder_norm, frozen.decoder_norm, frozen.decoder_gelu) == ("dyt2d", "layernorm", "none")
    assert resolve_variant("edge_sam").repvit.layout == "E" and dyt.repvit.layout == "K"
    assert dyt.upsample_mode == "bicubic" and dyt.embed_grid == 64 and dyt.low_res_size == 256
    debug = resolve_variant("edge_sam_dyt_debug")
    assert (debug.img_size, debug.embed_grid, debug.low_res_size) == (128, 8, 32)


def test_variants_module_does_not_import_torch():
    code = "import sys, edgesam_core.models.variants as v; v.list_variants(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = list(path.relative_to(ROOT).parent.parts)
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module or "")
            else:
                base = package[: len(package) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
    return names


def test_models_import_nothing_of_ours_but_errors():
    offenders = []
    for path in sorted((ROOT / "edgesam_core" / "models").rglob("*.py")):
        for name in _imports(path):
            ours = name.startswith(("edgesam_core", "edgesam_cli"))
            if ours and not name.startswith(("edgesam_core.models", "edgesam_core.errors")):
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
            top = name.split(".")[0]
            if top in {"timm", "mmdet", "mmengine", "loralib", "yacs", "kornia", "cv2"}:
                offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, offenders
