"""Training and evaluation: degradations, targets, a few optimizer steps, the metrics, the committed weights."""

from __future__ import annotations

import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iqa.contract import PATCH_SHAPE
from iqa.network import build_model
from training import photos as photo_pool
from training import train
from training.degradations import (
    BY_NAME, CHAIN_ORDER, FAMILIES, LEVEL_STRENGTHS, TYPE_WEIGHTS, TYPES, Recipe, random_recipe, type_weights,
)
from training.evaluate import (
    Entry, build_set, classical_scorer, kadid_picture, metrics, model_scorer, motion_angles, pearson, score_set,
    server_scorer, spearman,
)

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
WEIGHTS = Path(__file__).parent.parent / "training" / "weights" / "iqa_resnet50.fp16.pt"


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return np.asarray(Image.open(DATA / "rocks.jpg").convert("RGB").crop((0, 0, 256, 192)))


@pytest.mark.parametrize("kind", TYPES, ids=lambda t: t.name)
def test_strength_zero_leaves_the_picture_untouched(kind, picture):
    assert np.array_equal(kind(picture, 0.0, np.random.default_rng(0)), picture)


@pytest.mark.parametrize("kind", TYPES, ids=lambda t: t.name)
def test_distortion_grows_with_strength(kind, picture):
    """Mean squared change from the pristine picture rises over the levels (same random draws at each)."""
    errors = []
    for strength in (0.0,) + LEVEL_STRENGTHS:
        out = kind(picture, strength, np.random.default_rng(0))
        assert out.shape == picture.shape and out.dtype == np.uint8
        errors.append(float(((out.astype(np.float64) - picture) ** 2).mean()))
    assert all(b >= a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] > errors[1] and errors[-1] > 10, errors


@pytest.mark.parametrize("kind", TYPES, ids=lambda t: t.name)
def test_parameters_are_monotone_and_sit_on_kadid_levels(kind):
    anchors = np.array(kind.anchors)
    steps = np.diff(anchors)
    assert (steps > 0).all() or (steps < 0).all(), anchors
    for level, strength in enumerate(LEVEL_STRENGTHS, start=1):
        assert kind.parameter(strength) == pytest.approx(anchors[level])
    fine = [kind.parameter(s) for s in np.linspace(0, 1, 101)]
    assert all(np.sign(b - a) in (0, np.sign(steps[0])) for a, b in zip(fine, fine[1:]))


def test_strength_outside_zero_to_one_is_refused(picture):
    with pytest.raises(ValueError, match="strength must be in"):
        BY_NAME["jpeg"](picture, 1.5, np.random.default_rng(0))


def test_targets_are_each_familys_strength_and_rise_with_it():
    recipe = Recipe((("lens_blur", 0.3), ("impulse_noise", 0.7), ("jpeg", 0.5)))
    assert recipe.targets().tolist() == pytest.approx([0.7, 0.3, 0.5])  # noise, blur, compression
    assert Recipe(()).targets().tolist() == [0.0, 0.0, 0.0]
    low, high = Recipe((("jpeg", 0.2),)).targets(), Recipe((("jpeg", 0.9),)).targets()
    assert high[FAMILIES.index("compression")] > low[FAMILIES.index("compression")]


def test_random_recipes_mix_pristine_single_and_chained_in_camera_order():
    rng = np.random.default_rng(1)
    recipes = [random_recipe(rng) for _ in range(2000)]
    lengths = np.array([len(r.steps) for r in recipes])
    assert 0.08 < (lengths == 0).mean() < 0.16
    assert (lengths == 1).mean() > 0.4 and (lengths == 3).mean() > 0.05
    for r in recipes:
        families = [BY_NAME[name].family for name, *_ in r.steps]
        assert families == sorted(families, key=CHAIN_ORDER.index)
        assert all(0.0 <= s <= 1.0 for _, s, *_ in r.steps)
        assert ((r.targets() >= 0) & (r.targets() <= 1)).all()
    assert {name for r in recipes for name, *_ in r.steps} == set(BY_NAME)


def test_spearman_and_pearson_match_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([4, 3, 2, 1], [1, 2, 3, 4]) == pytest.approx(-1.0)
    # Ties take their average rank: ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4].
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(np.sqrt(0.9))
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(np.corrcoef([1, 2, 3], [1, 2, 4])[0, 1])
    assert pearson([5, 5, 5], [1, 2, 3]) == 0.0


