"""``--shard I/N``: a deterministic share of the plan for one of N processes with no coordinator.

The plan's jobs are split into *scheduling groups*: a job and everything that needs it, directly
or not (a training cell, its post-training precisions and the downstream tasks fine-tuned from
it), or a job that needs nothing and nothing needs (a from-scratch task). Groups go to shards
round-robin in plan order, so every process given the same options computes the same split,
each group runs whole in one shard, and no job waits for another shard. Each shard writes only
its jobs' files and ``run_summary.shard-I-of-N.json``; the summaries that span several shards
(a unit's downstream summary, a model's multi-dataset file) are written by whichever shard owns
all of their jobs, or by a final ``mkeval run ... --resume`` without ``--shard`` (docs/distributed.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import UsageError
from ..results import SUMMARY_FILE
from .plan import Job


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def summary_file(self) -> str:
        return SUMMARY_FILE if self.count == 1 else f"run_summary.shard-{self.index}-of-{self.count}.json"


def parse_shard(text: str | None) -> Shard | None:
    """``"I/N"`` (0 <= I < N) as a Shard; None when not given; UsageError naming ``--shard`` otherwise."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if match is None:
        raise UsageError(f"--shard: expected I/N with 0 <= I < N (e.g. 0/4 or $SLURM_ARRAY_TASK_ID/"
                         f"$SLURM_ARRAY_TASK_COUNT), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: the shard index must be in 0..{max(count - 1, 0)} (shards are numbered "
                         f"from 0; a SLURM array is --array=0-{max(count - 1, 0)})")
    return Shard(index, count)


def scheduling_groups(jobs: list[Job]) -> list[list[Job]]:
    """The plan's jobs grouped by dependency (connected through ``needs``), each group in plan order,
    groups ordered by their first job."""
    position = {j.name: i for i, j in enumerate(jobs)}
    parent = {j.name: j.name for j in jobs}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for job in jobs:
        for need in job.needs:
            if need in position:
                a, b = sorted((root(job.name), root(need)), key=position.__getitem__)
                parent[b] = a
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(root(job.name), []).append(job)
    return list(groups.values())


def shard_jobs(jobs: list[Job], shard: Shard) -> list[Job]:
    """This shard's jobs, in plan order: the scheduling groups ``shard.index``, ``shard.index + N``, ..."""
    mine = {j.name for g in scheduling_groups(jobs)[shard.index::shard.count] for j in g}
    return [j for j in jobs if j.name in mine]
