"""training/real_pipelines.py: real encoders and camera pipelines, an evaluation kept out of training."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iqa.network import build_model
from training import real_pipelines as rp
from training.evaluate import kadid_picture, model_scorer

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
WEIGHTS = ROOT / "training" / "weights" / "iqa_resnet50.fp16.pt"
# What makes training's pictures: the evaluation must not share a line of code with them.
TRAINING_PICTURES = ("training.degradations", "training.synthetic", "training.train")


def psnr(reference: np.ndarray, picture: np.ndarray) -> float:
    mse = float(((reference.astype(np.float64) - picture) ** 2).mean())
    return 10 * np.log10(255**2 / mse) if mse > 0 else float("inf")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A held-out test photo at KADID's 512x384."""
    return kadid_picture(DATA / "lighthouse.jpg")


@pytest.fixture(scope="module")
def small() -> np.ndarray:
    return np.ascontiguousarray(kadid_picture(DATA / "rocks.jpg")[100:196, 200:328])  # 128x96


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> Path:
    """One cache for the module: the intra and inter kinds of a codec share their clip."""
    return tmp_path_factory.mktemp("real-pipelines-cache")


@pytest.mark.parametrize("kind", rp.KINDS, ids=lambda k: k.name)
def test_every_level_damages_the_picture_more_than_the_one_before(kind, photo, encoded):
    reference = rp.reference(photo, kind)
    qualities = []
    for level in rp.LEVELS:
        out = rp.degrade(photo, kind, level, cache_dir=encoded)
        assert out.dtype == np.uint8 and out.shape == reference.shape, (out.dtype, out.shape)
        qualities.append(psnr(reference, out))
    assert all(b < a for a, b in zip(qualities, qualities[1:])), qualities
    assert qualities[0] < 45 and qualities[-1] < 32, qualities  # level 1 changes the picture; level 5 is strong


def test_level_zero_is_the_picture_and_nonsense_is_refused(small):
    assert rp.degrade(small, "webp", 0) is small
    with pytest.raises(ValueError, match="level must be one of 0..5"):
        rp.degrade(small, "webp", 6)
    with pytest.raises(ValueError, match="unknown kind 'gif'"):
        rp.degrade(small, "gif", 1)
    with pytest.raises(ValueError, match="unknown kind 'gif'"):
        rp.build_set([small], kinds=["gif"])
    with pytest.raises(ValueError, match="unknown kind 'gif'"):
        rp.reference(small, "gif")
    with pytest.raises(ValueError, match="RGB uint8"):
        rp.degrade(small.astype(np.float32), "webp", 1)
    with pytest.raises(ValueError, match="even sides of at least 64 px"):
        rp.degrade(small[:95], "h264_inter", 1)


def test_the_same_photo_number_gives_the_same_pictures_and_another_other_noise(small):
    entries, pictures = rp.build_set([small, small])
    again_entries, again = rp.build_set([small, small])
    assert entries == again_entries
    assert len(pictures) == 2 * (1 + len(rp.KINDS) * len(rp.LEVELS))
    assert all(np.array_equal(a, b) for a, b in zip(pictures, again))
    by_key = {(e.photo, e.kind.name if e.kind else None, e.level): p for e, p in zip(entries, pictures)}
    for name in ("raw_noise", "luma_noise", "camera_shake"):  # random draws follow the photo number
        assert not np.array_equal(by_key[0, name, 3], by_key[1, name, 3]), name
    assert np.array_equal(by_key[0, "webp", 3], by_key[1, "webp", 3])  # an encoder has nothing to draw
    # The first photos of a longer list are the pictures of a shorter one: --photos N is a prefix.
    alone_entries, alone = rp.build_set([small], kinds=["luma_noise", "camera_shake"])
    assert all(np.array_equal(by_key[0, e.kind.name if e.kind else None, e.level], p)
               for e, p in zip(alone_entries, alone))


