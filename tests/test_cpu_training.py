"""The CPU warm restart's tools (docs/model.md "Training on a CPU"): the bank of degraded pictures, drawing it
in another mix, learning without forgetting (--anchor), frozen stages and batch norm, the EMA weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iqa.network import build_model
from tests.test_training import WEIGHTS, _toy_pool
from training import bank, train
from training.degradations import BY_NAME, TYPE_WEIGHTS, Recipe, type_weights


@pytest.fixture(scope="module")
def toy_bank(tmp_path_factory) -> tuple[Path, Path]:
    """(pool, bank): a three-photo pool and a bank of 6 pictures made from it by training.bank itself."""
    root = tmp_path_factory.mktemp("bank")
    pool = _toy_pool(root)
    assert bank.main(["--out", str(root / "bank"), "--pool", str(pool), "--count", "6", "--workers", "1",
                      "--seed", "3"]) == 0
    return pool, root / "bank"


def test_the_bank_holds_trainings_own_degraded_pictures_and_is_resumable(toy_bank, capsys):
    pool, folder = toy_bank
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [bank.NAME.format(index=i) for i in range(6)]
    made = train.DegradedPictures(train.load_pictures(pool, "train"), 3, 1, 6, border=train.BORDER_SHARE)
    for index in (0, 5):
        degraded, recipe, _ = made.degraded(index)
        with bank.Image.open(files[index]) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), degraded)  # lossless: the very picture
            assert json.loads(image.info["targets"]) == pytest.approx(recipe.targets().tolist())
            assert image.info["recipe"] == repr(recipe)
    capsys.readouterr()
    assert bank.main(["--out", str(folder), "--pool", str(pool), "--count", "6", "--workers", "1", "--seed", "3"]) == 0
    assert "6 pictures already" in capsys.readouterr().out and len(list(folder.glob("*.png"))) == 6


def test_recipe_types_are_read_from_the_recipe_text():
    recipe = Recipe((("lens_blur", 0.3, "disc"), ("camera_noise", 0.5, "raw"), ("heic", 0.9, "x265")), "grey_after")
    assert bank.recipe_types(repr(recipe)) == ["lens_blur", "camera_noise", "heic"]
    assert bank.recipe_types(repr(Recipe((), "desaturated", 0.2))) == []


def _fake_bank(folder: Path, types: list[str], made_with: list[str]) -> None:
    """Bank pictures with these single-step recipes (flat pixels: only the draws are under test)."""
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({"type_weight": made_with}))
    for index, name in enumerate(types):
        recipe = Recipe(((name, 0.5, BY_NAME[name].variants[0].name),))
        bank._write(folder / bank.NAME.format(index=index), np.zeros((8, 8, 3), np.uint8), recipe.targets(),
                    repr(recipe))


def test_a_bank_is_drawn_again_in_the_mix_training_asks_for(tmp_path):
    _fake_bank(tmp_path / "b", ["gaussian_blur"] * 10 + ["lens_blur"] * 10 + ["jpeg"] * 10, [])
    in_turn = bank.BankPictures(tmp_path / "b", seed=1, views=1, length=100)
    assert [in_turn.picture(i) for i in range(32)] == [i % 30 for i in range(32)]

    lens = type_weights({"lens_blur": 3.0})
    drawn = bank.BankPictures(tmp_path / "b", seed=1, views=1, length=100, weights=lens)
    counts = np.bincount([drawn.picture(i) for i in range(6000)], minlength=30).reshape(3, 10).sum(axis=1) / 6000
    # per type: its share of its family in the asked-for mix over its share in the mix the bank was made with
    blur = TYPE_WEIGHTS["blur"]
    old, new = sum(blur.values()), sum(blur.values()) + 2.0
    expected = np.array([(1 / new) / (1 / old), (3 / new) / (1 / old), 1.0])
    assert counts == pytest.approx(expected / expected.sum(), abs=0.02)
    assert [drawn.picture(i) for i in range(50)] == [drawn.picture(i) for i in range(50)]  # a pure function of i

    # a bank made in the asked-for mix is drawn evenly
    _fake_bank(tmp_path / "c", ["gaussian_blur"] * 10 + ["lens_blur"] * 10, ["lens_blur=3"])
    same = bank.BankPictures(tmp_path / "c", seed=1, views=1, length=100, weights=lens)
    assert np.diff(same.cumulative) == pytest.approx(np.ones(19))


def test_only_recipes_of_the_types_the_starting_weights_read_right_are_anchored():
    assert train.ANCHOR_TYPES <= set(BY_NAME)
    assert train.anchored([]) and train.anchored(["gaussian_blur", "white_noise", "jpeg"])
    assert train.anchored(["resolution_loss", "camera_shake"])
    for name in ("heic", "avif", "webp", "h264", "hevc", "vp9", "av1", "camera_noise"):
        assert not train.anchored(["lens_blur", name]), name


def test_the_anchor_pulls_the_anchored_pictures_toward_the_starting_weights_scores_only():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, 1.0, 1.0], [3.0, -torch.inf, 0.5]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0, -1.0], [-5.0, 5.0, 0.0], [1.0, -torch.inf, 0.5]])
    rows = torch.tensor([True, False, True])
    train.anchor_loss(logits, teacher, rows).backward()
    kept = 5  # the anchored rows' finite scores
    expected = (torch.sigmoid(logits.detach()) - torch.sigmoid(teacher)) / kept
    expected[1] = 0.0  # not anchored
    expected[2, 1] = 0.0  # no evidence: nothing to keep
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    assert logits.grad[0, 0] == 0.0 and logits.grad[0, 1] > 0  # equal: no pull; above the teacher: pulled down
    none = train.anchor_loss(logits, teacher, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0


def test_the_teacher_shares_the_frozen_stages_and_nothing_else():
    torch.manual_seed(0)
    model = build_model(seed=1)
    teacher = copy.deepcopy(model).eval()
    train.freeze(model, "layer2")
    train.set_training_mode(model, "frozen", "layer2")
    patches = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8)
    end = train._STAGE_END["layer2"]
    student, teacher_logits = train.pooled_logits_and_teacher(model, teacher, patches, end)
    assert student.shape == teacher_logits.shape == (2, 3) and not teacher_logits.requires_grad
    assert torch.allclose(student, train.pooled_logits(model, patches), atol=1e-5)
    assert torch.allclose(teacher_logits, student.detach(), atol=1e-5)  # the same weights so far
    with torch.no_grad():
        for parameter in model.trunk[end:].parameters():
            parameter.mul_(1.1)
    moved, kept = train.pooled_logits_and_teacher(model, teacher, patches, end)
    assert torch.allclose(kept, teacher_logits, atol=1e-6) and not torch.allclose(moved, student, atol=1e-3)


def test_a_teacher_of_other_weights_runs_whole_and_its_scores_are_its_own():
    """--teacher: the teacher's lower stages differ from the student's frozen ones, so it must not reuse them."""
    torch.manual_seed(0)
    model, other = build_model(seed=1), build_model(seed=2).eval()
    train.freeze(model, "layer2")
    train.set_training_mode(model, "frozen", "layer2")
    patches = torch.randint(0, 256, (2, 4, 3, 64, 64), dtype=torch.uint8)
    end = train._STAGE_END["layer2"]
    student, teacher_logits = train.pooled_logits_and_teacher(model, other, patches, end, shared_stages=False)
    with torch.no_grad():
        assert torch.allclose(teacher_logits, train.pooled_logits(other, patches), atol=1e-5)
    assert torch.allclose(student, train.pooled_logits(model, patches), atol=1e-5)
    _, reused = train.pooled_logits_and_teacher(model, other, patches, end)  # the shortcut would be wrong here
    assert not torch.allclose(reused, teacher_logits, atol=1e-3)


def test_a_teacher_without_the_anchor_is_refused(capsys):
    with pytest.raises(SystemExit):
        train.main(["--teacher", str(WEIGHTS)])
    assert "--teacher needs --anchor" in capsys.readouterr().err


def test_the_cpu_warm_restart_keeps_frozen_stages_and_batch_norm_and_saves_the_ema(toy_bank, tmp_path):
    """The documented CPU restart (--bank, --bn frozen, --ema, --freeze-through, --anchor, --type-weight) at toy
    scale: frozen stages and every batch-norm statistic come out as they went in; the stages above move."""
    pool, folder = toy_bank
    run = tmp_path / "run"
    assert train.main(["--pool", str(pool), "--run", str(run), "--device", "cpu", "--init", str(WEIGHTS),
                       "--bank", str(folder), "--steps", "2", "--batch", "2", "--views", "2", "--workers", "0",
                       "--validation-pictures", "1", "--lr", "1e-3", "--warmup", "0", "--bn", "frozen",
                       "--ema", "0.5", "--freeze-through", "layer2", "--anchor", "1",
                       "--type-weight", "lens_blur=2"]) == 0
    before, after = torch.load(WEIGHTS, map_location="cpu"), torch.load(run / "weights.fp16.pt")
    frozen = [k for k in before if k.startswith(tuple(f"trunk.{i}." for i in range(train._STAGE_END["layer2"])))]
    statistics = [k for k in before if "running_" in k]
    assert len(frozen) > 50 and all(torch.equal(before[k], after[k]) for k in frozen + statistics)
    trained = [k for k in before if k.startswith(("trunk.7.", "heads.")) and before[k].ndim > 1]
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["final"] and log[-1]["step"] == 2 and np.isfinite(log[-1]["val_loss"])
    assert all(np.isfinite(e["loss"]) for e in log if "loss" in e)
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert "ema" in checkpoint and checkpoint["args"]["anchor"] == 1.0


def test_the_anchor_needs_the_weights_it_keeps(tmp_path):
    with pytest.raises(SystemExit):
        train.main(["--pool", str(_toy_pool(tmp_path)), "--run", str(tmp_path / "run"), "--device", "cpu",
                    "--steps", "1", "--anchor", "1"])


def test_interpolated_weights_lie_between_the_two_networks_and_mismatches_are_refused(tmp_path):
    """training.interpolate (WiSE-FT): alpha 0 and 1 give the two networks back, 0.5 their mean, in A's dtype;
    batch-norm counters come from B; other tensors or shapes are refused."""
    from training.interpolate import interpolate, main

    a = {"w": torch.tensor([0.0, 2.0], dtype=torch.float16), "bn.num_batches_tracked": torch.tensor(3)}
    b = {"w": torch.tensor([1.0, 4.0], dtype=torch.float16), "bn.num_batches_tracked": torch.tensor(9)}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    half = interpolate(a, b, 0.5)
    assert half["w"].tolist() == [0.5, 3.0] and half["w"].dtype == torch.float16
    assert half["bn.num_batches_tracked"].item() == 9
    with pytest.raises(ValueError, match="alpha"):
        interpolate(a, b, 1.5)
    with pytest.raises(ValueError, match="different tensors"):
        interpolate(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate(a, {**b, "w": torch.zeros(3, dtype=torch.float16)}, 0.5)
    torch.save(a, tmp_path / "a.pt")
    torch.save(b, tmp_path / "b.pt")
    assert main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--alpha", "0.25", "--out-dir", str(tmp_path / "o")]) == 0
    written = torch.load(tmp_path / "o" / "alpha-0.25.fp16.pt", weights_only=True)
    assert written["w"].tolist() == [0.25, 2.5]
