"""Export-only ``nn.Module`` wrappers that give the ONNX graphs their fixed input/output contract.

The decoder graphs reproduce upstream's I/O names, dtypes and input order (``tests/fixtures/reference/onnx_io.md``)
but compute what the PyTorch prompt encoder computes: a padding point is appended when no valid box is
given, label -2 zeroes its whole token, labels 2/3 get the box-corner embeddings, and the HQ ``scores``
are the IoU of mask token 0 (what the PyTorch predictor reports). Every tracing-specific choice lives
here so the model code stays free of export workarounds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_INPUTS = ["image"]
HQ_INTERM_NAMES = ["interm_embeddings_0", "interm_embeddings_1", "interm_embeddings_2"]
DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels", "boxes", "point_valid", "boxes_valid"]
MULTI_BOX_INPUTS = ["image_embeddings", "point_coords", "point_labels", "boxes", "point_valid"]
DECODER_OUTPUTS = ["scores", "masks"]


def encoder_output_names(is_hq: bool) -> list[str]:
    """Output names of the encoder graph (HQ adds the three intermediate RepViT features)."""
    return ["image_embeddings", *HQ_INTERM_NAMES] if is_hq else ["image_embeddings"]


def decoder_input_names(is_hq: bool, multi_box: bool = False) -> list[str]:
    """Input names of a decoder graph, in graph order."""
    names = list(MULTI_BOX_INPUTS if multi_box else DECODER_INPUTS)
    return names + HQ_INTERM_NAMES if is_hq else names


class EncoderForExport(nn.Module):
    """``image`` (1x3xSxS, normalised and zero-padded) -> ``image_embeddings`` (+ 3 HQ features)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.is_hq = bool(model.is_hq)

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        features = self.model.encode_image(image)
        if self.is_hq:
            embedding, interm = features
            return (embedding, *interm)
        return features


