"""mkeval.threads: the CPUs a process can use (affinity, cgroup v1 and v2 quotas, read from fake
cgroup trees), the thread-count rule, and share_work's results, errors and helper handling."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mkeval import UsageError, threads


def _tree(tmp_path: Path, files: dict[str, str], proc_cgroup: str) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text(proc_cgroup)
    return root, proc


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """Pretend to be a process with ``cpus`` in its affinity mask and the given cgroup files."""

    def make(cpus: int, files: dict[str, str], proc_cgroup: str = "0::/\n", omp: str | None = None):
        root, proc = _tree(tmp_path, files, proc_cgroup)
        monkeypatch.setattr(threads, "CGROUP_ROOT", root)
        monkeypatch.setattr(threads, "PROC_CGROUP", proc)
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
        if omp is None:
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OMP_NUM_THREADS", omp)

    return make


@pytest.mark.parametrize(
    "cpus, files, proc_cgroup, expected",
    [
        (8, {}, "0::/\n", 8),  # no cgroup files: affinity alone
        (8, {"cpu.max": "max 100000\n"}, "0::/\n", 8),  # v2, unlimited
        (8, {"cpu.max": "200000 100000\n"}, "0::/\n", 2),  # v2, two CPUs of quota
        (8, {"cpu.max": "150000 100000\n"}, "0::/\n", 1),  # 1.5 CPUs: one thread, not two
        (8, {"cpu.max": "50000 100000\n"}, "0::/\n", 1),  # under one CPU: still one thread
        (2, {"cpu.max": "400000 100000\n"}, "0::/\n", 2),  # the quota exceeds the affinity mask
        # v2, nested: the tightest quota along the process's path wins
        (16, {"cpu.max": "max 100000", "kube/pod/cpu.max": "600000 100000", "kube/cpu.max": "300000 100000"},
         "0::/kube/pod\n", 3),
        # v1: quota and period, mounted as cpu,cpuacct; -1 is unlimited
        (8, {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "250000", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000"},
         "4:cpu,cpuacct:/docker/x\n1:memory:/docker/x\n", 2),
        (8, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, "3:cpu:/\n", 8),
        (4, {"cpu.max": "garbage"}, "0::/\n", 4),  # unreadable quota: ignored
    ],
)
def test_threads_follow_affinity_and_the_cgroup_quota(machine, cpus, files, proc_cgroup, expected):
    machine(cpus, files, proc_cgroup)
    assert threads.choose_threads() == expected
    assert threads.describe()["threads"] == expected
    assert threads.describe()["affinity_cpus"] == cpus


def test_quota_values_are_read_as_cpus(machine):
    machine(8, {"cpu.max": "150000 100000\n"})
    assert threads.cgroup_cpu_quota() == pytest.approx(1.5)
    assert threads.usable_cpus() == pytest.approx(1.5)


def test_omp_num_threads_and_an_explicit_request_win(machine, caplog):
    machine(8, {"cpu.max": "200000 100000"}, omp="3")
    assert threads.choose_threads() == 3
    assert threads.choose_threads(5) == 5  # explicit beats the environment, with a warning past the quota
    assert "can use 2 CPUs" in caplog.text
    machine(8, {"cpu.max": "200000 100000"}, omp="zero")  # not a positive integer: ignored
    assert threads.choose_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_a_request_that_is_not_a_positive_integer_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="--threads must be a positive integer"):
        threads.choose_threads(bad)


def test_without_sched_getaffinity_the_cpu_count_is_used(monkeypatch):
    monkeypatch.delattr(threads.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 6)
    assert threads.affinity_cpus() == 6


# --------------------------------------------------------------------------- share_work
@pytest.mark.parametrize("n_threads, piece", [(1, 3), (2, 1), (3, 4), (4, 100)])
def test_share_work_covers_every_item_once(n_threads, piece):
    seen: list[int] = []
    lock = threading.Lock()

    def task(start, stop):
        with lock:
            seen.extend(range(start, stop))

    threads.share_work(task, 37, n_threads, piece)
    assert sorted(seen) == list(range(37))


def test_share_work_raises_a_helpers_error():
    def task(start, stop):
        if start == 6:
            raise RuntimeError("piece 6 failed")

    with pytest.raises(RuntimeError, match="piece 6 failed"):
        threads.share_work(task, 10, 3, 2)


def test_share_work_does_not_wait_for_a_helper_that_never_starts(monkeypatch):
    """A helper without a CPU (simulated: its pool never runs anything) claims nothing, and the
    caller does all the work itself instead of waiting."""

    class StalledPool:
        def submit(self, fn):
            class Pending:
                def cancel(self):
                    return True

            return Pending()

    monkeypatch.setattr(threads, "_helpers", lambda count: StalledPool())
    done = []
    threads.share_work(lambda a, b: done.append((a, b)), 8, 4, 2)
    assert sorted(done) == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_share_work_runs_pieces_on_more_than_one_thread():
    names = set()

    def task(start, stop):
        names.add(threading.current_thread().name)
        time.sleep(0.01)  # releases the GIL, as the compiled kernels do

    threads.share_work(task, 20, 2, 1)
    assert len(names) == 2


def test_a_run_uses_the_chosen_threads_records_them_and_restores_torchs(machine, tmp_path):
    """A run's intra-op threads come from the rule (here a 1-CPU quota on a 2-CPU mask), are
    recorded in every result, and --threads overrides; torch's own setting is restored after."""
    import json

    import torch

    import mkeval

    machine(2, {"cpu.max": "100000 100000\n"})
    before = torch.get_num_threads()
    seen = []
    small = dict(models="transformer", datasets="markov", seq_len=16, train_tokens=256, batch_size=8,
                 eval_interval=2, limit_windows=2, device="cpu")

    def progress(event, **info):
        if event == "cell_start":
            seen.append(torch.get_num_threads())

    mkeval.run(output_dir=tmp_path / "a", progress=progress, **small)
    mkeval.run(output_dir=tmp_path / "b", progress=progress, threads=3, **small)
    assert seen == [1, 3] and torch.get_num_threads() == before
    recorded = [json.loads(next((tmp_path / d).glob("transformer_*.json")).read_text())["config"]["run"]["threads"]
                for d in ("a", "b")]
    assert recorded == [1, 3]
