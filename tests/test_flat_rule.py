"""The flat-picture rule (iqa/network.py, DegradationNet.pool): flat patches carry no weight, and a picture
without any evidence scores 0.0 on every output, in the eager network, the traced export and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conversion import export
from iqa.contract import MAX_CELLS, PATCH_SHAPE
from iqa.network import FLAT_PATCH_RANGE, CellMap, build_model
from iqa.preprocess import sample_patches
from training import train


@pytest.fixture(scope="module")
def model():
    return build_model(seed=3)


@pytest.fixture(scope="module")
def traced(model):
    return export.trace(model)


def _batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    batch = torch.randint(0, 256, (3, *PATCH_SHAPE), dtype=torch.uint8, generator=generator)
    batch[1] = 128  # a plain grey picture: no patch holds evidence
    batch[2, :2] = torch.tensor([10, 200, 90], dtype=torch.uint8).view(3, 1, 1)  # two flat patches out of four
    batch[2, 1, :, :5, :5] += FLAT_PATCH_RANGE  # ripple within the flat range stays flat
    return batch


def test_a_picture_with_no_evidence_scores_zero_on_every_output(model, traced):
    for module in (model, traced):
        with torch.inference_mode():
            scores = torch.cat(module(_batch()), dim=1)
        assert scores[1].tolist() == [0.0, 0.0, 0.0]
        assert (scores[0] > 0).all() and (scores[2] > 0).all()


def test_a_plain_picture_through_the_real_patch_sampler_scores_zero(model):
    for fill in ((128, 128, 128), (30, 90, 200), (255, 255, 255)):
        patches = sample_patches(np.full((3000, 4000, 3), fill, np.uint8))
        with torch.inference_mode():
            scores = torch.cat(model(torch.from_numpy(patches[None])), dim=1)
        assert scores.tolist() == [[0.0, 0.0, 0.0]], fill


def test_flat_patches_get_no_weight_in_a_picture_that_has_evidence(model):
    batch = _batch()
    with torch.inference_mode():
        logits = model.patch_logits(batch[2]).float()  # [4, 3]
        expected = torch.sigmoid(logits[2:].mean(dim=0))  # only the two textured patches count
        got = torch.cat(model(batch[2:3]), dim=1)[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert model.patch_evidence(batch[2:3]).tolist() == [[False, False, True, True]]


def test_noise_on_a_flat_fill_is_evidence():
    patches = torch.full((1, *PATCH_SHAPE), 128, dtype=torch.uint8)
    patches[0, 3, 0, 0, 0] = 128 + FLAT_PATCH_RANGE + 1  # one value out of the flat range
    assert build_model(seed=3).patch_evidence(patches).tolist() == [[False, False, False, True]]


def test_the_traced_export_keeps_the_rule_and_equals_eager(model, traced):
    assert export.max_difference(model, traced, _batch()) <= export.TOLERANCE
    with torch.inference_mode():
        # .half() converts in place, and a trace shares its parameters with the module traced: trace a copy.
        half = torch.cat(export.trace(build_model(seed=3)).half()(_batch()), dim=1)
    assert half[1].tolist() == [0.0, 0.0, 0.0]


def test_training_loss_ignores_pictures_without_evidence(model):
    patches = _batch()
    targets = torch.tensor([[0.2, 0.5, 0.1], [0.9, 0.9, 0.9], [0.0, 0.3, 0.7]])
    with torch.no_grad():
        logits = train.pooled_logits(model, patches)
        assert torch.isinf(logits[1]).all() and torch.isfinite(logits[[0, 2]]).all()
        loss = train.loss_fn(logits, targets)
        alone = train.loss_fn(logits[[0, 2]], targets[[0, 2]])
    assert torch.isfinite(loss) and loss == pytest.approx(alone.item())
    trainable = build_model(seed=3).train()
    train.loss_fn(train.pooled_logits(trainable, patches), targets).backward()
    assert all(torch.isfinite(p.grad).all() for p in trainable.parameters() if p.grad is not None)


def _strongly_negative(model):
    """The network with every head's last bias at -40: every logit far below fp16's sigmoid underflow (~-17)."""
    for head in model.heads:
        torch.nn.init.constant_(head[-1].bias, -40.0)
    return model


def test_in_fp16_a_picture_with_content_never_scores_exactly_zero():
    """Exactly 0.0 means "no evidence" (docs/model.md): in fp16 a sigmoid of -20 is 0.0, so pooling and the sigmoid
    must run in fp32 also when the network runs in half precision, eager, traced and the map."""
    batch = _batch()
    with torch.inference_mode():
        logits = _strongly_negative(build_model(seed=3)).patch_logits(batch[0]).float()
    assert (logits < -20).all() and torch.sigmoid(logits.half()).eq(0).all()  # what fp16 would have made of them
    eager = _strongly_negative(build_model(seed=3)).half()
    traced = export.trace(_strongly_negative(build_model(seed=3))).half()
    cells = torch.zeros((1, MAX_CELLS, *PATCH_SHAPE[1:]), dtype=torch.uint8)
    cells[0, :4] = batch[0]
    cell_map = CellMap(_strongly_negative(build_model(seed=3))).half()
    with torch.inference_mode():
        for module in (eager, traced):
            scores = torch.cat(module(batch), dim=1)
            assert scores.dtype == torch.float32
            assert (scores[[0, 2]] > 0).all() and scores[1].tolist() == [0.0, 0.0, 0.0]
        cell_scores, *pooled = cell_map(cells, torch.tensor([[2, 2]], dtype=torch.int32))
    assert (cell_scores[0, :4] > 0).all() and (torch.cat(pooled, dim=1) > 0).all()
