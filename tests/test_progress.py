"""Progress piped to a file: plain, complete lines at a modest rate (issue 16, item 6)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

from mkeval.progress import PlainProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_progress_rate_limits_step_lines_and_computes_etas_by_hand():
    clock, stream = Clock(), io.StringIO()
    p = PlainProgress(stream, interval=30.0, clock=clock)
    p("plan", cells=["a", "a_int8", "b", "c"], training=["a", "b", "c"], tasks=[])
    p("cell_start", name="a", steps=100)
    for step in range(1, 101):  # one step per second
        clock.now += 1.0
        p("step", step=step, steps=100, loss=2.5, tokens_per_second=1000.0)
        if step == 50:
            p("eval", step=50, steps=100, perplexity=12.25)
    p("cell_end", name="a", status="ok")
    p("cell_start", name="a_int8", steps=0)  # an evaluation: seconds, not counted in the matrix ETA
    clock.now += 4.0
    p("cell_end", name="a_int8", status="ok")
    p("cell_start", name="b", steps=10)
    p("cell_end", name="b", status="resumed")
    p("cell_start", name="c", steps=100)  # continued from a training state at step 60: 2 s per step here
    for step in range(61, 101):
        clock.now += 2.0
        p("step", step=step, steps=100, loss=1.0, tokens_per_second=500.0)
    lines = [re.sub(r"^\[\d\d:\d\d:\d\d\] ", "", line) for line in stream.getvalue().splitlines()]
    steps = [line for line in lines if line.startswith("  step") and "loss" in line]
    # lines at 30 s, 60 s, 90 s after the cell start, and the last step; none in between
    assert [int(re.search(r"step (\d+)/", s).group(1)) for s in steps] == [30, 60, 90, 100, 75, 90, 100]
    assert steps[0] == "  step 30/100: loss 2.500, 1,000 tok/s, cell ETA 0:01:10"  # 70 steps at 1 s each
    assert "  step 50/100: validation perplexity 12.250" in lines
    # cell a took 100 s; two training cells (b, c) left at that mean; the evaluation changes nothing
    assert "cell 1/4 ok: a in 0:01:40; matrix ETA 0:03:20" in lines
    assert "cell 2/4 ok: a_int8 in 0:00:04; matrix ETA 0:03:20" in lines
    assert "cell 3/4 resumed: b; matrix ETA 0:01:40" in lines
    # the ETA of the continued cell comes from the steps run here: 30 s after its start is step 75
    assert "  step 75/100: loss 1.000, 500 tok/s, cell ETA 0:00:50" in lines
    assert lines[0] == "plan: 4 cell(s)"


def test_a_piped_run_prints_complete_lines_and_no_bars(tmp_path):
    env = {**os.environ, "COLUMNS": "40"}
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--models", "transformer", "--datasets", "markov",
                           "--seq-len", "16", "--train-tokens", "2048", "--batch-size", "8", "--eval-interval", "8",
                           "--limit-windows", "4", "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "…" not in err and "━" not in err  # no cut-off live bar
    stamped = [line for line in err.splitlines() if re.match(r"^\[\d\d:\d\d:\d\d\] ", line)]
    assert any(line.endswith("plan: 1 cell(s)") for line in stamped)
    assert any("cell 1/1 started: transformer_markov_seq16_bits32, 16 steps" in line for line in stamped)
    assert any(re.search(r"validation perplexity \d+\.\d{3}$", line) for line in stamped)
    assert any(re.search(r"cell 1/1 ok: transformer_markov_seq16_bits32 in \d:\d\d:\d\d$", line) for line in stamped)
