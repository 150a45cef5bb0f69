"""Scale-out (docs/distributed.md): --shard across processes, the Ray executor, torchrun data
parallelism; the same numbers as one local process."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mkeval
from mkeval.cli import main
from mkeval.errors import UsageError
from mkeval.runner.plan import TaskUnit
from mkeval.runner.shards import Shard, parse_shard, scheduling_groups, shard_jobs

PROTOCOL = """\
batch_size: 4
seq_lens: [16]
train_tokens: 384
eval_interval: 3
warmup_steps: 1
eval_tokens: 144
test_tokens: 144
"""  # 9 validation and test windows: they do not split evenly over 2 torchrun ranks (5 + 4)
MATRIX = ["--models", "bk,mamba", "--datasets", "markov", "--precisions", "fp32,int8", "--device", "cpu"]
# what changes from one run to the next without changing a number: clocks, memory, the run's record
VOLATILE = {"training_time", "tokens_per_second", "peak_memory_mb", "created", "config", "git_revision"}
TASK = """\
name: toyyes
kind: multiple_choice
metrics: [accuracy]
local:
  - format: jsonl
    files: {train: train.jsonl, eval: val.jsonl}
inputs: ["{q}"]
choices: ["{a}", "{b}"]
label: label
labels: [0, 1]
"""


def numbers(directory: Path) -> dict[str, dict]:
    """Every cell result of a directory without its volatile fields."""
    out = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        if "cell_hash" in data:
            out[path.name] = {k: v for k, v in data.items() if k not in VOLATILE}
    return out


def mkeval_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mkeval", "run", *args]


def env_one_thread() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "protocol.yaml"
    path.write_text(PROTOCOL)
    return path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, config) -> Path:
    """The reference: the matrix in one local process."""
    out = tmp_path_factory.mktemp("local")
    assert main(["run", *MATRIX, "--config", str(config), "--output-dir", str(out), "--threads", "1"]) == 0
    return out


# --------------------------------------------------------------------------- the shard split
def test_shard_option_is_checked():
    assert parse_shard("1/4") == Shard(1, 4) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    for bad, why in (("4/4", "must be in 0..3"), ("1", "expected I/N"), ("-1/2", "expected I/N"),
                     ("a/b", "expected I/N"), ("0/0", "must be in 0..0")):
        with pytest.raises(UsageError, match=why):
            parse_shard(bad)


def test_shards_split_the_plan_into_whole_dependency_groups(tmp_path):
    """Every job in exactly one shard, each with everything it needs, the same split every time."""
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "toyyes.yaml").write_text(TASK)
    rows = [{"q": f"is {i} even", "a": "yes", "b": "no", "label": i % 2} for i in range(8)]
    for name in ("train.jsonl", "val.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = mkeval.run(models="bk,mamba", datasets="wikitext-2", tasks="toyyes", include_path=str(tmp_path / "spec"),
                      precisions="fp32,int8", seeds="0,1", data_dir=tmp_path, dry_run=True, device="cpu").plan
    kinds = [j.kind for j in plan.jobs]
    assert kinds.count("train") == 4 and kinds.count("precision_eval") == 4 and kinds.count("task") == 4
    groups = scheduling_groups(plan.jobs)
    assert len(groups) == 4  # each training cell with its int8 evaluation and the tasks fine-tuned from it
    for count in (1, 2, 3, 5):
        shards = [shard_jobs(plan.jobs, Shard(i, count)) for i in range(count)]
        names = [j.name for s in shards for j in s]
        assert sorted(names) == sorted(j.name for j in plan.jobs) and len(set(names)) == len(names)
        for s in shards:
            mine = {j.name for j in s}
            assert all(n in mine for j in s for n in j.needs)
            assert [j.name for j in s] == [j.name for j in plan.jobs if j.name in mine]  # plan order
        assert [len(s) for s in shards] == [sum(len(g) for g in groups[i::count]) for i in range(count)]
    # from scratch: every task is a group of its own
    scratch = mkeval.run(models="bk", tasks="toyyes", include_path=str(tmp_path / "spec"), seeds="0,1,2",
                         data_dir=tmp_path, dry_run=True, device="cpu").plan
    assert len(scheduling_groups(scratch.jobs)) == 3 and all(isinstance(j, TaskUnit) for j in scratch.jobs)


def test_dry_run_lists_one_shards_jobs(config, capsys):
    assert main(["run", *MATRIX, "--config", str(config), "--dry-run", "--shard", "1/2"]) == 0
    shown = capsys.readouterr().out
    assert "mamba_markov_seq16_bits32" in shown and "mamba_markov_seq16_bits8" in shown
    assert "bk_markov" not in shown


def test_two_shard_processes_fill_one_directory_like_one_process(local_run, config, tmp_path):
    """Started at once, two --shard processes write the full plan's results, each job once, with the
    numbers of one local process; a final --resume merges them without running anything."""
    out = tmp_path / "sharded"
    procs = [subprocess.Popen(mkeval_cmd(*MATRIX, "--config", str(config), "--output-dir", str(out), "--threads", "1",
                                         "--shard", f"{i}/2"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env_one_thread()) for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    summaries = [json.loads((out / f"run_summary.shard-{i}-of-2.json").read_text()) for i in range(2)]
    ran = [{c["name"] for c in s["cells"] if c["status"] == "ok"} for s in summaries]
    assert not ran[0] & ran[1], "a job ran in both shards"
    assert ran[0] | ran[1] == {p.stem for p in local_run.glob("*_bits*.json")}
    assert all(s["run"]["shard"] == f"{i}/2" for i, s in enumerate(summaries))
    assert numbers(out) == numbers(local_run)
    assert not (out / "run_summary.json").exists()
    # mkeval report reads the shards' files and summaries directly
    assert main(["report", str(out)]) == 0
    assert len((out / "report.csv").read_text().splitlines()) == 1 + 4
    # the final merge: everything resumed, the run summary written
    assert main(["run", *MATRIX, "--config", str(config), "--output-dir", str(out), "--threads", "1",
                 "--resume"]) == 0
    merged = json.loads((out / "run_summary.json").read_text())
    assert merged["counts"] == {"ok": 0, "resumed": 4, "failed": 0}


def test_report_merges_shard_failures_and_drops_those_rerun(local_run, tmp_path):
    """A failure in one shard's summary is reported until some run writes that cell's result."""
    from mkeval.report import build_report

    out = tmp_path / "run"
    shutil.copytree(local_run, out)
    done = json.loads((out / "bk_markov_seq16_bits32.json").read_text())["cell_hash"]
    cells = [{"name": "mamba_markov_seq16_bits32", "cell_hash": "0123456789abcdef", "status": "failed",
              "error": "boom"},
             {"name": "bk_markov_seq16_bits32", "cell_hash": done, "status": "failed", "error": "rerun since"}]
    for i, listed in enumerate(([], cells)):
        (out / f"run_summary.shard-{i}-of-2.json").write_text(json.dumps({"cells": listed, "tasks": []}))
    report = build_report(out)
    assert [f["name"] for f in report.failed] == ["mamba_markov_seq16_bits32"]
    assert "boom" in report.markdown() and "rerun since" not in report.markdown()
    (out / "run_summary.shard-0-of-2.json").write_text("{not json")
    assert "run_summary.shard-0-of-2.json" in build_report(out).unreadable


# --------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray executor needs `pip install mkeval[ray]`")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_executor_gives_the_local_numbers(ray_cluster, local_run, config, tmp_path):
    """A 4-job plan (2 training cells, 2 int8 evaluations of their checkpoints) as Ray tasks."""
    out = tmp_path / "ray"
    assert main(["run", *MATRIX, "--config", str(config), "--output-dir", str(out), "--executor", "ray",
                 "--threads", "1"]) == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["counts"] == {"ok": 4, "resumed": 0, "failed": 0}
    assert summary["run"]["executor"] == "ray"
    assert numbers(out) == numbers(local_run)
    # --resume on Ray submits nothing
    assert main(["run", *MATRIX, "--config", str(config), "--output-dir", str(out), "--executor", "ray",
                 "--threads", "1", "--resume"]) == 0
    assert json.loads((out / "run_summary.json").read_text())["counts"]["resumed"] == 4


def test_ray_isolates_a_failed_job_and_fails_what_needs_it(ray_cluster, config, tmp_path):
    out = tmp_path / "diverged"
    result = mkeval.run(models="mamba", datasets="markov", precisions="fp32,int8", config=config, output_dir=out,
                        device="cpu", executor="ray", lr=1e6, max_nonfinite=1, threads=1)
    trained, evaluated = result.cells
    assert trained.status == "failed" and "non-finite" in trained.error
    assert (out / trained.traceback_file).read_text().startswith("Traceback")
    assert evaluated.status == "failed" and "needs mamba_markov_seq16_bits32" in evaluated.error
    assert not list(out.glob("mamba_*.json"))


def test_ray_missing_is_a_usage_error(monkeypatch, config, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["run", *MATRIX, "--config", str(config), "--output-dir", str(tmp_path / "o"),
                 "--executor", "ray"]) == 2
    assert 'pip install "mkeval[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--executor", "dask"], "--executor: unknown executor 'dask'"),
    (["--ray-cpus", "2"], "--ray-cpus: only with --executor ray"),
    (["--shard", "2/2"], "--shard 2/2: the shard index must be in 0..1"),
    (["--threads", "0"], "--threads: must be a positive integer"),
    (["--executor", "ray", "--shard", "0/2"], "--shard: not with --executor ray"),
    (["--executor", "ray", "--ray-gpus", "0.5"], "--ray-gpus 0.5 with --device cpu"),
])
def test_bad_scale_out_options(args, message, config, tmp_path, capsys):
    if "ray" in args:
        pytest.importorskip("ray")
    assert main(["run", *MATRIX, "--config", str(config), "--output-dir", str(tmp_path / "o"), *args]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "o").exists()


def test_torchrun_batch_must_split_evenly(monkeypatch, config, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["run", *MATRIX, "--config", str(config), "--output-dir", str(tmp_path / "o")]) == 2
    assert "--batch-size 4: not divisible by the 3 torchrun processes" in capsys.readouterr().err.replace("\n", " ")


# --------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_two_gloo_processes_match_one(config, tmp_path):
    """DDP over 2 gloo processes at the same global batch: test perplexity within 1e-4 relative of one
    process, for BK (whose load-balancing loss is reduced over the global batch) and Mamba."""
    args = ["--models", "bk,mamba", "--datasets", "markov", "--device", "cpu", "--config", str(config)]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(mkeval_cmd(*args, "--output-dir", str(one)), check=True, env=env_one_thread(),
                   capture_output=True, timeout=600)
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "mkeval", "run", *args, "--output-dir",
                           str(two)], env=env_one_thread(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    for model in ("bk", "mamba"):
        a = json.loads((one / f"{model}_markov_seq16_bits32.json").read_text())
        b = json.loads((two / f"{model}_markov_seq16_bits32.json").read_text())
        assert b["config"]["run"]["world_size"] == 2 and b["config"]["run"]["backend"] == "gloo"
        assert b["config"]["training"]["data_parallel"]["world_size"] == 2
        assert b["train_tokens"] == a["train_tokens"] and b["test_tokens"] == a["test_tokens"]
        assert math.isclose(b["test_perplexity"], a["test_perplexity"], rel_tol=1e-4)
        aux = b["config"]["training"]["data_parallel"]["auxiliary_loss"]
        assert aux == ("global batch" if model == "bk" else None)
    assert sorted(p.name for p in two.glob("*.json")) == sorted(p.name for p in one.glob("*.json"))


def test_world_size_without_the_rest_of_torchruns_variables_is_bad_input(monkeypatch, config, tmp_path, capsys):
    """A leftover WORLD_SIZE (another launcher) must not end in a traceback from init_process_group."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert main(["run", *MATRIX, "--config", str(config), "--output-dir", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "WORLD_SIZE=2" in err and "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not set" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def _on_main_rank(rank: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from mkeval.engine.distributed import World

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    world = World(rank, 2, "gloo")

    def write() -> None:
        raise OSError(28, "No space left on device")

    outcome = "went on"
    try:
        world.on_main(write, torch.device("cpu"), "saving the best checkpoint")
    except Exception as exc:  # noqa: BLE001
        outcome = f"{type(exc).__name__}: {exc}"
    world.on_main(lambda: None, torch.device("cpu"), "a write that works")  # still in step afterwards
    Path(out, f"rank{rank}").write_text(outcome)
    dist.destroy_process_group()


def test_a_write_that_fails_on_rank_0_fails_the_cell_on_every_rank(tmp_path):
    """Rank 0 alone writes files; if that fails, every rank must leave the cell (no rank left waiting
    in collectives the others abandoned)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_on_main_rank, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0").read_text() == "OSError: [Errno 28] No space left on device"
    assert (tmp_path / "rank1").read_text() == ("CellFailed: saving the best checkpoint failed on rank 0 (its "
                                                "traceback file has the error)")
