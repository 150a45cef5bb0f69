"""A run's downstream results in lm-evaluation-harness's output format (``mkeval export RUN --format lm-eval``).

For every model unit and mode (``fine-tuned``, ``0-shot``, ``5-shot`` ...) a folder with
``results.json`` in lm-eval's results schema (``results`` keyed ``"metric,filter"`` with
``"metric_stderr,filter"``, ``versions``, ``n-shot``, ``configs``, ``n-samples``,
``higher_is_better``, ``config``) and ``samples_<task>.jsonl`` (one line per example), so tools
that read lm-eval output read mkeval's. Metric names become lm-eval's where it has the same
metric (``accuracy`` -> ``acc``, ``matthews_corrcoef`` -> ``mcc``, SQuAD ``em`` -> ``exact_match``);
the filter is ``none``. Standard errors: for a mean over examples (accuracy, exact match, SQuAD
F1) lm-eval's ``mean_stderr`` (sample std / sqrt(n)); for corpus-level metrics (F1, MCC,
correlations) the standard deviation of 100 bootstrap resamples with a fixed seed, as
lm-eval itself uses 100 for those. Degenerate and skipped modes are left out, and listed in
``mkeval`` of the results file.
"""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..results import read_json_file, write_json, write_text

LM_EVAL_NAMES = {"accuracy": "acc", "matthews_corrcoef": "mcc", "em": "exact_match"}
BOOTSTRAP_ITERS = 100


def _slug(mode: str) -> str:
    return mode.replace(" ", "_").replace("-", "_")


def _per_example(metric: str, record: dict[str, Any], metric_names: list[str]) -> float | None:
    """The example's own score when ``metric`` is a mean over examples (accuracy; SQuAD's and
    ReCoRD's EM and F1), else None (a corpus-level metric; MultiRC's EM is per question)."""
    if metric == "accuracy":
        return float(record["prediction"] == record["reference"])
    if metric in ("em", "f1") and {"squad", "record"} & set(metric_names):
        from ..metrics import squad_exact_match, squad_f1

        score = squad_exact_match if metric == "em" else squad_f1
        return score(record["prediction"], record["reference"])
    return None


def _stderr(metric: str, records: list[dict[str, Any]], metric_names: list[str], context: Any) -> float | None:
    """lm-eval's standard error of ``metric`` over ``records``."""
    import numpy as np

    values = [_per_example(metric, r, metric_names) for r in records]
    if all(v is not None for v in values) and len(values) > 1:
        return float(np.std(values, ddof=1) / math.sqrt(len(values)))
    from ..metrics import compute_metrics

    rng = np.random.default_rng(0)
    out = []
    for _ in range(BOOTSTRAP_ITERS):
        sample = [records[i] for i in rng.integers(0, len(records), len(records))]
        try:
            out.append(compute_metrics(metric_names, sample, context)[metric])
        except (ValueError, KeyError):  # a resample with one class: that metric is undefined there
            continue
    return float(np.std(out, ddof=1)) if len(out) > 1 else None


def export_run_lm_eval(run_dir: str | Path, output: str | Path) -> list[Path]:
    """Write every unit's downstream results under ``output/<unit>/<mode>/``; returns the results files."""
    from ..metrics import MetricContext

    run_dir, output = Path(run_dir), Path(output)
    summaries = [d for p in sorted(run_dir.glob("*_downstream.json"))
                 for d, why in [read_json_file(p)] if why is None and isinstance(d, dict) and "unit" in d]
    if not summaries:
        raise UsageError(f"export: no downstream results (*_downstream.json) in {run_dir}; run with --tasks first")
    if output.exists() and any(output.iterdir()):
        raise UsageError(f"--output {output} exists and is not empty; choose a new folder")
    written = []
    for unit in summaries:
        modes: dict[str, dict[str, Any]] = {}
        for task, rel in sorted((unit.get("task_results") or {}).items()):
            result, why = read_json_file(run_dir / rel)
            if why is not None or result.get("status") not in ("ok", "degenerate"):
                continue
            found = {"fine-tuned": result.get("finetune")} if result.get("finetune") else {}
            found.update(result.get("prompt") or {})
            for mode, m in found.items():
                modes.setdefault(mode, {})[task] = (result, m)
        for mode, tasks in modes.items():
            folder = output / unit["unit"] / _slug(mode)
            written.append(_write_mode(run_dir, folder, unit, mode, tasks, MetricContext))
    return written


