"""RepViT image encoder ("m1" = RepViT-M0.9) with EdgeSAM's fuse neck.

Two RepVGGDW layouts exist upstream and produce different state-dict keys:

* ``"K"`` (EdgeSAM-DyT and RepViT's ImageNet weights): ``conv`` (dw 3x3 + BN) + ``conv1`` (plain biased dw 1x1),
  summed with the input and passed through an outer ``bn``.
* ``"E"`` (the released EdgeSAM weights): ``conv`` (dw 3x3 + BN) + ``conv1`` (dw 1x1 + BN) + input, no outer BN.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence, Union

import torch
from torch import nn

from .layers.common import UpSampleLayer
from .layers.norm import LayerNorm2d
from .variants import REPVIT_M1_ROWS, BlockRow

RepVGGLayout = Literal["K", "E"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never below 90 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class Conv2d_BN(nn.Sequential):
    """Bias-free convolution ``c`` followed by BatchNorm ``bn``."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(out_chans))
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.constant_(self.bn.bias, 0.0)


class Residual(nn.Module):
    """``x + m(x)``."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.m(x)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation gate (timm's ``SEModule`` with ratio 1/4, 8-divisible width, ReLU, sigmoid)."""

    def __init__(self, channels: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        # timm rounds with round_limit=0, i.e. without the 90 % correction.
        reduced = max(8, int(channels * rd_ratio + 4) // 8 * 8)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = self.fc2(self.act(self.fc1(gate)))
        return x * gate.sigmoid()


class RepVGGDW(nn.Module):
    """Depth-wise 3x3 + 1x1 + identity token mixer, in the ``"K"`` or ``"E"`` layout (see module doc)."""

    def __init__(self, channels: int, layout: RepVGGLayout = "K") -> None:
        super().__init__()
        if layout not in ("K", "E"):
            raise ValueError(f"Unknown RepVGGDW layout '{layout}'; choose 'K' or 'E'.")
        self.layout = layout
        self.conv = Conv2d_BN(channels, channels, 3, 1, 1, groups=channels)
        if layout == "K":
            self.conv1: nn.Module = nn.Conv2d(channels, channels, 1, 1, 0, groups=channels, bias=True)
            self.bn = nn.BatchNorm2d(channels)
        else:
            self.conv1 = Conv2d_BN(channels, channels, 1, 1, 0, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.conv(x) + self.conv1(x)) + x
        if self.layout == "K":
            y = self.bn(y)
        return y


class RepViTBlock(nn.Module):
    """Token mixer (RepVGGDW or strided dw conv, optional SE) then a residual 1x1 channel MLP."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        stride: int,
        use_se: bool,
        act_layer: Callable[[], nn.Module],
        layout: RepVGGLayout,
    ) -> None:
        super().__init__()
        se: nn.Module = SqueezeExcite(in_chans) if use_se else nn.Identity()
        if stride == 2:
            self.token_mixer = nn.Sequential(
                Conv2d_BN(in_chans, in_chans, 3, 2, 1, groups=in_chans),
                se,
                Conv2d_BN(in_chans, out_chans, 1),
            )
        else:
            if in_chans != out_chans:
                raise ValueError(f"A stride-1 RepViT block keeps its width; got {in_chans} -> {out_chans}.")
            self.token_mixer = nn.Sequential(RepVGGDW(in_chans, layout), se)
        hidden = 2 * out_chans
        self.channel_mixer = Residual(
            nn.Sequential(
                Conv2d_BN(out_chans, hidden, 1),
                act_layer(),
                Conv2d_BN(hidden, out_chans, 1, bn_weight_init=0.0),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class OpSequential(nn.Module):
    """Sequential container whose children live under ``op_list`` (upstream key names)."""

    def __init__(self, ops: Sequence[nn.Module]) -> None:
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.op_list:
            x = op(x)
        return x


FEATURE_NAMES = ("stem", "stage0", "stage1", "stage2", "stage3")
EncoderOutput = Union[torch.Tensor, tuple[torch.Tensor, tuple[torch.Tensor, ...]]]


class RepViTEncoder(nn.Module):
    """RepViT backbone + fuse neck: ``conv1x1(stage2) + up2(conv1x1(stage3))`` then a conv/norm neck.

    Args:
        rows: block table (see ``REPVIT_M1_ROWS``); the patch embed ends at ``rows[0]`` channels.
        img_size: square input side (1024 for the real models).
        out_chans: embedding channels (256).
        norm_layer: constructor of the two neck norms (LayerNorm2d or channels-first DyT).
        act_layer: constructor of every GELU (exact or tanh).
        layout: RepVGGDW layout ``"K"`` or ``"E"``.
        upsample_mode: ``"bicubic"`` (training) or ``"bilinear"`` for the x2 upsampling of stage 3.
        return_low_feats: also return (stem, stage0, stage1) for the HQ decoder.
    """

    def __init__(
        self,
        rows: Sequence[BlockRow] = REPVIT_M1_ROWS,
        img_size: int = 1024,
        out_chans: int = 256,
        norm_layer: Callable[[int], nn.Module] = LayerNorm2d,
        act_layer: Callable[[], nn.Module] = nn.GELU,
        layout: RepVGGLayout = "K",
        upsample_mode: str = "bicubic",
        return_low_feats: bool = False,
        feature_names: Sequence[str] = ("stem", "stage0", "stage1"),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.return_low_feats = return_low_feats
        self.feature_names = tuple(feature_names)
        first = make_divisible(rows[0][0])
        patch_embed = nn.Sequential(
            Conv2d_BN(3, first // 2, 3, 2, 1),
            act_layer(),
            Conv2d_BN(first // 2, first, 3, 2, 1),
        )
        layers: list[nn.Module] = [patch_embed]
        # stage_idx: index (over the blocks after the patch embed) of the last block before each width change,
        # plus the last block.
        self.stage_idx: list[int] = []
        in_chans = prev = first
        for idx, (chans, use_se, stride) in enumerate(rows):
            out = make_divisible(chans)
            if chans != prev:
                self.stage_idx.append(idx - 1)
                prev = chans
            layers.append(RepViTBlock(in_chans, out, stride, bool(use_se), act_layer, layout))
            in_chans = out
        self.stage_idx.append(len(rows) - 1)
        if len(self.stage_idx) != 4:
            raise ValueError(f"The RepViT table must have 4 stages; found {len(self.stage_idx)}.")
        self.features = nn.ModuleList(layers)
        self.stage_channels = [make_divisible(rows[i][0]) for i in self.stage_idx]
        self.feature_channels = {"stem": first, **{f"stage{i}": c for i, c in enumerate(self.stage_channels)}}

        self.fuse_stage2 = nn.Conv2d(self.stage_channels[2], out_chans, kernel_size=1, bias=False)
        self.fuse_stage3 = OpSequential(
            [
                nn.Conv2d(self.stage_channels[3], out_chans, kernel_size=1, bias=False),
                UpSampleLayer(factor=2, mode=upsample_mode),
            ]
        )
        self.neck = nn.Sequential(
            nn.Conv2d(out_chans, out_chans, kernel_size=1, bias=False),
            norm_layer(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            norm_layer(out_chans),
        )

    @property
    def upsample_mode(self) -> str:
        """Interpolation used for the x2 upsampling of stage 3 (``bicubic`` or ``bilinear``)."""
        return self.fuse_stage3.op_list[1].mode

    @upsample_mode.setter
    def upsample_mode(self, mode: str) -> None:
        if mode not in ("bicubic", "bilinear"):
            raise ValueError(f"Unknown upsample mode '{mode}'; choose 'bicubic' or 'bilinear'.")
        self.fuse_stage3.op_list[1].mode = mode

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """Encode ``(B, 3, S, S)`` normalised images to ``(B, C, S/16, S/16)`` (plus low features for HQ)."""
        feats: dict[str, torch.Tensor] = {}
        x = self.features[0](x)
        feats["stem"] = x
        stage = 0
        for idx, block in enumerate(self.features[1:]):
            x = block(x)
            if idx in self.stage_idx:
                feats[f"stage{stage}"] = x
                stage += 1
        x = self.fuse_stage2(feats["stage2"]) + self.fuse_stage3(feats["stage3"])
        x = self.neck(x)
        if self.return_low_feats:
            return x, tuple(feats[name] for name in self.feature_names)
        return x