def test_a_pool_of_workers_makes_the_same_pictures(small):
    kinds = ["avif", "h264_inter", "raw_noise_phone", "camera_shake"]
    _, alone = rp.build_set([small], kinds=kinds)
    _, pooled = rp.build_set([small], workers=2, kinds=kinds)
    assert all(np.array_equal(a, b) for a, b in zip(alone, pooled))


@pytest.mark.parametrize("codec", rp.VIDEO_CODECS)
def test_the_clip_gives_an_intra_frame_and_a_predicted_one(codec, small):
    encoder, options = rp.VIDEO_CODECS[codec]
    frames = rp.clip_frames(small)
    decoded = rp.decode_clip(rp.encode_clip(frames, encoder, 30, options))
    assert len(decoded) == rp.CLIP_FRAMES
    assert decoded[0][0] == "I"
    assert decoded[rp.INTER_FRAME][0] in ("P", "B"), [t for t, _ in decoded]
    # The inter frame lines up with the picture moved as the clip moves it: whole pixels, nothing interpolated.
    moved = rp.reference(small, f"{codec}_inter")
    assert np.array_equal(moved, frames[rp.INTER_FRAME])
    assert np.array_equal(moved[2:, 3:], small[:-2, :-3])  # 4 frames of (0.75, 0.5) px: 3 right, 2 down
    # ... the same move as the interpolating path makes for sub-pixel steps, borders aside.
    nearly = rp.shift(small, 3 + 1e-3, 2 - 1e-3).astype(int)
    assert np.abs(nearly - moved)[4:-4, 4:-4].max() <= 2
    assert psnr(moved, decoded[rp.INTER_FRAME][1]) > 25


def test_shake_kernels_are_paths_of_the_asked_length_and_one_shape_a_photo():
    trajectory = rp.shake_trajectory(np.random.default_rng(0))
    assert np.linalg.norm(np.diff(trajectory, axis=0), axis=1).sum() == pytest.approx(1.0)
    short, long = rp.shake_kernel(trajectory, 4), rp.shake_kernel(trajectory, 16)
    assert short.sum() == pytest.approx(1.0) and long.sum() == pytest.approx(1.0)
    assert long.shape[0] > short.shape[0]
    assert (long > 0).sum() > 2 * (short > 0).sum()
    other = rp.shake_kernel(rp.shake_trajectory(np.random.default_rng(1)), 16)
    assert other.shape != long.shape or not np.allclose(other, long)


def test_defocus_discs_are_round_normalised_and_brighter_at_the_rim():
    kernel = rp.defocus_kernel(4.0)
    assert kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1], atol=1e-12)
    centre = kernel.shape[0] // 2
    assert kernel[centre, centre + 3] > kernel[centre, centre] > 0
    assert kernel[centre, centre + 5] == 0


def test_camera_noise_grows_with_less_light_and_is_stronger_in_red_and_blue():
    grey = np.full((96, 128, 3), 128, np.uint8)
    deviations = [rp.raw_capture(grey, e, rp.READ_NOISE[e], np.random.default_rng(0)).std(axis=(0, 1))
                  for e in rp.ELECTRONS_AT_WHITE]
    assert all((b > a).all() for a, b in zip(deviations, deviations[1:])), deviations
    assert all(d[0] > d[1] and d[2] > d[1] for d in deviations), deviations  # white balance gains on R and B
    clean = rp.raw_capture(grey, 1e12, 0.0, np.random.default_rng(0))
    assert np.abs(clean.astype(int) - 128).max() <= 1  # without noise the pipeline gives the grey back


def test_luma_noise_leaves_the_colours_alone(small):
    noisy = rp.degrade(small, "luma_noise", 5).astype(int)
    change = noisy - small
    unclipped = ((noisy > 0) & (noisy < 255)).all(axis=2)
    assert np.array_equal(change[unclipped, 0], change[unclipped, 1])
    assert np.array_equal(change[unclipped, 0], change[unclipped, 2])


