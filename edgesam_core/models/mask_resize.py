"""SAM's mask postprocessing (low-res logits -> the photo's frame), PyTorch's numbers bit for bit, faster.

``F.interpolate``'s bilinear CPU kernel gathers four inputs per output pixel. Two shortcuts give the same bits:

- The model-frame upscaling (x4 from 256x256) is separable with fixed weights: each output column phase is
  one elementwise ``fma`` of two shifted input views, then the same for rows (three masks to 1024x768 with the
  threshold: 1.0-1.4 vs 1.7-2.9 ms for ``F.interpolate`` on the crop, 2 threads, same run).
- A photo larger than the model frame needs a second resize; for binary masks only the pixels over a cell
  whose four corners disagree in sign (a mask's boundary) are computed: a bilinear pixel is a convex
  combination of its corners (three smooth masks to 4032x3024: 31 vs 80 ms for segment-anything's
  postprocessing, ``benchmarks/bench_mask_postprocess.py``).

Both reproduce the kernel's arithmetic: it interpolates the two input rows along the width, then between them,
each step ``fma(a, w0, b * w1)``, with indices and weights from ``fma(scale, dst + 0.5, -0.5)``. PyTorch runs
that generic kernel except for channels-last inputs of four or more channels, outputs of at most 128 rows plus
columns, and three channels on one thread (:func:`generic_kernel`); there upstream's own calls run. Checks
against ``F.interpolate`` (once per process for the arithmetic, once per axis geometry for the tables) guard
every assumption: where one fails, or where too many cells straddle zero for the shortcut to pay, the plain
``F.interpolate`` runs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

#: Corners at least this far from zero (and finite) decide a cell's sign: no product with a weight of at
#: least 0.5 underflows, so rounding cannot reach zero.
_DECISIVE = 1e-30
#: Give up on the boundary shortcut when the boundary cells' pixels exceed this share of the output (each costs
#: over ten times a pixel of the plain resize: with a 30 % limit a random model's masks took 317 vs 72 ms).
_MAX_BOUNDARY_SHARE = 0.03
#: The boundary shortcut resizes photos with at least this many times the model frame's pixels (below, deciding
#: the cells costs about what the plain resize does: measured).
_MIN_UPSCALE_AREA = 4


def generic_kernel(x: torch.Tensor, out_size: Sequence[int]) -> bool:
    """Whether PyTorch resizes float32 CPU logits ``x`` ``(B, C, h, w)`` to ``out_size`` with its generic kernel
    (the arithmetic reproduced here). It runs a vectorised kernel, with other rounding, on channels-last inputs
    of more than three channels (the PyTorch decoder's four masks are laid out so), for outputs of at most 128
    rows plus columns, and for three channels on one thread."""
    channels = x.shape[1]
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() == 4
            and not (channels > 3 and x.is_contiguous(memory_format=torch.channels_last))
            and int(out_size[0]) + int(out_size[1]) > 128 and (channels != 3 or torch.get_num_threads() > 1))


def _upsample_axis(x: torch.Tensor, dim: int, factor: int, keep: int) -> torch.Tensor:
    """Bilinear upsampling by a power-of-two ``factor`` along ``dim`` (``align_corners=False``), outputs
    ``0..keep-1``. Output ``factor * c + o`` blends inputs ``c`` and ``c + 1`` (or ``c - 1`` and ``c`` for the
    first half of the phases) with weights fixed per phase ``o``; the ends clamp."""
    n = x.shape[dim]
    shape = list(x.shape)
    shape[dim] = n * factor
    out = torch.empty(shape, dtype=x.dtype)
    split = list(x.shape)
    split[dim:dim + 1] = [n, factor]
    phases = out.view(split)
    lower, upper, first, last = (x.narrow(dim, 0, n - 1), x.narrow(dim, 1, n - 1), x.narrow(dim, 0, 1),
                                 x.narrow(dim, n - 1, 1))
    for o in range(factor):
        view = phases.select(dim + 1, o)
        offset = (o + 0.5) / factor - 0.5
        if offset >= 0:  # from c and c + 1; the last output from the last input twice
            w1 = offset
            torch.add(upper * w1, lower, alpha=1.0 - w1, out=view.narrow(dim, 0, n - 1))
            torch.add(last * w1, last, alpha=1.0 - w1, out=view.narrow(dim, n - 1, 1))
        else:  # from c - 1 and c; the first output is clamped to input 0 (weights 1 and 0)
            w1 = offset + 1.0
            torch.add(upper * w1, lower, alpha=1.0 - w1, out=view.narrow(dim, 1, n - 1))
            torch.add(upper.narrow(dim, 0, 1) * 0.0, first, alpha=1.0, out=view.narrow(dim, 0, 1))
    return out.narrow(dim, 0, keep)


def upsample_logits(x: torch.Tensor, factor: int, size: Sequence[int]) -> torch.Tensor:
    """``F.interpolate(x, scale_factor=factor, mode="bilinear")[..., :size[0], :size[1]]`` for float32 CPU
    ``x`` ``(B, C, h, w)`` with ``h, w >= 2`` and a power-of-two ``factor``, as PyTorch's generic kernel
    computes it (the caller checks :func:`generic_kernel` and :func:`separable_upsample_reproduced`)."""
    wide = _upsample_axis(x, 3, factor, int(size[1]))
    return _upsample_axis(wide, 2, factor, int(size[0]))


@functools.lru_cache(maxsize=1)
def separable_upsample_reproduced() -> bool:
    """Whether :func:`upsample_logits` equals this PyTorch's kernel bit for bit (checked once)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 9, 40, generator=gen) * torch.exp(3 * torch.randn(1, 2, 9, 40, generator=gen))
    expected = F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False,
                             recompute_scale_factor=False)
    return torch.equal(upsample_logits(x, 4, (36, 160)), expected)