def _write_mode(run_dir: Path, folder: Path, unit: dict[str, Any], mode: str,
                tasks: dict[str, tuple[dict[str, Any], dict[str, Any]]], context_type: Any) -> Path:
    shots = 0 if mode == "fine-tuned" else int(mode.split("-")[0])
    doc: dict[str, Any] = {"results": {}, "versions": {}, "n-shot": {}, "configs": {}, "n-samples": {},
                           "higher_is_better": {}, "samples_files": {}}
    left_out: dict[str, str] = {}
    for task, (result, m) in tasks.items():
        if m.get("status") != "ok":
            left_out[task] = f"{m.get('status')}: {m.get('reason')}"
            continue
        records = [json.loads(line) for line in
                   (run_dir / "downstream" / unit["unit"] / m["predictions_file"]).read_text().splitlines() if line]
        context = context_type(labels=tuple(result.get("labels") or ()), positive=result.get("positive_label"))
        names = list(result.get("metric_names") or [])
        entry: dict[str, Any] = {"alias": task}
        for metric, value in m["metrics"].items():
            name = LM_EVAL_NAMES.get(metric, metric)
            entry[f"{name},none"] = value
            stderr = _stderr(metric, records, names, context)
            entry[f"{name}_stderr,none"] = stderr if stderr is not None else "N/A"  # lm-eval's own spelling
            doc["higher_is_better"].setdefault(task, {})[name] = True
        doc["results"][task] = entry
        doc["versions"][task] = result.get("spec_hash")
        doc["n-shot"][task] = shots
        doc["configs"][task] = {"task": task, "group": result.get("groups"), "num_fewshot": shots,
                                "metric_list": [{"metric": LM_EVAL_NAMES.get(k, k), "higher_is_better": True}
                                                for k in m["metrics"]],
                                "output_type": "multiple_choice" if mode != "fine-tuned" else "mkeval_finetuned_head",
                                "mkeval_spec_file": result.get("spec_file"), "mkeval_mode": mode}
        original = (result.get("data") or {}).get("rows_before_limit", {}).get("eval", len(records))
        doc["n-samples"][task] = {"original": original, "effective": len(records)}
        lines = []
        for i, r in enumerate(records):
            sample = {"doc_id": i, "doc": {"id": r["id"]}, "target": r["reference"], "prediction": r["prediction"],
                      "resps": [[[ll, False]] for ll in r.get("loglikelihoods", [])],
                      "filtered_resps": [[ll, False] for ll in r.get("loglikelihoods", [])]}
            for metric in m["metrics"]:
                value = _per_example(metric, r, names)
                if value is not None:
                    sample[LM_EVAL_NAMES.get(metric, metric)] = value
            lines.append(json.dumps(sample, ensure_ascii=False))
        name = f"samples_{task}.jsonl"
        write_text(folder / name, "\n".join(lines) + "\n")
        doc["samples_files"][task] = name
    doc["config"] = {"model": "mkeval", "model_args": f"unit={unit['unit']}", "batch_size": None,
                     "limit": unit.get("limit")}
    doc["date"] = datetime.datetime.now(datetime.timezone.utc).timestamp()
    doc["mkeval"] = {"unit": unit["unit"], "model_name": unit.get("model_name"), "seed": unit.get("seed"),
                     "precision": unit.get("precision"), "mode": mode, "left_out": left_out,
                     "protocol_hash": unit.get("protocol_hash")}
    path = folder / "results.json"
    write_json(path, doc)
    return path
