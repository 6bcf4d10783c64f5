"""What a new user meets following the READMEs literally: commands that run as written, clear first errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from iqa.serving.launcher import REPO

DOCS = ("README.md", "client/README.md", "docker/README.md", "BENCHMARKS.md")


@pytest.mark.parametrize("doc", DOCS)
def test_documented_python_commands_use_the_venv(doc):
    """A bare `python -m …` fails outside the venv (or runs another Python): the docs say `.venv/bin/python`.
    `python3 -m` inside the container (docker/README.md) is the image's own Python."""
    text = (REPO / doc).read_text()
    bare = [line.strip() for line in text.splitlines() if re.search(r"(?<![/\w.])python -m ", line)]
    assert not bare, bare


def test_make_evaluate_without_the_photo_pool_says_to_run_make_photos(tmp_path):
    done = subprocess.run([sys.executable, "-m", "training.evaluate", "--baselines"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={"IQA_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "run `make photos` first" in done.stderr and "400 MB" in done.stderr and "Traceback" not in done.stderr
