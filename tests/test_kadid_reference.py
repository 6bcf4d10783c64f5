"""training/kadid_reference.py: the evaluation's independent KADID implementation, kept out of training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iqa.network import build_model
from training import kadid_reference
from training.degradations import TYPES as OWN_TYPES
from training.evaluate import build_set, classical_scorer, kadid_picture, metrics, model_scorer

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
WEIGHTS = ROOT / "training" / "weights" / "iqa_resnet50.fp16.pt"


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return np.asarray(Image.open(DATA / "rocks.jpg").convert("RGB").crop((0, 0, 256, 192)))


def test_it_covers_the_same_ten_kadid_types_as_training():
    assert [(t.kadid_id, t.name, t.family) for t in kadid_reference.TYPES] == [
        (t.kadid_id, t.name, t.family) for t in OWN_TYPES]


@pytest.mark.parametrize("kind", kadid_reference.TYPES, ids=lambda t: t.name)
def test_level_zero_is_the_identity_and_the_change_grows_with_the_level(kind, picture):
    assert np.array_equal(kind(picture, 0, np.random.default_rng(0)), picture)
    errors = []
    for level in range(6):
        out = kind(picture, level, np.random.default_rng(0))
        assert out.shape == picture.shape and out.dtype == np.uint8
        errors.append(float(((out.astype(np.float64) - picture) ** 2).mean()))
    assert all(b >= a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] > errors[1] and errors[-1] > 10, errors


def test_a_level_outside_zero_to_five_is_refused(picture):
    with pytest.raises(ValueError, match="level must be one of 0..5"):
        kadid_reference.BY_NAME["jpeg"](picture, 6, np.random.default_rng(0))


@pytest.mark.parametrize("kind", kadid_reference.TYPES, ids=lambda t: t.name)
def test_a_grey_picture_passes_and_stays_grey_where_the_type_is_colourless(kind, picture):
    grey = np.repeat(np.asarray(Image.fromarray(picture).convert("L"))[..., None], 3, axis=2)
    out = kind(grey, 5, np.random.default_rng(0))
    assert out.shape == grey.shape and out.dtype == np.uint8
    spread = int((out.max(axis=2).astype(int) - out.min(axis=2)).max())
    if kind.colourless:
        assert spread == 0, spread
    else:
        assert spread > 0  # the noises are drawn per channel: honest colour noise on a grey picture


def test_motion_blur_draws_its_angle_over_the_full_circle():
    """A line at 30 and at 210 degrees is the same kernel; the angle's draw spans [0, 360)."""
    line = kadid_reference.motion_line(10.0, 30.0)
    assert line.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(line, kadid_reference.motion_line(10.0, 210.0)[::-1, ::-1], atol=1e-6)
    flat_line = kadid_reference.motion_line(10.0, 0.0)
    assert (flat_line.sum(axis=1) > 0).sum() == 1  # a horizontal line covers one row


def test_nothing_in_training_but_the_evaluation_imports_it():
    importers = []
    for path in sorted((ROOT / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            if any(name.endswith("kadid_reference") for name in names):
                importers.append(path.name)
    assert set(importers) == {"evaluate.py"}, importers
    # ... and lazily: importing the training code (which imports evaluate's helpers) leaves it, and OpenCV, out.
    program = ("import sys, training.train, training.degradations, training.synthetic, training.photos\n"
               "print(sorted(m for m in sys.modules if m.endswith('kadid_reference') or m == 'cv2'))")
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture(scope="module")
def small_reference_set():
    """The three test photos (held out of training) under the reference implementation, 10 types x 5 levels."""
    return build_set([kadid_picture(p) for p in sorted(DATA.glob("*.jpg"))], workers=1, implementation="reference")


def test_committed_weights_beat_the_classical_baselines_on_the_reference_implementation(small_reference_set):
    entries, pictures = small_reference_set
    assert {e.kind.name for e in entries if e.kind is not None} == {t.name for t in kadid_reference.TYPES}
    ours = metrics(entries, model_scorer(build_model(str(WEIGHTS)))(pictures))
    classical = metrics(entries, classical_scorer(pictures))
    assert ours.seed_srcc["all"] > classical.seed_srcc["all"] + 0.1, (ours.seed_srcc, classical.seed_srcc)
    assert ours.specificity["all"] > classical.specificity["all"], (ours.specificity, classical.specificity)
    assert ours.seed_srcc["compression"] > 0.8
