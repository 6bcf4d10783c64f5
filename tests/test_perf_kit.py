"""The perf_analyzer kit (loadtest/perf.py, loadtest/gpu/perf.sh), on this CPU, before GPU time is spent on it.

loadtest/gpu/perf.sh runs here with SETUP=0 against the session's real server, NVIDIA's real
perf_analyzer (../shared/tools/perf_analyzer, or $PERF_ANALYZER) at concurrency 1 with windows of a
few requests, and the in-process stage ceilings cut short: the same script and code paths the GPU
session runs at concurrency 1 to 256.
"""

import base64
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from iqa.contract import IMAGE_INPUT
from iqa.serving.launcher import REPO
from loadtest.perf import input_data, pictures
from tests.test_deploy import run, tool

PERF_ANALYZER = Path(os.environ.get("PERF_ANALYZER", REPO.parent / "shared" / "tools" / "perf_analyzer"))


def test_each_input_entry_is_the_image_behind_a_little_endian_length():
    images = pictures("512x384", count=3)
    entries = input_data(images)["data"]
    assert len(entries) == 3
    for image, entry in zip(images, entries):
        raw = base64.b64decode(entry[IMAGE_INPUT]["b64"])
        assert struct.unpack("<I", raw[:4])[0] == len(image) and raw[4:] == image


def test_the_gpu_scripts_pass_shellcheck():
    """They run where a mistake costs scarce GPU time."""
    for script in ("perf.sh", "run.sh", "setup.sh", "prepare_carry.sh"):
        result = run([tool("shellcheck"), "--severity=style", "-x", "--shell=bash", REPO / "loadtest" / "gpu" / script])
        assert result.returncode == 0, f"{script}:\n{result.stdout}{result.stderr}"


def test_the_gpu_scripts_need_no_unzip_which_a_bare_machine_may_lack(tmp_path):
    """They unpack wheels with python3 -m zipfile (zipfile drops the executable bit: a chmod must follow)."""
    for script in (REPO / "loadtest" / "gpu").glob("*.sh"):
        code = [line for line in script.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not any("unzip" in line.split("#")[0] for line in code), script.name
    perf = (REPO / "loadtest" / "gpu" / "perf.sh").read_text()
    assert "python3 -m zipfile -e" in perf and "chmod +x /tmp/perf-analyzer/perf_analyzer/bin/perf_analyzer" in perf


def test_perf_sh_measures_the_served_ensemble_with_perf_analyzer_and_the_stage_ceilings(triton, tmp_path):
    if not PERF_ANALYZER.exists():
        pytest.fail(f"no perf_analyzer at {PERF_ANALYZER}: set PERF_ANALYZER (FINDINGS.md: shared/tools/perf_analyzer)")
    settings = {"SETUP": "0", "PYTHON": str(REPO / ".venv" / "bin" / "python"), "PERF_ANALYZER": str(PERF_ANALYZER),
                "OUT": str(tmp_path), "CONCURRENCY": "1", "SIZES": "512x384",
                "PERF_ARGS": f"--url {triton.grpc_url} --request-count 3 --stability-percentage 999 "
                             "--ceiling-seconds 0.3 --network-batch 2"}
    result = subprocess.run(["bash", "loadtest/gpu/perf.sh"], cwd=REPO, env={**os.environ, **settings},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "perf.json").read_text())
    (served,) = report["served"].values()
    assert "error" not in served and served["img_per_s"] > 0 and 0 < served["p50_ms"] <= served["p99_ms"], served
    assert {"network eager fp32, batch 2", "preprocess 512x384, 1 core"} <= set(report["ceilings"])
    assert all(value > 0 for value in report["ceilings"].values())
    assert "perf.sh: exit status 0" in (tmp_path / "perf.txt").read_text() + result.stdout
    committed = (REPO / "model_repository" / "iqa_preprocess" / "config.pbtxt").read_text()
    assert committed == (tmp_path / "committed-preprocess-config.pbtxt").read_text(), "perf.sh restores the config"