def test_the_cache_keeps_encoded_files_and_rebuilds_when_the_version_changes(small, tmp_path, monkeypatch):
    kinds = ["heic", "hevc_intra", "hevc_inter", "raw_noise_phone", "defocus"]
    files = 3 * len(rp.LEVELS)  # heic, one hevc clip for both frames, the phone's JPEG; defocus has no file
    counts: dict = {}
    _, first = rp.build_set([small], cache_dir=tmp_path, kinds=kinds, counts=counts)
    assert counts == {"cached": 0, "encoded": files}
    assert len(list(tmp_path.rglob("*.*"))) == files
    _, second = rp.build_set([small], cache_dir=tmp_path, kinds=kinds, counts=counts)
    assert counts == {"cached": files, "encoded": 0}
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    monkeypatch.setattr(rp, "CACHE_VERSION", rp.CACHE_VERSION + 1)
    _, third = rp.build_set([small], cache_dir=tmp_path, kinds=kinds, counts=counts)
    assert counts == {"cached": 0, "encoded": files}
    assert all(np.array_equal(a, b) for a, b in zip(first, third))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"v{rp.CACHE_VERSION - 1}", f"v{rp.CACHE_VERSION}"]
    # A changed setting is a new key too: no stale file is read for it.
    monkeypatch.setattr(rp, "PHONE_JPEG_QUALITY", 70)
    rp.build_set([small], cache_dir=tmp_path, kinds=["raw_noise_phone"], counts=counts)
    assert counts == {"cached": 0, "encoded": len(rp.LEVELS)}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module or ""} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_it_shares_no_code_with_the_training_degradations():
    imported = _imports(ROOT / "training" / "real_pipelines.py")
    assert not [n for n in imported if n.startswith(TRAINING_PICTURES)], imported
    # ... nor through another module: making the whole set loads none of them.
    program = ("import sys, numpy as np\nfrom training import real_pipelines as rp\n"
               "picture = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)\n"
               "rp.build_set([picture])\n"
               f"print(sorted(m for m in sys.modules if m.startswith({TRAINING_PICTURES!r})))")
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_training_does_not_import_it_but_to_evaluate():
    importers = {path.name for path in sorted((ROOT / "training").glob("*.py"))
                 if any(n.endswith("real_pipelines") for n in _imports(path))}
    # evaluate.py runs it; select.py (and train.py, if it ever does) chooses checkpoints on it: neither makes
    # training pictures.
    assert importers <= {"evaluate.py", "select.py", "train.py"}, importers
    assert "evaluate.py" in importers
    program = ("import sys, training.train, training.degradations, training.synthetic, training.photos\n"
               "print(sorted(m for m in sys.modules if m.endswith('real_pipelines')))")
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _entries(kinds, photos=2):
    return [rp.Entry(photo, rp.BY_NAME[k], level) for photo in range(photos) for k in kinds for level in rp.LEVELS]


def test_metrics_of_a_scorer_right_by_construction_and_of_one_that_calls_everything_blur():
    kinds = ["webp", "raw_noise", "defocus"]
    entries = _entries(kinds)
    right = np.zeros((len(entries), 3))
    for i, e in enumerate(entries):
        right[i, rp.FAMILIES.index(e.kind.family)] = e.level / 5
    report = rp.metrics(entries, right)
    assert report.photos == 2
    assert report.seed_srcc == pytest.approx({k: 1.0 for k in kinds + ["noise", "blur", "compression", "all"]})
    assert report.specificity["all"] == 1.0
    assert report.level1_mean["webp"]["compression"] == pytest.approx(0.2)
    assert report.rise("webp", "compression") == pytest.approx(0.8) and report.rise("webp", "blur") == 0
    # Every kind read as blur: blur kinds stay right, the others keep their ranking (a small related rise)
    # but lose specificity.
    blur = right.copy()
    blur[:, rp.FAMILIES.index("blur")] = [e.level / 5 for e in entries]
    blur[:, rp.FAMILIES.index("compression")] *= 0.5
    report = rp.metrics(entries, blur)
    assert report.specificity == pytest.approx({"webp": 0.0, "raw_noise": 0.0, "defocus": 1.0,
                                                "noise": 0.0, "blur": 1.0, "compression": 0.0, "all": 1 / 3})
    assert report.seed_srcc["webp"] == pytest.approx(1.0)
    assert "webp | libwebp quality 75 -> 5 | compression 0.10 -> 0.50" in rp.table(report)
    assert "| specificity, all kinds | 0.3333 |" in rp.summary({"scorer": report})
    with pytest.raises(ValueError, match="scores have shape"):
        rp.metrics(entries, right[:, :2])


