"""The degradation network: torchvision's ResNet50 trunk plus one small head per score.

Input is what the preprocess model emits: uint8 patches [B, K, 3, P, P] cut at
native resolution (see iqa.contract). Normalisation and the pooling of the K patch scores into one score per image happen inside the
module, so the exported TorchScript takes the preprocess output as it is.

Compared with the seed model (six heads of Conv3x3 2048->1024->256->64->1, ~21 M
parameters each), the heads here are 1x1 convolutions (~0.5 M parameters each):
a degradation score is a spatial average of local evidence, which the trunk
already extracts.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from iqa.contract import MAX_CELLS, PATCHES_PER_IMAGE, SCORE_NAMES

# A patch each of whose channels holds values within this many levels of each other is flat: it
# shows no edge, texture or grain, so it holds no evidence of noise, blur or compression.
FLAT_PATCH_RANGE = 2
# The pooled logit of an image none of whose patches holds evidence: sigmoid(-inf) = 0 exactly, so
# such an image scores 0.0 on every output, a value a trained head never gives a picture with content.
NO_EVIDENCE_LOGIT = float("-inf")

# Channel statistics of natural photos in [0, 1] (ImageNet's): centring the input
# keeps the from-scratch trunk's activations in a sane range from step one.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class DegradationNet(nn.Module):
    def __init__(self, head_width: int = 256) -> None:
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        # Everything up to the last residual stage: a 2048-channel map at stride 32.
        self.trunk = nn.Sequential(*list(resnet.children())[:-2])
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(2048, head_width, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(head_width, 1, kernel_size=1),
            )
            for _ in SCORE_NAMES
        )
        # (x / 255 - mean) / std as one multiply-add. Multiplying the uint8 input by these float
        # buffers promotes it to the module's dtype on the module's device, so the traced model
        # runs as exported, after .half() and on a GPU: no dtype or device is frozen into the trace.
        std, mean = torch.tensor(_STD).view(1, 3, 1, 1), torch.tensor(_MEAN).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", mean / std, persistent=False)

    def patch_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patches [N, 3, P, P] with values 0..255 (uint8 or float) -> one logit per score [N, 3].

        Training works on this (patch level); serving pools it over each image's patches.
        """
        features = self.trunk(pixels * self.scale - self.shift)
        return torch.cat([head(features).mean(dim=(2, 3)) for head in self.heads], dim=1)

    @staticmethod
    def patch_evidence(patches: torch.Tensor) -> torch.Tensor:
        """uint8 patches [B, K, 3, P, P] -> [B, K] bool: does the patch hold any evidence (is it not flat)?

        Flat: in each channel, every pixel within FLAT_PATCH_RANGE levels of every other (a plain fill
        of any colour, or one with at most quantisation ripple). Noise, edges and texture all spread
        the values further.
        """
        spread = patches.amax(dim=(3, 4)).int() - patches.amin(dim=(3, 4)).int()  # [B, K, 3]
        return spread.amax(dim=2) > FLAT_PATCH_RANGE

    @staticmethod
    def pool(patch_logits: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
        """Logits of each image's patches [B, K, 3] and their evidence [B, K] (bool) -> one logit per score [B, 3].

        An image's logit is the mean logit of its patches that hold evidence: a flat patch (a plain
        sky, a page margin, a fill) says nothing about noise, blur or compression, and left in it made
        the untrained guesses of flat areas part of the score (a plain grey picture read blur 0.56).
        An image with no such patch at all gets NO_EVIDENCE_LOGIT: it scores 0.0 on every output,
        "no evidence of any degradation", rather than an invented one. Training pools the same way.
        """
        # No constant tensor here (a trace would freeze its device). The callers hand in fp32 logits.
        count = evidence.sum(dim=1, keepdim=True)  # [B, 1], integer
        mean = (patch_logits * evidence.unsqueeze(-1)).sum(dim=1) / count.clamp_min(1)
        return mean.masked_fill(count == 0, NO_EVIDENCE_LOGIT)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 patches [B, K, 3, P, P] -> (noise, blur, compression), each fp32 [B, 1] in [0, 1]."""
        # The trunk and heads run in the module's dtype (fp16 after .half()); pooling and the sigmoid run in
        # fp32 whatever it is. In fp16 the sigmoid underflows to exactly 0.0 below a logit of about -17 (the
        # smallest fp16 subnormal is 6e-8), so a picture with content could score what only "no evidence"
        # may score (FLAT_PATCH_RANGE); in fp32 that takes a logit below about -88. `.float()` traces as a cast
        # to fp32 on the input's own device: no device is frozen into the trace.
        logits = self.patch_logits(patches.flatten(0, 1)).float().unflatten(0, (-1, PATCHES_PER_IMAGE))
        scores = torch.sigmoid(self.pool(logits, self.patch_evidence(patches)))
        noise, blur, compression = scores.split(1, dim=1)
        return noise, blur, compression


class CellMap(nn.Module):
    """The degradation map: the same network (and weights) scoring every cell of a picture.

    What `iqa_resnet50_cells` serves (conversion/export.py traces it). A cell's scores are the
    sigmoids of its own patch logits, exactly what the network says about that 128-pixel patch, and
    0.0 for a flat cell (no evidence: DegradationNet.pool's rule); an image's pooled scores are
    DegradationNet.pool over its cells, the rule the 4-patch score applies to its four sampled
    patches (tests/test_map.py checks they agree).
    """

    def __init__(self, net: DegradationNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, cells: torch.Tensor, grid: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """cells uint8 [B, MAX_CELLS, 3, P, P], grid int32 [B, 2] (rows, columns) ->
        (cell scores [B, MAX_CELLS, 3] in [0, 1], NaN past each image's rows * columns cells;
        noise, blur, compression [B, 1] each, pooled over the image's cells, in [0, 1]).

        Only the rows * columns real cells of each image go through the network: the padding that
        gives every image one tensor shape costs memory, not compute.
        """
        # Cell positions 0..K-1 made from `grid` (not torch.arange), so no device is frozen into the trace.
        positions = grid.new_ones(MAX_CELLS).cumsum(dim=0) - 1
        valid = positions < grid.prod(dim=1, keepdim=True)  # [B, K]
        real = valid.flatten()
        logits = self.net.patch_logits(cells.flatten(0, 1)[real]).float()  # [real cells, 3]; fp32 as in DegradationNet
        cell_logits = logits.new_zeros(real.shape[0], logits.shape[1]).index_put((real,), logits)
        cell_logits = cell_logits.unflatten(0, valid.shape)  # [B, K, 3], zeros past the grid
        evidence = valid & self.net.patch_evidence(cells)  # [B, K]: real cells that are not flat
        pooled = torch.sigmoid(self.net.pool(cell_logits, evidence))
        cell_logits = cell_logits.masked_fill(~evidence.unsqueeze(2), NO_EVIDENCE_LOGIT)  # flat cells: 0.0
        cell_scores = torch.where(valid.unsqueeze(2), torch.sigmoid(cell_logits), float("nan"))
        noise, blur, compression = pooled.split(1, dim=1)
        return cell_scores, noise, blur, compression


def build_model(weights_path: str | None = None, seed: int = 0) -> DegradationNet:
    """The network in eval mode: trained weights if given, else a seeded random initialisation."""
    torch.manual_seed(seed)
    model = DegradationNet()
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()