def resize_mask_logits(masks: torch.Tensor, img_size: int, input_size: Sequence[int],
                       original_size: Sequence[int]) -> torch.Tensor:
    """SAM's mask postprocessing: ``(B, C, h, w)`` logits bilinearly to ``img_size`` square, the padding cropped
    to ``input_size``, then bilinearly to ``original_size`` (logits already ``img_size`` skip the first step).

    The first resize is computed only for the rows and columns the crop keeps (plus the one neighbour their
    interpolation reads), with the same scale: the same numbers, bit for bit (tested); where PyTorch's generic
    kernel would run it, by :func:`upsample_logits`.
    """
    masks = _model_frame_logits(masks, img_size, input_size)
    size = (int(original_size[0]), int(original_size[1]))
    if tuple(masks.shape[-2:]) == size:
        return masks  # bilinear resampling to the same size is the identity
    return F.interpolate(masks, size, mode="bilinear", align_corners=False)


def _model_frame_logits(masks: torch.Tensor, img_size: int, input_size: Sequence[int]) -> torch.Tensor:
    """The first step of :func:`resize_mask_logits`: logits in the model frame, cropped to ``input_size``."""
    h, w = int(input_size[0]), int(input_size[1])
    low_h, low_w = masks.shape[-2:]
    if (low_h, low_w) == (img_size, img_size):
        return masks[..., :h, :w]
    if generic_kernel(masks, (img_size, img_size)) and low_h == low_w and img_size % low_h == 0:
        factor = img_size // low_h
        rows, cols = min(low_h, -(-h // factor) + 1), min(low_w, -(-w // factor) + 1)
        cropped = masks[..., :rows, :cols]
        if generic_kernel(cropped, (rows * factor, cols * factor)):  # the crop keeps the kernel: the same bits
            if factor & (factor - 1) == 0 and rows > 1 and cols > 1 and separable_upsample_reproduced():
                return upsample_logits(cropped, factor, (h, w))
            return F.interpolate(cropped, scale_factor=float(factor), mode="bilinear", align_corners=False,
                                 recompute_scale_factor=False)[..., :h, :w]
    return F.interpolate(masks, (img_size, img_size), mode="bilinear", align_corners=False)[..., :h, :w]


def mask_logits_above(masks: torch.Tensor, img_size: int, input_size: Sequence[int],
                      original_size: Sequence[int], threshold: float = 0.0) -> torch.Tensor:
    """``resize_mask_logits(...) > threshold``: binary masks in the photo's frame, at SAM's threshold 0 by
    :func:`mask_logits_positive`."""
    if threshold == 0.0:
        return mask_logits_positive(masks, img_size, input_size, original_size)
    return resize_mask_logits(masks, img_size, input_size, original_size) > threshold


def mask_logits_positive(masks: torch.Tensor, img_size: int, input_size: Sequence[int],
                         original_size: Sequence[int]) -> torch.Tensor:
    """``resize_mask_logits(masks, img_size, input_size, original_size) > 0`` (``(B, C, H, W)`` bool): the same
    pixels; a photo much larger than the model frame is resized only where a mask's boundary crosses it."""
    values = _model_frame_logits(masks, img_size, input_size)
    b, c, h, w = values.shape
    size = (int(original_size[0]), int(original_size[1]))
    if (h, w) == size:
        return values > 0
    out = None
    if size[0] * size[1] >= _MIN_UPSCALE_AREA * h * w and generic_kernel(values, size) and kernel_reproduced():
        tables = axis_table(h, size[0]), axis_table(w, size[1])
        if tables[0] is not None and tables[1] is not None:
            out = positive_after_resize(values.reshape(b * c, h, w), *tables)
    if out is None:
        return F.interpolate(values, size, mode="bilinear", align_corners=False) > 0
    return out.reshape(b, c, *size)


@dataclass(frozen=True)
class AxisTable:
    """PyTorch's bilinear source indices and weights along one axis (``align_corners=False``) per output;
    ``start``/``count``: the run of outputs whose first source index is each input index."""

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor
    start: torch.Tensor
    count: torch.Tensor


def _table(n_in: int, n_out: int) -> AxisTable:
    dst = torch.arange(n_out)
    if n_in == n_out:  # PyTorch copies: weight 1 on the pixel itself
        i0, i1, w1 = dst, dst, torch.zeros(n_out)
    else:
        scale = torch.tensor(n_in, dtype=torch.float32) / n_out
        # scale * (dst + 0.5) - 0.5 as the kernel computes it: one fused multiply-add in float32.
        src = torch.clamp((scale.double() * (dst.float() + 0.5).double() - 0.5).float(), min=0.0)
        i0 = torch.clamp(torch.floor(src).long(), max=n_in - 1)
        w1 = torch.clamp(src - i0.float(), 0.0, 1.0)
        i1 = i0 + (i0 < n_in - 1).long()
    count = torch.bincount(i0, minlength=n_in)
    return AxisTable(i0, i1, 1.0 - w1, w1, torch.cumsum(count, 0) - count, count)


def _blend32(a: torch.Tensor, wa: torch.Tensor, b: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """``fma(a, wa, b * wb)`` rounded as the kernel does (float32 values held in float64, where products of two
    are exact): ``b * wb`` rounded to float32, then the fused ``a * wa +`` it, rounded once more."""
    return (a * wa + (b * wb).float().double()).float().double()


def _kernel(corners: tuple[torch.Tensor, ...], wx: tuple[torch.Tensor, torch.Tensor],
            wy: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The kernel's value from the corners ``(x00, x01, x10, x11)`` (rows, then columns) and the weights along
    the width and the height (broadcasting), as float32: along the width first, then between the rows."""
    x00, x01, x10, x11 = (c.double() for c in corners)
    wx0, wx1, wy0, wy1 = (w.double() for w in (*wx, *wy))
    top, bottom = _blend32(x00, wx0, x01, wx1), _blend32(x10, wx0, x11, wx1)
    return _blend32(top, wy0, bottom, wy1).float()


def _kernel_at(values: torch.Tensor, table_y: AxisTable, table_x: AxisTable, rows: torch.Tensor,
               cols: torch.Tensor) -> torch.Tensor:
    """The reproduced kernel at output pixels ``(rows, cols)`` of ``values`` ``(h, w)``, as float32."""
    r0, r1, c0, c1 = table_y.i0[rows], table_y.i1[rows], table_x.i0[cols], table_x.i1[cols]
    corners = (values[r0, c0], values[r0, c1], values[r1, c0], values[r1, c1])
    return _kernel(corners, (table_x.w0[cols], table_x.w1[cols]), (table_y.w0[rows], table_y.w1[rows]))


@functools.lru_cache(maxsize=1)
def kernel_reproduced() -> bool:
    """Whether this PyTorch's generic bilinear CPU kernel is the arithmetic reproduced here (checked once, on
    upscaling and downscaling geometries)."""
    for seed, (n_in, n_out) in enumerate((((13, 17), (70, 90)), ((11, 29), (100, 40)), ((64, 48), (37, 101)))):
        gen = torch.Generator().manual_seed(seed)
        values = torch.randn(n_in, generator=gen) * torch.exp(torch.randn(n_in, generator=gen))
        expected = F.interpolate(values[None, None], n_out, mode="bilinear", align_corners=False)[0, 0]
        rows, cols = torch.meshgrid(torch.arange(n_out[0]), torch.arange(n_out[1]), indexing="ij")
        got = _kernel_at(values, _table(n_in[0], n_out[0]), _table(n_in[1], n_out[1]), rows.reshape(-1),
                         cols.reshape(-1))
        if not torch.equal(got.reshape(n_out), expected):
            return False
    return True


@functools.lru_cache(maxsize=64)
def axis_table(n_in: int, n_out: int) -> Optional[AxisTable]:
    """The table for resizing ``n_in`` to ``n_out`` pixels, or None when PyTorch's indices and weights along such
    an axis are not the ones computed here (checked on a probe along each axis; the other, of one pixel, is
    copied)."""
    table, one = _table(n_in, n_out), _table(1, 1)
    line = torch.randn(n_in, generator=torch.Generator().manual_seed(n_in * 7919 + n_out))
    outputs, zeros = torch.arange(n_out), torch.zeros(n_out, dtype=torch.long)
    along_width = F.interpolate(line[None, None, None], (1, n_out), mode="bilinear", align_corners=False)
    along_height = F.interpolate(line[None, None, :, None], (n_out, 1), mode="bilinear", align_corners=False)
    if torch.equal(_kernel_at(line[None], one, table, zeros, outputs), along_width.reshape(-1)) \
            and torch.equal(_kernel_at(line[:, None], table, one, outputs, zeros), along_height.reshape(-1)):
        return table
    return None


def positive_after_resize(x: torch.Tensor, table_y: AxisTable, table_x: AxisTable) -> Optional[torch.Tensor]:
    """``F.interpolate(x, bilinear) > 0`` for float32 ``x`` ``(N, h, w)`` on the tables' output grid, or None
    when boundary cells cover too much of it for the shortcut to pay."""
    n, h, w = x.shape
    out_h, out_w = len(table_y.i0), len(table_x.i0)
    sample = x[:, ::8] > 0  # every eighth row: a sign change between neighbours marks a boundary cell
    if float((sample[:, :, 1:] != sample[:, :, :-1]).float().mean()) > _MAX_BOUNDARY_SHARE:
        return None
    finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)  # NaN and infinities decide nothing
    cells = []
    for decided in (finite >= _DECISIVE, finite <= -_DECISIVE):
        # A cell (r, c) has corners r, r + 1 by c, c + 1 (the last row and column: themselves).
        rows_ok = decided.clone()
        torch.logical_and(decided[:, :-1], decided[:, 1:], out=rows_ok[:, :-1])
        both = rows_ok.clone()
        torch.logical_and(rows_ok[:, :, :-1], rows_ok[:, :, 1:], out=both[:, :, :-1])
        cells.append(both)
    pos_cells, neg_cells = cells
    ycount, xcount = table_y.count, table_x.count
    boundary = ~(pos_cells | neg_cells) & (ycount > 0)[None, :, None] & (xcount > 0)[None, None, :]
    block_h, block_w = int(ycount.max()), int(xcount.max())
    if int(boundary.sum()) * block_h * block_w > _MAX_BOUNDARY_SHARE * n * out_h * out_w:
        return None
    mask_i, row_i, col_i = boundary.nonzero(as_tuple=True)
    # The decided cells, expanded to their pixels: columns on the small grid (through a transpose, where
    # index_select copies whole rows), then rows.
    out = pos_cells.transpose(1, 2).contiguous().index_select(1, table_x.i0).transpose(1, 2).contiguous()
    out = out.index_select(1, table_y.i0)
    if not len(row_i):
        return out
    # Boundary cells: every pixel of each cell's block, the kernel's arithmetic reproduced in float64.
    dy, dx = torch.arange(block_h), torch.arange(block_w)
    rows = table_y.start[row_i][:, None] + dy  # (k, block_h)
    cols = table_x.start[col_i][:, None] + dx  # (k, block_w)
    valid = (dy < ycount[row_i][:, None])[:, :, None] & (dx < xcount[col_i][:, None])[:, None, :]
    rows_c, cols_c = rows.clamp(max=out_h - 1), cols.clamp(max=out_w - 1)
    flat, base = x.reshape(-1), mask_i * (h * w)
    r0, r1 = table_y.i0[rows_c[:, 0]], table_y.i1[rows_c[:, 0]]  # one cell per block: its first pixel's corners
    c0, c1 = table_x.i0[cols_c[:, 0]], table_x.i1[cols_c[:, 0]]
    corners = tuple(flat[base + r * w + c][:, None, None] for r, c in ((r0, c0), (r0, c1), (r1, c0), (r1, c1)))
    value = _kernel(corners, (table_x.w0[cols_c][:, None, :], table_x.w1[cols_c][:, None, :]),
                    (table_y.w0[rows_c][:, :, None], table_y.w1[rows_c][:, :, None]))  # (k, block_h, block_w)
    index = mask_i[:, None, None] * (out_h * out_w) + rows[:, :, None] * out_w + cols[:, None, :]
    out.view(-1)[index[valid]] = value[valid] > 0
    return out