class _PromptTokens(nn.Module):
    """Sparse prompt tokens written with ops that trace to a static-rank ONNX graph.

    Reads the prompt encoder's parameters by their state-dict names, so it embeds exactly what
    ``PromptEncoder`` embeds (same Fourier features, same +0.5 pixel-centre shift).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        pe = model.prompt_encoder
        self.prompt_encoder = pe
        self.img_size = int(model.img_size)
        dense_pe = pe.get_dense_pe()
        self.grid = (int(dense_pe.shape[-2]), int(dense_pe.shape[-1]))

    def fourier(self, coords: torch.Tensor) -> torch.Tensor:
        """Positional encoding of pixel coordinates (..., 2) in the SxS frame."""
        gaussian = self.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
        unit = (coords + 0.5) / self.img_size
        proj = (2.0 * unit - 1.0) @ gaussian
        proj = 2.0 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Tokens B x N x C for points with labels in {-2, -1, 0, 1, 2, 3}.

        One table lookup: label -2..3 picks a row of (zero, ``not_a_point``, the four point embeddings), added
        to the Fourier features of real points (labels 0..3). Label -2 ("ignore") thus gives an all-zero token,
        as the PyTorch prompt encoder does.
        """
        pe = self.prompt_encoder
        table = torch.cat([torch.zeros_like(pe.not_a_point_embed.weight), pe.not_a_point_embed.weight,
                           *[emb.weight for emb in pe.point_embeddings]], dim=0)
        index = (labels + 2).clamp(0, table.shape[0] - 1).long()
        real = (labels >= 0).to(coords.dtype).unsqueeze(-1)
        return self.fourier(coords) * real + table[index]

    def boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Tokens B x 2 x C for xyxy boxes B x 4 (two corners)."""
        pe = self.prompt_encoder
        corners = self.fourier(boxes.reshape(-1, 2, 2))
        corner_type = torch.cat([pe.point_embeddings[2].weight, pe.point_embeddings[3].weight], dim=0)
        return corners + corner_type.unsqueeze(0)

    def padding(self, batch: int) -> torch.Tensor:
        """The padding token (zero PE + ``not_a_point_embed``), B x 1 x C."""
        return self.prompt_encoder.not_a_point_embed.weight.unsqueeze(0).expand(batch, 1, -1)

    def dense(self, batch: int) -> torch.Tensor:
        """``no_mask_embed`` broadcast to B x C x g x g (no mask input in the graph)."""
        weight = self.prompt_encoder.no_mask_embed.weight
        return weight.reshape(1, -1, 1, 1).expand(batch, -1, self.grid[0], self.grid[1])


class _DecoderBase(nn.Module):
    def __init__(self, model: nn.Module, upsample: bool) -> None:
        super().__init__()
        self.model = model
        self.prompts = _PromptTokens(model)
        self.is_hq = bool(model.is_hq)
        self.upsample = bool(upsample)
        self.img_size = int(model.img_size)

    def _decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor,
                interm: list[torch.Tensor] | None, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # A known batch is a constant in the graph (Core ML's converter cannot take it from a traced shape).
        batch = sparse.shape[0] if batch is None else batch
        dense = self.prompts.dense(batch)
        image_pe = self.model.prompt_encoder.get_dense_pe()
        decoder = self.model.mask_decoder
        if self.is_hq:
            hq_mask, _sam_mask, iou = decoder(image_embeddings, image_pe, sparse, dense,
                                              num_multimask_outputs=1, interm_embeddings=interm)
            scores, masks = iou, hq_mask
        else:
            masks, scores = decoder(image_embeddings, image_pe, sparse, dense, num_multimask_outputs=4)
        if self.upsample:
            masks = F.interpolate(masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return scores, masks


class DecoderForExport(_DecoderBase):
    """One prompt set per call with upstream's six (HQ: nine) inputs; see ``onnx_io.md``.

    ``point_valid``/``boxes_valid`` (bool 1x1) select which tokens exist: points, the padding point
    (only when points are valid and the box is not) and the two box corners.
    """

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                boxes: torch.Tensor, point_valid: torch.Tensor, boxes_valid: torch.Tensor,
                *interm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_points = point_coords.shape[1]
        tokens = torch.cat([
            self.prompts.points(point_coords, point_labels),
            self.prompts.padding(1),
            self.prompts.boxes(boxes),
        ], dim=1)
        pv = point_valid.reshape(1)
        bv = boxes_valid.reshape(1)
        keep = torch.cat([pv.expand(num_points), pv & ~bv, bv.expand(2)])
        # Boolean indexing drops tokens instead of masking them: attention over a zeroed token would
        # still change the result, and the PyTorch model never sees absent prompts.
        sparse = tokens[:, keep]
        return self._decode(image_embeddings, sparse, list(interm) if self.is_hq else None)


#: Inputs of the packed-prompt decoder (SAM's own ONNX prompt layout; HQ adds the three features).
PACKED_DECODER_INPUTS = ["image_embeddings", "point_coords", "point_labels"]


class PackedPromptDecoderForExport(_DecoderBase):
    """One prompt set as SAM's ONNX example packs it: ``point_coords`` [1, N, 2], ``point_labels`` [1, N].

    A box is two corner points labelled 2 and 3; without a box the padding point (label -1) comes last; -2
    gives an all-zero token. No flags and no token dropping, so graphs with a dynamic N lower to runtimes
    that cannot run data-dependent shapes (ExecuTorch, Core ML). ``pack_prompts`` builds the inputs.
    """

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                *interm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.prompts.points(point_coords, point_labels)
        return self._decode(image_embeddings, sparse, list(interm) if self.is_hq else None, batch=1)


class MultiBoxDecoderForExport(_DecoderBase):
    """N boxes in one call: ``boxes`` [N, 4] -> ``scores`` [N, 4], ``masks`` [N, 4, h, w] (HQ: [N, 1, ...]).

    The points (``point_coords`` [1, P, 2], ``point_labels`` [1, P]) are shared by every box and used only
    when ``point_valid`` is true; no padding point is needed because every prompt has a box, exactly as in
    the PyTorch prompt encoder.
    """

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                boxes: torch.Tensor, point_valid: torch.Tensor,
                *interm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_points = point_coords.shape[1]
        box_tokens = self.prompts.boxes(boxes)
        point_tokens = self.prompts.points(point_coords, point_labels).expand(box_tokens.shape[0], -1, -1)
        tokens = torch.cat([point_tokens, box_tokens], dim=1)
        pv = point_valid.reshape(1)
        keep = torch.cat([pv.expand(num_points), torch.ones(2, dtype=torch.bool, device=pv.device)])
        sparse = tokens[:, keep]
        return self._decode(image_embeddings, sparse, list(interm) if self.is_hq else None)


#: The decoder's per-image stage: what every prompt on an image shares (see ``ImageContext``).
IMAGE_STAGE_OUTPUTS = ["image_tokens", "token_to_image_k", "token_to_image_v", "image_to_token_q"]
PROMPT_STAGE_INPUTS = [*IMAGE_STAGE_OUTPUTS, "point_coords", "point_labels"]


class DecoderImageStageForExport(nn.Module):
    """``image_embeddings`` (1xCxgxg) -> the decoder's per-image tensors (no mask input: ``no_mask_embed``).

    Run once per image; the prompt stage then does only what depends on the prompt.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prompts = _PromptTokens(model)

    def forward(self, image_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoder = self.model.mask_decoder
        context = decoder.image_context(image_embeddings, self.model.prompt_encoder.get_dense_pe(),
                                        self.prompts.dense(1))
        return context.keys, context.token_to_image_k, context.token_to_image_v, context.image_to_token_q


class DecoderPromptStageForExport(nn.Module):
    """A batch of N prompt sets on one image's per-image tensors -> ``scores`` [N, 4], ``masks`` [N, 4, 4g, 4g].

    ``point_coords`` [N, P, 2] / ``point_labels`` [N, P] in the SxS model frame, embedded exactly as given (as
    upstream's CoreML/ONNX decoder does): labels 0/1 points, 2/3 box corners, -1 the padding point SAM's
    prompt encoder adds when there is no box, -2 ignored. Low-resolution logits of all four mask tokens.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.prompts = _PromptTokens(model)

    def forward(self, image_tokens: torch.Tensor, token_to_image_k: torch.Tensor, token_to_image_v: torch.Tensor,
                image_to_token_q: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from edgesam_core.models.transformer import ImageContext

        image_pe = self.model.prompt_encoder.get_dense_pe()
        key_pe = self.model.mask_decoder.transformer.key_pe(image_pe)
        context = ImageContext(image_tokens, key_pe, token_to_image_k, token_to_image_v, image_to_token_q)
        sparse = self.prompts.points(point_coords, point_labels)
        masks, scores = self.model.mask_decoder(None, image_pe, sparse, None, num_multimask_outputs=4,
                                                context=context)
        return scores, masks
