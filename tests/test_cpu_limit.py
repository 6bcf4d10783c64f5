"""Decode threads per preprocessing instance: the CPU quota of the cgroup, not the node's cores."""

from __future__ import annotations

import os

import pytest

from iqa.serving.cpu_limit import MAX_DECODE_THREADS, cgroup_cpu_quota, decode_threads, usable_cpus


def fake_cgroup(tmp_path, proc_lines: str, files: dict[str, str]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc_cgroup").write_text(proc_lines)
    root = tmp_path / "sys_fs_cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    root.mkdir(exist_ok=True)
    return root, tmp_path / "proc_cgroup"


def test_a_cgroup_v2_quota_of_8_cpus_gives_four_decoders_2_threads_each_and_two_map_instances_4(tmp_path):
    # A Kubernetes container with limits.cpu: "8": cpu.max "800000 100000" in its own cgroup (namespace root).
    root, proc = fake_cgroup(tmp_path, "0::/\n", {"cpu.max": "800000 100000\n"})
    assert cgroup_cpu_quota(root, proc) == 8.0
    cpus = min(8.0, 64.0)  # the node's 64 cores are all in the affinity mask
    assert decode_threads(4, cpus) == 2 and decode_threads(2, cpus) == 4
    assert 4 * decode_threads(4, cpus) + 2 * decode_threads(2, cpus) == 16  # was 6 x 8 = 48


def test_the_tightest_quota_on_the_path_to_the_root_applies_and_max_means_none(tmp_path):
    root, proc = fake_cgroup(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "kubepods/cpu.max": "max 100000", "kubepods/pod1/cpu.max": "250000 100000",
        "kubepods/pod1/ctr/cpu.max": "max 100000"})
    assert cgroup_cpu_quota(root, proc) == 2.5
    assert decode_threads(1, 2.5) == 3 and decode_threads(4, 2.5) == 1
    root, proc = fake_cgroup(tmp_path / "unlimited", "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None


def test_cgroup_v1_quota_is_read_from_the_cpu_controller(tmp_path):
    root, proc = fake_cgroup(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "150000\n", "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert usable_cpus(root, proc) == min(1.5, len(os.sched_getaffinity(0)))


def test_threads_stay_between_one_and_the_batch_size():
    assert decode_threads(1, 64.0) == MAX_DECODE_THREADS
    assert decode_threads(8, 0.5) == 1


def test_no_cgroup_file_means_no_quota(tmp_path):
    assert cgroup_cpu_quota(tmp_path, tmp_path / "missing") is None
    assert usable_cpus(tmp_path, tmp_path / "missing") == pytest.approx(len(os.sched_getaffinity(0)))
