"""SAM's prompt encoder with EdgeSAM's "ignore" label (-2).

Point labels: 1 positive, 0 negative, -1 padding (not a point), -2 ignore (token set to zero),
2 / 3 top-left / bottom-right box corner given as points (as in SAM's ONNX decoder).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn

from .layers.norm import LayerNorm2d


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier positional encoding; the Gaussian matrix is a checkpointed buffer."""

    def __init__(self, num_pos_feats: int = 64, scale: Optional[float] = None) -> None:
        super().__init__()
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn((2, num_pos_feats)))

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        # coords in [0, 1]^2, shape (..., 2) -> (..., 2 * num_pos_feats)
        coords = 2.0 * coords - 1.0
        coords = coords @ self.positional_encoding_gaussian_matrix
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of the pixel centres of an ``h x w`` grid, shape ``(C, h, w)``."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        grid = torch.ones((h, w), device=device, dtype=self.positional_encoding_gaussian_matrix.dtype)
        y_embed = (grid.cumsum(dim=0) - 0.5) / h
        x_embed = (grid.cumsum(dim=1) - 0.5) / w
        pe = self._pe_encoding(torch.stack([x_embed, y_embed], dim=-1))
        return pe.permute(2, 0, 1)

    def forward_with_coords(self, coords_input: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode ``(B, N, 2)`` pixel coordinates (x, y) in an image of ``image_size = (H, W)``."""
        coords = coords_input.clone()
        coords[:, :, 0] = coords[:, :, 0] / image_size[1]
        coords[:, :, 1] = coords[:, :, 1] / image_size[0]
        # SAM casts to float32; the matrix's dtype is the same for fp32 models and keeps float64 references whole.
        return self._pe_encoding(coords.to(self.positional_encoding_gaussian_matrix.dtype))


class PromptEncoder(nn.Module):
    """Embeds points, boxes and masks into sparse tokens and a dense map.

    Args:
        embed_dim: token width (256).
        image_embedding_size: (h, w) of the image embedding grid (64, 64).
        input_image_size: (H, W) of the padded model input (1024, 1024); coordinates are in this frame.
        mask_in_chans: hidden channels of the mask downscaler (16).
        activation: activation of the mask downscaler (exact GELU in every variant).
    """

    num_point_embeddings = 4  # positive, negative, box corner 1, box corner 2

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
        activation: Callable[[], nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.input_image_size = tuple(input_image_size)
        self.image_embedding_size = tuple(image_embedding_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the embedding grid, ``(1, C, h, w)``."""
        return self.pe_layer(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            # Without a box SAM appends one "not a point" token; this is what the weights were trained with.
            padding_point = torch.zeros((points.shape[0], 1, 2), device=points.device, dtype=points.dtype)
            padding_label = -torch.ones((labels.shape[0], 1), device=labels.device, dtype=labels.dtype)
            points = torch.cat([points, padding_point], dim=1)
            labels = torch.cat([labels, padding_label], dim=1)
        emb = self.pe_layer.forward_with_coords(points, self.input_image_size)
        # Each token adds the embedding of its label (-1: "not a point", 0..3), as one lookup: the same sums as
        # SAM's masked additions (their other terms are zeros), in a third of the operations.
        table = torch.cat([self.not_a_point_embed.weight, *(e.weight for e in self.point_embeddings)])
        emb = torch.where((labels == -1).unsqueeze(-1), 0.0, emb) + table[(labels.long() + 1).clamp(0, len(table) - 1)]
        return torch.where((labels == -2).unsqueeze(-1), 0.0, emb)

    def _embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        boxes = boxes + 0.5  # pixel centres
        coords = boxes.reshape(-1, 2, 2)
        corners = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        corner_type = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight], dim=0)
        return corners + corner_type

    def _get_batch_size(
        self,
        points: Optional[tuple[torch.Tensor, torch.Tensor]],
        boxes: Optional[torch.Tensor],
        masks: Optional[torch.Tensor],
    ) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1

    def forward(
        self,
        points: Optional[tuple[torch.Tensor, torch.Tensor]],
        boxes: Optional[torch.Tensor],
        masks: Optional[torch.Tensor],
        box_labels: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed prompts.

        Args:
            points: ``(coords (B, N, 2) float, labels (B, N))`` in the ``input_image_size`` frame, or None.
            boxes: ``(B, 4)`` xyxy boxes in the same frame, or None.
            masks: ``(B, 1, 4h, 4w)`` mask logits, or None.
            box_labels: ``(B,)``; rows labelled -1 have no box: both corner tokens become "not a point"
                (EdgeSAM's batched training pads prompt sets this way).

        Returns:
            Sparse tokens ``(B, T, C)`` (points, a padding point when no box is given, then 2 box corners) and
            the dense embedding ``(B, C, h, w)``.
        """
        bs = self._get_batch_size(points, boxes, masks)
        weight = self.no_mask_embed.weight
        sparse = torch.empty((bs, 0, self.embed_dim), device=weight.device, dtype=weight.dtype)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            corners = self._embed_boxes(boxes)
            if box_labels is not None:
                absent = (box_labels.reshape(-1) == -1).reshape(-1, 1, 1)
                corners = torch.where(absent, self.not_a_point_embed.weight.expand_as(corners), corners)
            sparse = torch.cat([sparse, corners], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = weight.reshape(1, -1, 1, 1).expand(bs, -1, *self.image_embedding_size)
        return sparse, dense