def test_committed_weights_on_a_few_kinds_through_evaluate(small):
    """The path training's checkpoint selection takes: scorers in, a Report per scorer out."""
    references = [kadid_picture(DATA / "sheep.jpg")]
    kinds = ["jpeg_444", "luma_noise", "defocus"]
    reports, entries, scores = rp.evaluate({"ours": model_scorer(build_model(str(WEIGHTS)))}, references, kinds=kinds)
    assert len(entries) == 1 + len(kinds) * len(rp.LEVELS) and scores["ours"].shape == (len(entries), 3)
    report = reports["ours"]
    assert set(report.level1_mean) == set(kinds)
    assert report.seed_srcc["all"] > 0.8, report.seed_srcc  # these three are KADID-like: the weights know them
    for kind in kinds:
        family = rp.BY_NAME[kind].family
        assert report.rise(kind, family) > 0.2, (kind, report.level1_mean[kind], report.level5_mean[kind])


def _pool(tmp_path: Path) -> Path:
    """A pool of the test photos (held out of training), all in the validation split."""
    pool = tmp_path / "pool"
    pool.mkdir()
    manifest = {}
    for path in sorted(DATA.glob("*.jpg")):
        Image.open(path).convert("RGB").save(pool / f"{path.stem}.png")
        manifest[path.stem] = {"split": "validation", "file": f"{path.stem}.png", "size": list(Image.open(path).size)}
    (pool / "manifest.json").write_text(json.dumps(manifest))
    return pool


