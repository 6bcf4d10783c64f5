"""What a new user meets following the READMEs literally: commands that run as written, clear first errors."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import unicodedata

import pytest

from iqa.serving.launcher import REPO

# README.md is the door; the pages under docs/ hold what it links to (each named after what it holds).
PAGES = tuple(sorted(str(page.relative_to(REPO)) for page in (REPO / "docs").glob("*.md")))
DOCS = ("README.md", "client/README.md", "docker/README.md", "BENCHMARKS.md", "tests/data/README.md", *PAGES)


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


def test_every_markdown_file_in_the_repository_is_checked_here():
    """A page added under docs/ (or anywhere) is read by these tests, not left out of them."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed and set(listed) <= set(DOCS), sorted(set(listed) - set(DOCS))


def test_readme_shows_the_two_commands_and_ci_runs_the_tests_as_it_says():
    """DESIGN.md: README shows `make serve` and `make test`; .ci/run runs `make test`, the README's test command."""
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(make \w+)\s", readme.split("## The two commands", 1)[1].split("\n## ", 1)[0], re.M)
    assert commands == ["make serve", "make test"], commands
    assert re.search(r"^make test\b", (REPO / ".ci" / "run").read_text(), re.M)


def test_readme_links_every_page_under_docs():
    """A newcomer reaches every page from the door."""
    linked = {target.split("#")[0] for target in _links((REPO / "README.md").read_text())}
    assert set(PAGES) <= linked, sorted(set(PAGES) - linked)


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (where a `[x](y)` is not a link)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _code(text: str) -> str:
    """Fenced code blocks and inline code spans: where the docs write commands."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(blocks + spans)


def _links(text: str) -> list[str]:
    """Targets of inline links and images, `[text](target)` / `![alt](target "title")`."""
    return re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _prose(text))


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading: its text
    text = "".join(c for c in text.lower() if c in "-_ " or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), re.M):
        base = _anchor(heading)
        anchors.add(f"{base}-{seen[base]}" if base in seen else base)  # GitHub numbers repeated headings
        seen[base] = seen.get(base, 0) + 1
    return anchors


def test_anchor_rule_matches_githubs():
    assert _anchor("Decode cost per upload format (issue: field reports, HEIC and AVIF)") == \
        "decode-cost-per-upload-format-issue-field-reports-heic-and-avif"
    assert _anchor("`make serve`, cold") == "make-serve-cold"
    assert _anchor("Load tests and the (a)/(b)/(c) comparison at concurrency 32") == \
        "load-tests-and-the-abc-comparison-at-concurrency-32"
    assert _anchors("# A\n## A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1", "a-2"}


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_and_anchors_resolve(doc):
    """Every relative link names a file or folder that exists, and every #anchor a heading of its page."""
    page = REPO / doc
    broken = []
    for target in _links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: - not checked offline
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert not broken, broken


@pytest.mark.parametrize("doc", DOCS)
def test_documented_modules_and_make_targets_exist(doc):
    """`.venv/bin/python -m X` names a module of this checkout and `make T` a target of the Makefile, so a
    command copied from the docs does not end in "No module named" or "No rule to make target"."""
    code = _code((REPO / doc).read_text())
    modules = set(re.findall(r"\.venv/bin/python -m ([\w.]+)", code))
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    unknown = sorted(t for t in set(re.findall(r"(?<![\w./-])make ([a-z][\w-]*)", code)) if t not in targets)
    assert not missing and not unknown, (missing, unknown)
