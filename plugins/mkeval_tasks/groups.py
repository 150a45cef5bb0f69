"""How GLUE, SuperGLUE, SQuAD and MMLU summarise a unit's task results (``GroupSpec`` aggregators).

Each aggregator gets the unit's ``TaskResult`` of every member task that ran and the spec of
every member, and returns the group's section of ``{unit}_downstream.json`` (the original
pipeline's shape) with ``report_rows`` for reports.
"""

from __future__ import annotations

from statistics import fmean
from typing import Any, Sequence

from mkeval.metrics import task_score

FINETUNED = "fine-tuned"


def headline(result: Any) -> tuple[str, dict[str, float]] | None:
    return result.headline()


# --------------------------------------------------------------------------- GLUE, SuperGLUE
def benchmark_average(task_metrics: dict[str, dict[str, float]], members: Sequence[str],
                      merge: dict[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """The GLUE/SuperGLUE average: mean of task scores, with ``merge`` groups counting as one task.

    ``tasks_evaluated``/``tasks_missing`` name members; ``task_scores`` is keyed by leaderboard task.
    """
    leaderboard_of = {m: task for task, group in (merge or {}).items() for m in group}
    groups: dict[str, list[str]] = {}
    for member in members:
        groups.setdefault(leaderboard_of.get(member, member), []).append(member)
    scores = {}
    for task, group in groups.items():
        present = [task_score(task_metrics[m]) for m in group if m in task_metrics]
        if present:
            scores[task] = fmean(present)
    evaluated = [m for m in members if m in task_metrics]
    missing = [m for m in members if m not in task_metrics]
    return {"average": fmean(scores.values()) if not missing and scores else None,
            "average_over_evaluated": fmean(scores.values()) if scores else None,
            "task_scores": scores, "tasks_evaluated": evaluated, "tasks_missing": missing,
            "complete": not missing}


def leaderboard(results: dict[str, Any], specs: dict[str, Any]) -> dict[str, Any]:
    """Per task its headline metrics, score and mode; the leaderboard average (MNLI m/mm count once)."""
    members = sorted(specs)
    scores: dict[str, dict[str, float]] = {}
    entry: dict[str, Any] = {}
    for name in members:
        head = headline(results[name]) if name in results else None
        if head is not None:
            scores[name] = head[1]
            entry[name] = {**head[1], "score": task_score(head[1]), "mode": head[0]}
    merge: dict[str, list[str]] = {}
    for name, spec in specs.items():
        if spec.leaderboard_task:
            merge.setdefault(spec.leaderboard_task, []).append(name)
    section = {**entry, **benchmark_average(scores, members, merge),
               "modes": sorted({e["mode"] for e in entry.values()})}
    section["report_rows"] = [
        {"row": "(average)", "mode": "", "metric": "score", "value": section["average"]},
        {"row": "(evaluated tasks)", "mode": "", "metric": "mean score", "value": section["average_over_evaluated"]}]
    return section


# --------------------------------------------------------------------------- SQuAD
def squad(results: dict[str, Any], specs: dict[str, Any]) -> dict[str, Any]:
    """SQuAD v1.1: exact match and F1 (fractions) of the headline mode, and the questions scored."""
    result = results.get("squad")
    head = headline(result) if result is not None else None
    if head is None:
        return {"report_rows": []}
    size = result.finetune.eval_examples if head[0] == FINETUNED else result.prompt[head[0]].eval_examples
    return {"em": head[1]["em"], "f1": head[1]["f1"], "dataset_size": size, "mode": head[0], "report_rows": []}


# --------------------------------------------------------------------------- MMLU
def mmlu(results: dict[str, Any], specs: dict[str, Any]) -> dict[str, Any]:
    """Per subject, per category and overall: micro (weighted by questions, as lm-evaluation-harness) and macro."""
    modes: dict[str, dict[str, tuple[float, int]]] = {}
    for name, res in results.items():
        for mode, m in res.ok_modes().items():
            modes.setdefault(mode, {})[name] = (m.metrics["accuracy"], m.eval_examples)

    def section(scores: dict[str, tuple[float, int]]) -> dict[str, Any]:
        n = sum(c for _, c in scores.values())
        cats: dict[str, list[tuple[float, int]]] = {}
        for name, value in scores.items():
            cats.setdefault(specs[name].category or "uncategorised", []).append(value)
        return {
            "accuracy": sum(a * c for a, c in scores.values()) / n,
            "macro_accuracy": sum(a for a, _ in scores.values()) / len(scores),
            "subject_scores": {name.removeprefix("mmlu_"): a for name, (a, _) in sorted(scores.items())},
            "category_scores": {c: sum(a * k for a, k in v) / sum(k for _, k in v) for c, v in sorted(cats.items())},
            "category_macro_scores": {c: sum(a for a, _ in v) / len(v) for c, v in sorted(cats.items())},
            "num_subjects_evaluated": len(scores), "num_questions": n,
            "complete": len(scores) == len(results),  # every MMLU task of the run has a score in this mode
        }

    out: dict[str, Any] = {"modes": {m: section(s) for m, s in modes.items()}}
    ranked = sorted((m for m in modes if m != FINETUNED), key=lambda m: int(m.split("-")[0]))
    main = FINETUNED if FINETUNED in modes else (ranked[-1] if ranked else None)
    if main is not None:
        out = {**out["modes"][main], "mode": main, **out}
    else:
        out.update(accuracy=None, num_subjects_evaluated=0)
    out["subjects_missing"] = sorted(n.removeprefix("mmlu_") for n in results
                                     if not any(n in s for s in modes.values()))
    rows = []
    for mode in sorted(modes, key=lambda m: (m != FINETUNED, int(m.split("-")[0]) if m[0].isdigit() else 0)):
        sec = out["modes"][mode]
        rows += [{"row": "all subjects", "mode": mode, "metric": "accuracy", "value": sec["accuracy"],
                  "chart": "categories"},
                 {"row": "all subjects", "mode": mode, "metric": "macro accuracy", "value": sec["macro_accuracy"]}]
        rows += [{"row": category, "mode": mode, "metric": "accuracy", "value": value, "chart": "categories"}
                 for category, value in sec["category_scores"].items()]
    out["report_rows"] = rows
    return out