def test_make_evaluate_prints_the_real_table_and_its_json(tmp_path, capsys):
    from training import evaluate

    out = tmp_path / "figures.json"
    assert evaluate.main(["--pool", str(_pool(tmp_path)), "--photos", "1", "--implementations", "real",
                          "--real-kinds", "webp,luma_noise", "--real-cache", "none", "--no-checks",
                          "--workers", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "real encoders and camera pipelines" in printed and "KADID-style set" not in printed
    assert "| webp | libwebp quality 75 -> 5 | compression" in printed and "| luma_noise |" in printed
    assert "| **all kinds** |" in printed
    figures = json.loads(out.read_text())["real"]["ours"]
    assert set(figures["seed_srcc"]) == {"webp", "luma_noise", "compression", "noise", "all"}
    with pytest.raises(SystemExit):
        evaluate.main(["--pool", str(tmp_path / "pool"), "--implementations", "real", "--real-kinds", "gif"])
    assert "unknown real kind 'gif'" in capsys.readouterr().err


def test_without_the_encoders_the_kadid_sets_still_evaluate_and_the_real_one_says_what_is_missing(tmp_path):
    """Where PyAV, pillow-heif or OpenCV are missing (the GPU machine), real_pipelines cannot be imported."""
    program = ("import sys; sys.modules['training.real_pipelines'] = None\n"
               "from training import evaluate\n"
               "pool = sys.argv[1]\n"
               "print('own rc', evaluate.main(['--pool', pool, '--photos', '1', '--implementations', 'own', "
               "'--no-checks', '--workers', '1']))\n"
               "print('default rc', evaluate.main(['--pool', pool, '--photos', '1', '--no-checks']))\n")
    result = subprocess.run([sys.executable, "-c", program, str(_pool(tmp_path))], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert "own rc 0" in result.stdout and "KADID-style set: 1 validation photos" in result.stdout, result.stderr
    assert "default rc 2" in result.stdout
    assert "the real set needs PyAV, pillow-heif and OpenCV" in result.stderr
    assert "--implementations own,reference skips it" in result.stderr


# ------------------------------------------------------------------ video, through the real server
def test_a_crf_ladder_is_encoded_sampled_and_scored_through_the_server(triton, score_in_process, tmp_path):
    from iqa_client.images import png_from_array
    from iqa_client.video import sample_frames

    pictures = [kadid_picture(DATA / "sheep.jpg"), kadid_picture(DATA / "rocks.jpg")]
    ladders = {"libx264": (20, 44), "libx265": (22, 46)}
    rows = rp.video_ladder(triton.grpc_url, pictures, ladders, frames=4, folder=tmp_path)
    assert [(r.encoder, r.crf) for r in rows] == [(e, c) for e, crfs in ladders.items() for c in crfs]
    source = rp.video_frames(pictures)  # 2 s at 10 fps
    quality = []
    for row in rows:
        assert row.frames_scored == 4 and row.frames_failed == 0, row
        sampled = list(sample_frames(tmp_path / f"clip-{row.encoder}-crf{row.crf:g}.mp4", frames=4))
        assert len(sampled) == 4 and all(0 <= t < 2 for t, _ in sampled)
        # The served means are the network's scores of exactly the decoded frames.
        local = [score_in_process(png_from_array(frame)) for _, frame in sampled]
        for name in rp.FAMILIES:
            mean = float(np.mean([s[name.upper()] for s in local]))
            assert 0 <= getattr(row, name) <= 1 and getattr(row, name) == pytest.approx(mean, abs=2e-3), (row, name)
        quality.append(np.mean([psnr(source[round(t * 10)], frame) for t, frame in sampled]))
    for low, high in zip(range(0, len(rows), 2), range(1, len(rows), 2)):  # each encoder's two CRFs
        assert rows[high].size_bytes < rows[low].size_bytes / 3, (rows[low], rows[high])
        assert quality[high] < quality[low] - 5, quality
    # Today's weights: whether the compression score rises with the CRF is a finding, printed, not asserted.
    print("\n" + rp.video_table(rows))


def test_the_video_command_prints_one_row_per_crf(triton, tmp_path, capsys):
    assert rp.main(["video", "--server", triton.grpc_url, "--pool", str(_pool(tmp_path)), "--photos", "1",
                    "--frames", "2", "--encoders", "libx264", "--crfs", "24,48"]) == 0
    printed = capsys.readouterr().out
    assert "| libx264 | 24 |" in printed and "| libx264 | 48 |" in printed
    with pytest.raises(SystemExit):
        rp.main(["video", "--encoders", "mjpeg"])
    assert "unknown encoder 'mjpeg'" in capsys.readouterr().err


def test_the_levels_table_gives_each_codecs_setting_and_mean_score_per_level():
    entries = [rp.Entry(0, None, 0), rp.Entry(1, None, 0)] + _entries(["webp", "luma_noise"])
    scores = np.zeros((len(entries), 3))
    compression = rp.FAMILIES.index("compression")
    for i, e in enumerate(entries):
        scores[i, compression] = 0.02 if e.kind is None else e.level / 10 + e.photo / 1000
    table = rp.levels_table(entries, scores).splitlines()
    assert len(table) == 3 and "luma_noise" not in "\n".join(table)  # the compression kinds present only
    webp = table[2].split(" | ")
    assert "libwebp quality 75 / 50 / 30 / 15 / 5" in webp[1] and webp[2] == "0.02"
    assert [float(v.strip(" |")) for v in webp[3:]] == [0.1, 0.2, 0.3, 0.4, 0.5]  # photos 0 and 1: +0.0005
