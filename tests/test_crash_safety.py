"""Crash safety: multi-cell resume, SIGKILL at chosen points, training resumed from inside a cell,
stale temp files and unreadable result files."""

import importlib.util
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

import mkeval
from mkeval.results import remove_stale_temp_files, write_json

from helpers import bigram_spec

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _campaign_module():
    spec = importlib.util.spec_from_file_location("crash_campaign", TOOLS / "crash_campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def reg(registry):
    registry.add(bigram_spec())
    return registry


def _run(reg, protocol, out, **kw):
    kw.setdefault("models", "bigram")
    kw.setdefault("datasets", "markov")
    return mkeval.run(protocol=protocol, output_dir=out, registry=reg, device="cpu", **kw)


def test_resume_finishes_every_cell_after_a_finished_one(reg, tiny_protocol, tmp_path):
    """The reported bug: a resumed matrix failed every unfinished cell after a finished one."""
    full = _run(reg, tiny_protocol, tmp_path / "full", seeds="0,1,2", precisions="fp32,int8")
    out = tmp_path / "killed"
    _run(reg, tiny_protocol, out, seeds="0,1,2", precisions="fp32,int8")
    # as if killed after the first cell: later results never written
    for path in out.glob("*.json"):
        if path.name != "bigram_markov_seq16_bits32_seed0.json":
            path.unlink()
    resumed = _run(reg, tiny_protocol, out, seeds="0,1,2", precisions="fp32,int8", resume=True)
    assert [c.status for c in resumed.cells].count("resumed") == 1
    assert not resumed.failed, [c.error for c in resumed.failed]
    assert [r.test_perplexity for r in resumed.results] == [r.test_perplexity for r in full.results]


def test_resume_adds_a_post_training_precision_to_a_finished_run(reg, tiny_protocol, tmp_path):
    first = _run(reg, tiny_protocol, tmp_path)
    again = _run(reg, tiny_protocol, tmp_path, bits="32,8", resume=True)
    assert [c.status for c in again.cells] == ["resumed", "ok"], [c.error for c in again.cells]
    assert again.results[1].evaluated_checkpoint_of == first.results[0].model_name + "_markov_seq16_bits32"


def test_a_killed_cell_resumes_from_its_training_state_with_identical_numbers(reg, tiny_protocol, tmp_path):
    protocol = tiny_protocol.replace(checkpoint_interval=2, train_tokens=4 * 16 * 9)
    full = _run(reg, protocol, tmp_path / "full").results[0]
    out = tmp_path / "killed"
    _run(reg, protocol, out)
    # rebuild the state a kill at step 6 would leave: run again with training stopped after step 6
    state = out / full.checkpoint / "training_state.pt"
    assert not state.exists()  # a finished cell leaves no state behind
    (out / "bigram_markov_seq16_bits32.json").unlink()
    import mkeval.engine.loop as training

    real = training.lr_factor

    def stop_after_six(step, total, protocol):
        if step == 6:
            raise KeyboardInterrupt  # what a kill does to this process, minus the clean-up
        return real(step, total, protocol)

    training.lr_factor = stop_after_six
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(reg, protocol, out)
    finally:
        training.lr_factor = real
    assert state.exists()
    # without --resume a leftover state is not used: the cell starts over, with the same numbers
    fresh_dir = tmp_path / "fresh"
    shutil.copytree(out, fresh_dir)
    fresh = _run(reg, protocol, fresh_dir).results[0]
    assert fresh.config["training"]["resumed_at_steps"] == [] and fresh.test_perplexity == full.test_perplexity
    resumed = _run(reg, protocol, out, resume=True).results[0]
    assert resumed.config["training"]["resumed_at_steps"] == [6]
    for name in ("test_perplexity", "test_loss", "best_perplexity", "final_perplexity", "epoch_losses",
                 "epoch_perplexities", "best_step", "train_tokens", "final_loss"):
        assert getattr(resumed, name) == getattr(full, name), name
    assert not state.exists()


def test_stale_temp_files_are_removed_and_live_ones_kept(tmp_path):
    host = socket.gethostname()
    dead = tmp_path / f".a.json.mkeval-{host}-999999999-x1.tmp"
    live = tmp_path / "checkpoints" / "c" / f".model.safetensors.mkeval-{host}-{os.getpid()}-x2.tmp"
    foreign = tmp_path / ".b.json.mkeval-otherhost-12-x3.tmp"
    unrelated = tmp_path / "notes.tmp"
    for p in (dead, live, foreign, unrelated):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    old = foreign.with_name(".c.json.mkeval-otherhost-13-x4.tmp")
    old.write_text("x")
    os.utime(old, (0, 0))
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(removed) == sorted([dead, old])
    assert live.exists() and foreign.exists() and unrelated.exists()


def test_result_files_are_readable_by_others(reg, tiny_protocol, tmp_path):
    old = os.umask(0o022)
    try:
        _run(reg, tiny_protocol, tmp_path)
    finally:
        os.umask(old)
    for path in [*tmp_path.glob("*.json"), *tmp_path.glob("checkpoints/*/*")]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_an_unreadable_result_is_rerun_and_said(reg, tiny_protocol, tmp_path, caplog):
    first = _run(reg, tiny_protocol, tmp_path, seeds="0,1")
    broken = tmp_path / "bigram_markov_seq16_bits32_seed1.json"
    broken.write_text(broken.read_text()[:100])  # a torn file, as no mkeval write leaves one
    again = _run(reg, tiny_protocol, tmp_path, seeds="0,1", resume=True)
    assert [c.status for c in again.cells] == ["resumed", "ok"]
    assert "unreadable" in again.cells[1].note and "rerun" in again.cells[1].note
    assert "unreadable" in caplog.text
    assert json.loads(broken.read_text())["test_perplexity"] == first.results[1].test_perplexity


def test_report_names_unreadable_files_and_fails_unless_told(reg, tiny_protocol, tmp_path, capsys):
    from mkeval.cli import main

    _run(reg, tiny_protocol, tmp_path)
    (tmp_path / "bigram_markov_seq16_bits32.json").write_text("{not json")
    write_json(tmp_path / "other.json", {"status": "ok", "cell_hash": "x"})  # a result missing its fields
    assert main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bigram_markov_seq16_bits32.json" in err and "other.json" in err
    assert main(["report", str(tmp_path), "--ignore-bad-files"]) == 0


@pytest.mark.slow
def test_sigkill_at_chosen_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A real process killed with SIGKILL: during start-up, inside a training cell (after it saved a
    training state), between cells, and inside a later cell; then resumed to the end."""
    campaign = _campaign_module()
    config = campaign.write_config(tmp_path)
    reference = tmp_path / "reference"
    done = campaign.run_to_end(config, reference, resume=False)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = campaign.numbers(reference)
    assert len(expected) == 8  # 2 models x 2 seeds x (fp32 trained, int8 evaluated)

    out = tmp_path / "killed"
    results = lambda: campaign.cell_files(out)  # noqa: E731
    counts, watch = campaign.Counts(), campaign.Watch()

    def state_saved(min_results: int = 0):
        """A training state written by this run (so: inside a cell), once min_results results exist."""
        since = time.time()

        def when(t: float) -> bool:
            fresh = [p for p in out.glob("checkpoints/*/training_state.pt") if p.stat().st_mtime > since]
            return bool(fresh) and len(results()) >= min_results
        return when

    def new_result():
        before = len(results())
        return lambda t: len(results()) > before

    points = [
        ("start-up, before any result", False, lambda: (lambda t: t > 1.0 and not out.exists())),
        ("inside the first cell, after a training state was saved", True, state_saved),
        ("between cells, as a result appears", True, new_result),
        ("inside a later cell", True, lambda: state_saved(min_results=2)),
    ]
    for label, resume, make_when in points:
        killed = campaign.run_and_kill(config, out, resume, make_when())
        assert killed, f"the run finished before the kill point: {label}"
        watch.check(out, counts)
    assert not out.exists() or len(results()) < 8
    final = campaign.run_to_end(config, out, resume=True)
    assert final.returncode == 0, final.stderr[-3000:]
    watch.check(out, counts)
    campaign.audit(out, expected, counts)
    assert counts.problems == []
    assert (counts.cells_lost, counts.corrupt_files, counts.mismatched_numbers, counts.cells_run_twice) == (0, 0, 0, 0)
    resumed_inside = [json.loads(p.read_text())["config"]["training"]["resumed_at_steps"]
                      for p in results().values()]
    assert any(resumed_inside), "no cell was continued from a saved training state"
