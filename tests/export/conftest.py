"""Shared fixtures for the ONNX export tests: deterministic random-weight models and their exports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

# Upstream's ONNX I/O contract, kept in the repository so a bare clone runs the tests.
ONNX_IO = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "onnx_io.md"


def spread_init(model, seed: int = 1, scale: float = 0.2):
    """Perturb prompt-encoder/decoder weights so prompts visibly change the masks.

    Freshly initialised decoders give almost prompt-independent logits of ~1e-2, which would let a
    wrong prompt semantics pass a 1e-3 parity check; with this spread, dropping the padding token moves
    the logits by ~6e-2 (measured on edge_sam_dyt_debug).
    """
    import torch

    from tests.helpers.perturb import perturb_prompt_path

    gen = torch.Generator().manual_seed(seed)
    perturb_prompt_path(model, scale=scale, generator=gen)
    with torch.no_grad():  # the PE matrix is a buffer, not a parameter: re-draw it from the same stream
        model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.normal_(generator=gen)
    return model


def make_model(variant: str, seed: int = 0, scale: float | None = None):
    """``variant`` with ``torch.manual_seed(seed)`` weights, spread by 0.2 (debug) or 0.1 (full size).

    Full-size decoders are 8x wider, so 0.1 already gives logits of a few units (HQ: ~30, like trained
    models) instead of the ~200 that 0.2 gives.
    """
    import torch

    from edgesam_core.models import build_sam

    torch.manual_seed(seed)
    model = build_sam(variant)
    if scale is None:
        scale = 0.2 if variant.endswith("_debug") else 0.1
    return spread_init(model, scale=scale).eval()


def read_onnx_io_tables() -> dict[str, list[tuple[str, str, str, list[str]]]]:
    """Parse ``onnx_io.md``: section title -> rows (direction, name, dtype, shape tokens)."""
    if not ONNX_IO.is_file():
        pytest.fail(f"reference table {ONNX_IO} is missing from the repository")
    tables: dict[str, list[tuple[str, str, str, list[str]]]] = {}
    current = None
    for line in ONNX_IO.read_text().splitlines():
        if line.startswith("## "):
            current = re.sub(r"\s+\(opset \d+\)\s*$", "", line[3:]).strip()
            tables[current] = []
        elif current and line.startswith("| ") and not line.startswith(("| direction", "|---")):
            cells = [c.strip() for c in line.strip("|").split("|")]
            shape = [t.strip() for t in cells[3].strip("[]").split(",")]
            tables[current].append((cells[0], cells[1].strip("`"), cells[2], shape))
    return tables


def section_for(role: str, hq: bool, upsample: bool) -> str:
    """The onnx_io.md section describing a graph (HQ + --upsample is not tabled: same I/O as without)."""
    if role == "encoder":
        return "encoder (edge_sam_dyt_hq, --hq)" if hq else "encoder (edge_sam_dyt)"
    if hq:
        return "decoder (edge_sam_dyt_hq, --hq, no --upsample)"
    return "decoder (edge_sam_dyt, --upsample)" if upsample else "decoder (edge_sam_dyt, no --upsample)"


def assert_io_matches(path, rows, exact_shapes: bool) -> None:
    """Names, order, dtypes, ranks and which dims are dynamic equal the table; shapes too when exact."""
    import onnx

    from edgesam_core.export.sidecar import io_spec

    spec = io_spec(onnx.load(str(path)))
    for direction, key in (("input", "inputs"), ("output", "outputs")):
        ref = [r for r in rows if r[0] == direction]
        ours = spec[key]
        assert [r[1] for r in ref] == [v["name"] for v in ours], f"{path.name} {key}"
        for (_, name, dtype, shape), got in zip(ref, ours):
            assert got["dtype"] == dtype, f"{name}: {got['dtype']} != {dtype}"
            assert len(got["shape"]) == len(shape), f"{name}: rank {got['shape']} vs {shape}"
            for want, have in zip(shape, got["shape"]):
                if want.isdigit():
                    assert isinstance(have, int), f"{name}: {got['shape']} has a dynamic dim where {shape} is static"
                elif direction == "input":
                    # Callers rely on dynamic inputs (num_points); outputs may be more specific (onnxsim
                    # infers the batch of 1 that upstream's unsimplified graph leaves symbolic).
                    assert isinstance(have, str), f"{name}: {got['shape']} is static where {shape} is dynamic"
                if exact_shapes and want.isdigit():
                    assert have == int(want), f"{name}: {got['shape']} != {shape}"


@pytest.fixture(scope="session")
def io_tables():
    return read_onnx_io_tables()


def _export(tmp_path_factory, variant: str, upsample: bool, multi_box: bool = False):
    from edgesam_core.export.onnx_export import OnnxExportOptions, export_onnx

    model = make_model(variant)
    out = tmp_path_factory.mktemp(f"{variant}_{int(upsample)}")
    opts = OnnxExportOptions(model_type=variant, out_dir=out, upsample=upsample, multi_box=multi_box,
                             tolerance=1e-4)
    return model, export_onnx(None, opts, model=model)


@pytest.fixture(scope="session")
def export_factory(tmp_path_factory):
    """``factory(variant, upsample, multi_box=False) -> (model, OnnxExportResult)``, cached per session."""
    cache: dict[tuple, tuple] = {}

    def factory(variant: str, upsample: bool, multi_box: bool = False):
        key = (variant, upsample, multi_box)
        if key not in cache:
            cache[key] = _export(tmp_path_factory, variant, upsample, multi_box)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def dyt_debug_export(export_factory):
    """edge_sam_dyt_debug exported with the multi-box graph (no --upsample)."""
    return export_factory("edge_sam_dyt_debug", False, True)


@pytest.fixture(scope="session")
def hq_debug_export(export_factory):
    return export_factory("edge_sam_dyt_hq_debug", False)
