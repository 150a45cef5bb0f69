"""Crash campaign: kill `mkeval run` with SIGKILL at many points, resume, and count what was lost.

    python tools/crash_campaign.py                 # 20 random kill points on a small matrix
    python tools/crash_campaign.py --points 50 --seed 3 --keep /tmp/campaign

The matrix (two models x two seeds, trained at fp32 and evaluated at int8) first runs once
uninterrupted: that is the reference. Then, in fresh output directories, a run is started and
killed (SIGKILL, no chance to clean up) at a random moment, resumed with `--resume` and killed
again, until the run finishes; each kill is one point. At the end every directory must hold
exactly the reference's cells, with every number equal bit for bit. Printed counts:

- cells lost: cells of the matrix without a finished result at the end;
- corrupt files: result or checkpoint files that cannot be read, and temp files left behind;
- mismatched numbers: cells whose numbers differ from the uninterrupted run;
- cells run twice: a finished result file rewritten by a later resume.

The test suite runs the same machinery at chosen points (tests/test_crash_safety.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

CONFIG = """\
# a small matrix whose cells take about a second each on a CPU
models: transformer,bk
datasets: markov
precisions: fp32,int8
seeds: [0, 1]
seq_lens: [32]
batch_size: 4
train_tokens: 2048
eval_interval: 4
eval_tokens: 512
test_tokens: 512
warmup_steps: 2
checkpoint_interval: 2
"""
# what may differ between a resumed and an uninterrupted run: clocks, memory, provenance
VOLATILE = {"training_time", "tokens_per_second", "peak_memory_mb", "created", "git_revision"}
VOLATILE_CONFIG = {"run"}


@dataclass
class Counts:
    points: int = 0
    cells_lost: int = 0
    corrupt_files: int = 0
    mismatched_numbers: int = 0
    cells_run_twice: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"kill points {self.points}: cells lost {self.cells_lost}, corrupt files {self.corrupt_files}, "
                f"mismatched numbers {self.mismatched_numbers}, cells run twice {self.cells_run_twice}")


def env() -> dict[str, str]:
    """One thread, as in every run of the campaign: the same thread count gives the same numbers."""
    out = dict(os.environ)
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return out


def command(config: Path, output: Path, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "mkeval", "run", "--config", str(config), "--output-dir", str(output),
           "--device", "cpu"]
    return cmd + (["--resume"] if resume else [])


def run_to_end(config: Path, output: Path, resume: bool) -> subprocess.CompletedProcess:
    return subprocess.run(command(config, output, resume), env=env(), capture_output=True, text=True, timeout=1800)


def run_and_kill(config: Path, output: Path, resume: bool, when: Callable[[float], bool]) -> bool:
    """Start a run and SIGKILL it as soon as ``when(seconds since start)`` holds; False if it ended first."""
    proc = subprocess.Popen(command(config, output, resume), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    start = time.monotonic()
    try:
        while proc.poll() is None:
            if when(time.monotonic() - start):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.005)
        return False
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cell_files(output: Path) -> dict[str, Path]:
    """Cell result files (name -> path): every top-level JSON except the run summary."""
    return {p.stem: p for p in output.glob("*.json") if p.name != "run_summary.json"}


def comparable(data: dict) -> dict:
    out = {k: v for k, v in data.items() if k not in VOLATILE}
    out["config"] = {k: v for k, v in data.get("config", {}).items() if k not in VOLATILE_CONFIG}
    out["config"].get("training", {}).pop("resumed_at_steps", None)
    return out


def numbers(output: Path) -> dict[str, dict]:
    return {name: comparable(json.loads(path.read_text())) for name, path in cell_files(output).items()}


def audit(output: Path, reference: dict[str, dict], counts: Counts) -> None:
    """Compare a finished directory with the reference; add what is wrong to ``counts``."""
    import safetensors.torch

    temps = [p for p in output.rglob("*.tmp")]
    counts.corrupt_files += len(temps)
    counts.problems += [f"{output}: temp file left behind: {p}" for p in temps]
    found: dict[str, dict] = {}
    for name, path in cell_files(output).items():
        try:
            found[name] = comparable(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            counts.corrupt_files += 1
            counts.problems.append(f"{path}: unreadable ({exc})")
    for weights in output.glob("checkpoints/*/model.safetensors"):
        try:
            safetensors.torch.load_file(str(weights))
        except Exception as exc:  # noqa: BLE001 - any failure to read is corruption
            counts.corrupt_files += 1
            counts.problems.append(f"{weights}: unreadable ({exc})")
    leftovers = list(output.glob("checkpoints/*/training_state.pt"))
    counts.corrupt_files += len(leftovers)
    counts.problems += [f"{p}: a finished cell's training state was left behind" for p in leftovers]
    for name, expected in reference.items():
        if name not in found:
            counts.cells_lost += 1
            counts.problems.append(f"{output}: cell {name} has no result")
        elif found[name] != expected:
            counts.mismatched_numbers += 1
            diff = sorted(k for k in expected if found[name].get(k) != expected[k])
            counts.problems.append(f"{output}: cell {name} differs from the uninterrupted run in {diff}")


class Watch:
    """Remembers each finished result file's identity, to catch a later run rewriting it."""

    def __init__(self) -> None:
        self.seen: dict[Path, tuple[int, int]] = {}

    def check(self, output: Path, counts: Counts) -> None:
        for path in cell_files(output).values():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            ident = (stat.st_ino, stat.st_mtime_ns)
            if path in self.seen and self.seen[path] != ident:
                counts.cells_run_twice += 1
                counts.problems.append(f"{path}: a finished cell was run again")
            self.seen[path] = ident