def _entries(photos: int = 3) -> list[Entry]:
    return [Entry(p, None, 0) for p in range(photos)] + [
        Entry(p, kind, level) for p in range(photos) for kind in TYPES for level in (1, 2, 3, 4, 5)
    ]


def test_a_scorer_perfect_by_construction_gets_every_figure_right():
    entries = _entries()
    scores = np.zeros((len(entries), 3))
    for i, e in enumerate(entries):
        if e.kind is not None:
            scores[i, FAMILIES.index(e.kind.family)] = e.level / 5
    report = metrics(entries, scores)
    for figure in (report.seed_srcc, report.seed_plcc, report.specificity, report.type_srcc):
        assert all(v == pytest.approx(1.0) for v in figure.values()), figure
    assert set(report.type_srcc) == {t.name for t in TYPES}
    assert all(v == pytest.approx(1.0) for v in report.global_srcc.values())
    assert all(v == 0.0 for v in report.pristine_mean.values())
    assert report.photos == 3


def test_a_constant_scorer_gets_zero_correlation_and_no_specificity():
    entries = _entries()
    report = metrics(entries, np.full((len(entries), 3), 0.5))
    for figure in (report.seed_srcc, report.seed_plcc, report.global_srcc, report.specificity, report.type_srcc):
        assert all(v == 0.0 for v in figure.values()), figure


