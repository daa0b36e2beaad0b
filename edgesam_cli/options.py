"""Typer parameters that several commands declare with the same name, help text and type.

Each alias carries the parameter's type and its ``typer.Option``/``typer.Argument``; the default stays in the
command's signature (``model: CheckpointVariantOpt = None``), so ``--help`` reads exactly as before. Only
stdlib and typer are imported here: ``edgesam --help`` must never import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# -- build-trt / convert-tflite: an ONNX pair or a checkpoint in, engines or .tflite files out ---------------

ExportSourceArg = Annotated[Path, typer.Argument(
    exists=True, dir_okay=False,
    help="<name>_encoder.onnx or <name>_decoder.onnx (the other must sit beside it), or a checkpoint.")]
"""The ONNX pair (either file) or a checkpoint that is exported to ONNX first."""

CheckpointVariantOpt = Annotated[str | None, typer.Option(
    "--model", help="Variant of a checkpoint (default edge_sam_dyt).")]
"""Model variant, used only when the source is a checkpoint."""

ExportOutDirOpt = Annotated[Path | None, typer.Option(
    "--out", file_okay=False, help="Output folder (default: beside the ONNX files).")]
"""Output folder of a conversion from ONNX."""

ExportNameOpt = Annotated[str | None, typer.Option("--name", help="File stem (default: the ONNX pair's name).")]
"""File stem of the converted files."""

# -- export-executorch / export-coreml: a checkpoint in, on-device files out ----------------------------------

CheckpointArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="PyTorch checkpoint (.pth/.pt).")]
"""The checkpoint an exporter reads."""

RecognisedVariantOpt = Annotated[str | None, typer.Option(
    "--model", help="Variant (default: recognised from the checkpoint).")]
"""Model variant of a checkpoint, recognised from its weights when omitted."""

OutBesideCheckpointOpt = Annotated[Path | None, typer.Option(
    "--out", file_okay=False, help="Output folder (default: beside the checkpoint).")]
"""Output folder of an export from a checkpoint."""

CheckpointStemOpt = Annotated[str | None, typer.Option("--name", help="File stem (default: the checkpoint's).")]
"""File stem of files exported from a checkpoint."""

MaxPointsOpt = Annotated[int, typer.Option(
    "--max-points", min=2, help="Most decoder points per prompt (a box counts as 2).")]
"""Largest packed prompt a dynamic-shape decoder takes."""

# -- shared by several commands ------------------------------------------------------------------------------

DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or mps.")]
"""Torch device of a command that runs a model."""

JsonResultOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
"""Machine-readable output of a command that writes files (export-onnx, build-trt, convert-tflite)."""

DecoderFromOpt = Annotated[Path | None, typer.Option(
    "--decoder-from", exists=True, dir_okay=False,
    help="SAM checkpoint whose prompt encoder and mask decoder complete an encoder-only (distillation step-1) "
         "checkpoint; default: the published vit_h weights (downloaded once). Ignored for full checkpoints.")]
"""Decoder source of an encoder-only checkpoint (segment, evaluate, export-onnx, weights merge)."""