def write_config(directory: Path, text: str = CONFIG) -> Path:
    path = directory / "campaign.yaml"
    path.write_text(text)
    return path


def after_work_starts(output: Path, delay: float) -> Callable[[float], bool]:
    """True ``delay`` seconds after the run created its output directory (imports and data loading
    come before that; a negative delay kills during start-up, before any result)."""
    seen: list[float] = []

    def when(t: float) -> bool:
        if delay < 0:
            return t >= -delay
        if not seen and output.is_dir():
            seen.append(t)
        return bool(seen) and t - seen[0] >= delay
    return when


def work_seconds(config: Path, output: Path) -> tuple[float, float]:
    """Seconds of an uninterrupted run before its output directory appears, and after."""
    marks: list[float] = []

    def when(t: float) -> bool:
        if not marks and output.is_dir():
            marks.append(t)
        return False
    start = time.monotonic()
    run_and_kill(config, output, False, when)
    total = time.monotonic() - start
    first = marks[0] if marks else total
    return first, total - first


def campaign(points: int, seed: int, workdir: Path, config_text: str = CONFIG, log: Callable[[str], None] = print
             ) -> Counts:
    rng = random.Random(seed)
    config = write_config(workdir, config_text)
    reference_dir = workdir / "reference"
    startup, work = work_seconds(config, reference_dir)
    if not (reference_dir / "run_summary.json").exists() or len(cell_files(reference_dir)) == 0:
        done = run_to_end(config, reference_dir, resume=True)
        raise SystemExit(f"the uninterrupted run failed:\n{done.stderr[-3000:]}")
    reference = numbers(reference_dir)
    log(f"reference: {len(reference)} cells; {startup:.1f} s of start-up, then {work:.1f} s of work")
    counts = Counts()
    attempt = 0
    while counts.points < points:
        attempt += 1
        output, watch, resume = workdir / f"killed-{attempt}", Watch(), False
        while counts.points < points:
            # one kill in ten during start-up; the others while cells are running
            delay = -rng.uniform(0.2, startup) if rng.random() < 0.1 else rng.uniform(0.0, work)
            killed = run_and_kill(config, output, resume, after_work_starts(output, delay))
            watch.check(output, counts)
            if not killed:
                break
            counts.points += 1
            where = f"{-delay:.2f} s after start" if delay < 0 else f"{delay:.2f} s into the work"
            log(f"point {counts.points}: killed {output.name} {where}")
            resume = True
        final = run_to_end(config, output, resume=True)
        if final.returncode != 0:
            counts.problems.append(f"{output}: the final --resume exited {final.returncode}: {final.stderr[-500:]}")
        watch.check(output, counts)
        audit(output, reference, counts)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20, help="kill points (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill times (default: 0)")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temp folder, removed)")
    args = parser.parse_args(argv)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mkeval-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        counts = campaign(args.points, args.seed, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    for problem in counts.problems:
        print(problem)
    print(counts.line())
    bad = counts.cells_lost + counts.corrupt_files + counts.mismatched_numbers + counts.cells_run_twice
    return 1 if bad or counts.problems else 0


if __name__ == "__main__":
    sys.exit(main())