def test_photo_pool_takes_a_users_folder_splits_by_photo_and_packs(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    for path in DATA.glob("*.jpg"):  # upscaled: the pool wants >= 512 px sources (2x down to >= 256)
        image = Image.open(path)
        image.resize((image.width * 2, image.height * 2)).save(folder / path.name)
    (folder / "notes.txt").write_text("not an image")
    pool = tmp_path / "pool"
    assert photo_pool.main(["--no-debian", "--folder", str(folder), "--pool", str(pool),
                            "--pack", str(tmp_path / "pack.tar")]) == 0
    listed = photo_pool.photos(pool)
    assert sorted(p.name for p in listed) == ["user--lighthouse", "user--rocks", "user--sheep"]
    for p in listed:
        assert p.split == photo_pool.split_of(p.name)
        assert max(Image.open(p.path).size) <= photo_pool.POOL_MAX_SIDE
    # The pack unpacks into a pool with the same photos and splits.
    unpacked = tmp_path / "unpacked"
    with tarfile.open(tmp_path / "pack.tar") as tar:
        tar.extractall(unpacked, filter="data")
    assert [(p.name, p.split) for p in photo_pool.photos(unpacked)] == [(p.name, p.split) for p in listed]


def test_test_photos_are_held_out_of_training():
    for name in ("sheep", "rocks", "lighthouse"):
        assert photo_pool.split_of(f"tuxpaint-data--usr--share--tuxpaint--templates--{name}") == "validation"


def test_webp_files_are_found_inside_a_qt_resource_archive(picture):
    webp = io.BytesIO()
    Image.fromarray(picture).save(webp, format="WEBP")
    archive = b"qres\x00\x00\x00\x03junk" + webp.getvalue() + b"more junk" + webp.getvalue()
    found = photo_pool._webps_in_qt_resource(archive)
    assert len(found) == 2 and all(Image.open(io.BytesIO(blob)).size == (256, 192) for blob in found)


def test_the_largest_jpeg_is_taken_from_an_edje_file(picture):
    def jpeg(size):
        buffer = io.BytesIO()
        Image.fromarray(picture).resize(size).save(buffer, format="JPEG")
        return buffer.getvalue()

    edje = b"EET\x1e\xff\xd8\xffjunk" + jpeg((64, 48)) + b"\x00" * 99 + jpeg((256, 192)) + jpeg((128, 96)) + b"tail"
    assert Image.open(io.BytesIO(photo_pool._largest_jpeg_in_edje(edje))).size == (256, 192)
    assert photo_pool._largest_jpeg_in_edje(b"EET only vector art here") is None


def test_drawings_are_not_taken_for_photos(picture):
    drawing = Image.new("RGB", (400, 300), "white")
    drawing.paste((200, 30, 30), (50, 50, 200, 200))
    assert not photo_pool.looks_like_a_photo(drawing)
    assert photo_pool.looks_like_a_photo(Image.open(DATA / "rocks.jpg"))


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    pictures = [np.asarray(Image.open(p).convert("RGB").resize((512, 384))) for p in sorted(DATA.glob("*.jpg"))]
    dataset = train.DegradedPictures(pictures, seed=3, views=1, length=4)
    patches, targets, _ = (torch.stack(x).flatten(0, 1) for x in zip(*(dataset[i] for i in range(4))))
    patches = patches[..., ::2, ::2]  # every other pixel: the same code path at a quarter of the CPU time
    model = train.DegradationNet().to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = train.loss_fn(train.pooled_logits(model, patches), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_type_weights_change_the_training_mix_and_refuse_nonsense():
    rng = np.random.default_rng(0)
    doubled = type_weights({"motion_blur": 2.0})
    blurs = [name for r in (random_recipe(rng, doubled) for _ in range(3000))
             for name, *_ in r.steps if BY_NAME[name].family == "blur"]
    share = blurs.count("motion_blur") / len(blurs)
    expected = 2.0 / (sum(TYPE_WEIGHTS["blur"].values()) - TYPE_WEIGHTS["blur"]["motion_blur"] + 2.0)
    assert abs(share - expected) < 0.05, (share, expected)
    assert type_weights() == {f: dict(k) for f, k in TYPE_WEIGHTS.items()}
    with pytest.raises(ValueError, match="unknown distortion type"):
        type_weights({"motion": 2.0})
    with pytest.raises(ValueError, match="every blur type has weight 0"):
        type_weights(dict.fromkeys(TYPE_WEIGHTS["blur"], 0))
    for bad in (["motion_blur"], ["motion_blur=x"], ["no_such_type=1"]):
        with pytest.raises(SystemExit):  # argparse's usage error, before any work starts
            train.parse_type_weights(bad)


def test_views_are_turned_windows_of_one_degraded_picture_and_samples_repeat():
    pictures = [np.asarray(Image.open(DATA / "rocks.jpg").convert("RGB").resize((512, 384)))]
    dataset = train.DegradedPictures(pictures, seed=5, views=4, length=8)
    patches, targets, anchored = dataset[2]
    assert patches.shape == (4, *PATCH_SHAPE) and patches.dtype == torch.uint8
    assert anchored.shape == (4,) and anchored.dtype == torch.bool and (anchored == anchored[0]).all()
    assert (targets == targets[0]).all()  # one recipe, so one target, for every view
    assert len({v.numpy().tobytes() for v in patches}) == 4  # no view repeats another
    again, *_ = dataset[2]
    assert torch.equal(patches, again)  # a sample is a pure function of (seed, index)


def _toy_pool(tmp_path: Path) -> Path:
    pool = tmp_path / "pool"
    pool.mkdir()
    manifest = {}
    for path, split in zip(sorted(DATA.glob("*.jpg")), ("train", "train", "validation")):
        Image.open(path).convert("RGB").resize((768, 512)).save(pool / f"{path.stem}.png")
        manifest[path.stem] = {"split": split, "file": f"{path.stem}.png", "size": [768, 512]}
    (pool / "manifest.json").write_text(json.dumps(manifest))
    return pool


def test_training_script_runs_end_to_end_and_writes_loadable_weights(tmp_path):
    """The whole script on CPU at toy scale: data, steps, validation, checkpoint, fp16 weights."""
    pool = _toy_pool(tmp_path)
    run = tmp_path / "run"
    assert train.main(["--pool", str(pool), "--run", str(run), "--device", "cpu", "--steps", "2", "--batch", "2",
                       "--workers", "0", "--validation-pictures", "2"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["final"] and log[-1]["step"] == 2 and np.isfinite(log[-1]["val_loss"])
    model = build_model(str(run / "weights.fp16.pt"))
    assert all(v.dtype == torch.float16 for v in torch.load(run / "weights.fp16.pt").values() if v.is_floating_point())
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == 2 and checkpoint["args"]["batch"] == 2
    assert sum(p.numel() for p in model.parameters()) > 20e6


@pytest.fixture(scope="module")
def small_kadid_set():
    """KADID-style set of the three test photos (held out of training), 10 types x 5 levels + pristine."""
    return build_set([kadid_picture(p) for p in sorted(DATA.glob("*.jpg"))], workers=1)


def test_committed_weights_beat_the_classical_baselines(small_kadid_set):
    entries, pictures = small_kadid_set
    ours = metrics(entries, model_scorer(build_model(str(WEIGHTS)))(pictures))
    classical = metrics(entries, classical_scorer(pictures))
    assert ours.seed_srcc["all"] > classical.seed_srcc["all"] + 0.1, (ours.seed_srcc, classical.seed_srcc)
    assert ours.specificity["all"] > classical.specificity["all"], (ours.specificity, classical.specificity)
    assert ours.seed_srcc["compression"] > 0.8  # what no classical measure here captures


def test_served_scores_agree_with_in_process_scores(triton, reference_model, small_kadid_set):
    """Evaluation can score through the running ensemble; a few distorted pictures agree with in-process."""
    entries, pictures = small_kadid_set
    chosen = [pictures[i] for i in range(0, len(pictures), 17)]
    served = server_scorer(triton.grpc_url, concurrency=4)(chosen)
    local = model_scorer(reference_model)(chosen)
    np.testing.assert_allclose(served, local, atol=1e-4)
    assert served.std(axis=0).min() > 0.01  # distinct pictures, distinct scores


def test_motion_angles_blurs_along_the_angle_it_names(picture):
    def horizontal_smoothness(pictures):  # "blur" = how little neighbouring columns differ
        return np.array([[0.0, 1.0 / (1.0 + np.abs(np.diff(p.astype(float), axis=1)).mean()), 0.0] for p in pictures])

    table = motion_angles(horizontal_smoothness, [picture], lengths=(10.0,), angles=(0.0, 90.0))
    at_0, at_90 = (float(cell) for cell in table.splitlines()[-1].strip("| ").split(" | ")[1:])
    assert at_0 > at_90  # a horizontal smear flattens the differences between columns; a vertical one does not


def test_scoring_the_set_checks_the_scorers_shape():
    with pytest.raises(ValueError, match="score_fn returned shape"):
        score_set(lambda pictures: np.zeros((len(pictures), 2)), [np.zeros((64, 64, 3), np.uint8)])


def test_a_warm_restart_starts_from_the_given_weights(tmp_path):
    """--init loads earlier weights: at learning rate 0 the trained layers come out exactly as they went in."""
    init = tmp_path / "init.fp16.pt"
    train.save_weights_fp16(build_model(seed=7), init)
    run = tmp_path / "run"
    assert train.main(["--pool", str(_toy_pool(tmp_path)), "--run", str(run), "--device", "cpu", "--init", str(init),
                       "--lr", "0", "--steps", "1", "--batch", "1", "--workers", "0", "--validation-pictures", "1"]) == 0
    before, after = torch.load(init), torch.load(run / "weights.fp16.pt")
    weights = [k for k, v in before.items() if v.ndim > 1]  # convolutions and the head; BN statistics do move
    # seed 7's weights, not those the script would draw itself (seed 0): --init was loaded, and lr 0 kept them
    assert len(weights) > 50 and all(torch.equal(before[k], after[k]) for k in weights)


def _device_script(tmp_path: Path, minutes: str = "0.5", **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """training/gpu_run.sh itself, on this CPU at toy scale, with its carry, scratch and output in tmp_path."""
    out = tmp_path / "out"
    settings = {"CARRY": str(tmp_path / "carry"), "WORK": str(tmp_path / "work"), "OUT": str(out),
                "PYTHON": sys.executable, "WORKERS": "1", "BATCH": "2", "VIEWS": "2", **env}
    result = subprocess.run(["bash", "training/gpu_run.sh", minutes], cwd=ROOT, env={**os.environ, **settings},
                            capture_output=True, text=True, timeout=600)
    return result, out


def test_the_device_script_warm_restarts_from_the_carry_and_returns_weights_in_parts(tmp_path):
    """What a GPU session runs, checked before the scarce GPU time: pack and init.fp16.pt.xz unpacked, TRAIN_ARGS
    reach training, the log and the weights come back under $OUT, and the weights are the carried ones (LR 0)."""
    (tmp_path / "carry").mkdir()
    photo_pool.write_pack(_toy_pool(tmp_path), tmp_path / "carry" / "pack.tar")
    init = tmp_path / "init.fp16.pt"
    train.save_weights_fp16(build_model(seed=7), init)
    (tmp_path / "carry" / "init.fp16.pt.xz").write_bytes(lzma.compress(init.read_bytes(), preset=0))
    result, out = _device_script(tmp_path, LR="0", TRAIN_ARGS="--steps 1 --validation-pictures 1 --type-weight motion_blur=2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        log = [json.loads(line) for line in tar.extractfile("log.jsonl").read().decode().splitlines()]
    assert {"train.txt", "log.jsonl"} <= names and log[-1]["final"] and log[-1]["step"] == 1
    parts = sorted(out.glob("weights.fp16.pt.part-*"))
    assert parts, sorted(p.name for p in out.iterdir())
    returned = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)))
    before = torch.load(init)
    weights = [k for k, v in before.items() if v.ndim > 1]
    assert len(weights) > 50 and all(torch.equal(before[k], returned[k]) for k in weights)


def test_the_device_script_exits_with_trainings_failure_and_without_a_pack(tmp_path):
    result, _ = _device_script(tmp_path)
    assert result.returncode == 2 and "pack.tar" in result.stderr
    (tmp_path / "carry").mkdir()
    photo_pool.write_pack(_toy_pool(tmp_path), tmp_path / "carry" / "pack.tar")
    result, out = _device_script(tmp_path, TRAIN_ARGS="--type-weight motion=2")
    assert result.returncode == 2, result.stdout[-3000:]
    assert "motion" in result.stdout and (out / "results.tar.gz").exists()


def test_the_loader_benchmark_times_both_mixes_and_trains_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(["--pool", str(_toy_pool(tmp_path)), "--run", str(run), "--loader-benchmark", "2",
                       "--views", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"--synthetic {train.SYNTHETIC_SHARE}", "--synthetic 0"]
    assert all("ms per degraded picture" in line for line in lines)
    assert not (run / "log.jsonl").exists()


def test_the_two_call_preparation_splits_the_weights_and_the_device_script_joins_them(tmp_path):
    """training/gpu_prepare.sh (without wheels, on a toy pool) then what its two device calls do, here: the
    12 MiB parts join back into init.fp16.pt, gpu_run.sh warm-restarts from that uncompressed file, and a
    PYTHONPATH set by the caller (where call 1 installs the codec wheels) still reaches training."""
    init = tmp_path / "init.fp16.pt"
    train.save_weights_fp16(build_model(seed=7), init)
    prepared = subprocess.run(["bash", "training/gpu_prepare.sh", str(init)], cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "DEST": str(tmp_path), "WHEELS": "", "PYTHON": sys.executable,
                                                "POOL": str(_toy_pool(tmp_path))})
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    assert "call 1 sends" in prepared.stdout and "gpu_run.sh" in prepared.stdout
    carry = tmp_path / ".train-carry"
    first = tmp_path / ".gpu-part1" / "part-aa"
    rest = sorted(carry.glob("part-a?"))
    assert first.stat().st_size == 12 * 1024 * 1024 and rest and (carry / "pack.tar").is_file()
    (carry / "init.fp16.pt").write_bytes(first.read_bytes() + b"".join(p.read_bytes() for p in rest))
    for part in rest:
        part.unlink()
    assert (carry / "init.fp16.pt").read_bytes() == init.read_bytes()
    marker_dir = tmp_path / "site"
    marker_dir.mkdir()
    (marker_dir / "sitecustomize.py").write_text(  # each Python started with it notes its command line
        f"with open({str(tmp_path / 'seen')!r}, 'a') as seen:\n"
        "    seen.write(open('/proc/self/cmdline').read().replace(chr(0), ' ') + chr(10))\n")
    result, out = _device_script(tmp_path, CARRY=str(carry), LR="0", PYTHONPATH=str(marker_dir),
                                 TRAIN_ARGS="--steps 1 --validation-pictures 1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "starting from" in result.stdout and "training.train" in (tmp_path / "seen").read_text()
    returned = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in sorted(out.glob("weights.fp16.pt.part-*")))))
    before = torch.load(init)
    assert all(torch.equal(before[k], returned[k]) for k, v in before.items() if v.ndim > 1)
