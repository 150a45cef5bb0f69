"""Progress of ``mkeval run`` on stderr: live bars in a terminal, plain complete lines otherwise.

Both take the runner's progress events (``plan``, ``cell_start``/``cell_end``, ``step``, ``eval``,
``task_start``/``task_end``, ``jobs``). Piped to a file, live bars are cut to the width of an
unknown terminal ("0:2…"), so :class:`PlainProgress` prints one timestamped line per cell start and
end, validation point and task, and a step line with the ETA at most every ``interval`` seconds.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, TextIO


def run_progress(console: Any) -> "RunProgress | PlainProgress":
    """Bars when stderr is a terminal, plain lines otherwise (``FORCE_COLOR``, which makes rich treat
    a pipe as a terminal, does not count: bars in a log file are cut off)."""
    isatty = getattr(console.file, "isatty", None)
    return RunProgress(console) if console.is_terminal and isatty is not None and isatty() else PlainProgress()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


class PlainProgress:
    """One complete line per event, to ``stream``; step lines at most every ``interval`` seconds."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.interval, self.clock = stream, interval, clock
        self.cells = self.tasks = 0
        self.done_cells = self.done_tasks = 0
        self.cell_started = self.last_step_line = 0.0
        self.first_step: int | None = None  # the cell's first step in this process (a resumed cell starts later)
        self.cell_seconds: list[float] = []  # wall time of the training cells that trained here
        self.training: set[str] = set()  # training cells not ended yet (evaluation-only cells take seconds)

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def _print(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream or sys.stderr, flush=True)

    def _matrix_eta(self) -> str:
        """The training cells left at the mean time of those that trained here (evaluations not counted)."""
        if not self.cell_seconds or not self.training:
            return ""
        return f"; matrix ETA {_duration(len(self.training) * sum(self.cell_seconds) / len(self.cell_seconds))}"

    def __call__(self, event: str, **info: Any) -> None:
        if event == "plan":
            self.cells, self.tasks = len(info.get("cells", [])), len(info.get("tasks", []))
            self.training = set(info.get("training", []))
            parts = [f"{self.cells} cell(s)"] + ([f"{self.tasks} downstream task job(s)"] if self.tasks else [])
            self._print(f"plan: {', '.join(parts)}")
        elif event == "cell_start":
            self.cell_started = self.last_step_line = self.clock()
            self.first_step = None
            steps = f", {info['steps']} steps" if info.get("steps") else ""
            self._print(f"cell {self.done_cells + 1}/{self.cells} started: {info['name']}{steps}")
        elif event == "step":
            now = self.clock()
            if self.first_step is None:
                self.first_step = info["step"]
            if now - self.last_step_line >= self.interval or info["step"] == info["steps"]:
                self.last_step_line = now
                rate = (now - self.cell_started) / (info["step"] - self.first_step + 1)
                self._print(f"  step {info['step']}/{info['steps']}: loss {info['loss']:.3f}, "
                            f"{info['tokens_per_second']:,.0f} tok/s, cell ETA "
                            f"{_duration(rate * (info['steps'] - info['step']))}")
        elif event == "eval":
            self._print(f"  step {info['step']}/{info['steps']}: validation perplexity {info['perplexity']:.3f}")
        elif event == "cell_end":
            self.done_cells += 1
            took = ""
            if info["status"] != "resumed" and self.cell_started:
                seconds = self.clock() - self.cell_started
                if info["name"] in self.training:
                    self.cell_seconds.append(seconds)
                took = f" in {_duration(seconds)}"
            self.training.discard(info["name"])
            self._print(f"cell {self.done_cells}/{self.cells} {info['status']}: {info['name']}{took}"
                        f"{self._matrix_eta()}")
            self.cell_started = 0.0
        elif event == "task_start":
            self._print(f"task {self.done_tasks + 1}/{self.tasks} started: {info['task']} of {info['unit']}")
        elif event == "task_end":
            self.done_tasks += 1
            self._print(f"task {self.done_tasks}/{self.tasks} {info['status']}: {info['task']} of {info['unit']}")
        elif event == "jobs":  # --executor ray
            for name, status in info["ended"]:
                self._print(f"{name}: {status}")
            if info["ended"]:
                self._print(f"jobs: {info['finished']} finished, {info['failed']} failed, "
                            f"{len(info['running'])} running, of {info['total']}")


class RunProgress:
    """Progress bars for the matrix, the current cell (step, loss, tokens/s, ETA) and downstream tasks."""

    def __init__(self, console: Any) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                             console=console, transient=False)
        self.matrix = None
        self.cell = None
        self.tasks = None

    def __enter__(self) -> "RunProgress":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def __call__(self, event: str, **info: Any) -> None:
        if event == "plan":
            if info["cells"]:
                self.matrix = self.bars.add_task("matrix", total=len(info["cells"]), info="")
            if info.get("tasks"):
                self.tasks = self.bars.add_task("downstream", total=len(info["tasks"]), info="")
        elif event == "cell_start":
            if self.cell is not None:
                self.bars.remove_task(self.cell)
            self.cell = self.bars.add_task(info["name"], total=info["steps"], info="")
        elif event == "step" and self.cell is not None:
            self.bars.update(self.cell, completed=info["step"],
                             info=f"loss {info['loss']:.3f}  {info['tokens_per_second']:,.0f} tok/s")
        elif event == "eval" and self.cell is not None:
            self.bars.console.print(f"  step {info['step']}/{info['steps']}: validation perplexity {info['perplexity']:.3f}")
        elif event == "task_start" and self.tasks is not None:
            self.bars.update(self.tasks, info=f"{info['unit']}: {info['task']}")
        elif event == "task_end" and self.tasks is not None:
            self.bars.advance(self.tasks)
            if not info["status"].startswith("ok"):
                self.bars.console.print(f"{info['unit']}: task {info['task']}: {info['status']}")
        elif event == "jobs":  # --executor ray: one bar for the whole cluster's jobs, tasks included
            if self.tasks is not None:
                self.bars.remove_task(self.tasks)
                self.tasks = None
            if self.matrix is None:
                self.matrix = self.bars.add_task("jobs", total=info["total"], info="")
            self.bars.update(self.matrix, description="jobs", total=info["total"],
                             completed=info["finished"] + info["failed"],
                             info=f"{len(info['running'])} running, {info['failed']} failed")
            for name, status in info["ended"]:
                self.bars.console.print(f"{name}: {status}")
        elif event == "cell_end" and self.matrix is not None:
            self.bars.advance(self.matrix)
            self.bars.console.print(f"{info['name']}: {info['status']}")
