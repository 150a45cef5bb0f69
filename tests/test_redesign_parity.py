"""The job-plan redesign changes no number: a fixed small matrix (language-modelling cells, a
post-training precision, two downstream tasks) against numbers stored from the code before it.

Regenerate the stored numbers only on purpose: ``python tests/test_redesign_parity.py --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

EXPECTED = Path(__file__).parent / "data" / "redesign_expected.json"
LM_NUMBERS = ("test_perplexity", "test_loss", "best_perplexity", "final_perplexity", "final_loss", "epoch_losses",
              "epoch_perplexities", "best_step", "steps", "train_tokens", "forward_flops", "backward_flops",
              "total_params", "non_embedding_params", "active_params_per_token", "test_accuracy",
              "perplexity_delta")
TASK_SPEC = """\
name: parity_{kind}
kind: {kind}
metrics: [{metric}]
local:
  - format: jsonl
    files: {{train: train.jsonl, eval: val.jsonl}}
inputs: ["{{q}}"]
{extra}
"""


def _task_files(root: Path) -> Path:
    specs = root / "specs"
    specs.mkdir(parents=True)
    (specs / "cls.yaml").write_text(TASK_SPEC.format(kind="classification", metric="accuracy",
                                                     extra="label: label\nlabels: [0, 1]\nprompt:\n  text: \"{q}\"\n"
                                                           "  choices: [\" no\", \" yes\"]\n"))
    (specs / "reg.yaml").write_text(TASK_SPEC.format(kind="regression", metric="pearson", extra="label: score\n"))
    data = root / "data"
    data.mkdir()
    rows = [{"q": f"is {i} a multiple of three {'yes' if i % 3 == 0 else 'no'}", "label": int(i % 3 == 0),
             "score": float(i % 5)} for i in range(40)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:28]))
    (data / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[28:]))
    return root


def numbers(tmp: Path) -> dict:
    import mkeval

    protocol = mkeval.Protocol(batch_size=4, seq_lens=(16,), train_tokens=4 * 16 * 6, eval_interval=3,
                               warmup_steps=1, eval_tokens=256, test_tokens=256, ft_epochs=1, ft_batch_size=4,
                               ft_max_len=32, fewshot=(0,))
    lm = mkeval.run(models="transformer,bk", datasets="markov", precisions="fp32,int8", protocol=protocol,
                    output_dir=tmp / "lm", device="cpu")
    out = {"lm": {c.name: {k: getattr(r, k) for k in LM_NUMBERS} for c, r in zip(lm.cells, lm.results)}}
    root = _task_files(tmp / "tasks")
    down = mkeval.run(models="transformer", tasks="parity_classification,parity_regression",
                      include_path=str(root / "specs"), data_dir=root / "data", protocol=protocol,
                      output_dir=tmp / "down", device="cpu")
    assert not down.failed_tasks, down.failed_tasks
    tasks = {}
    for path in sorted((tmp / "down" / "downstream").rglob("*.json")):
        result = json.loads(path.read_text())
        modes = {"fine-tuned": result.get("finetune"), **result.get("prompt", {})}
        tasks[result["task"]] = {m: v.get("metrics") for m, v in modes.items() if v}
        for pred in sorted(path.parent.glob(f"{result['task']}.*predictions.jsonl")):
            tasks[result["task"]][pred.name] = [json.loads(line) for line in pred.read_text().splitlines()]
    out["tasks"] = tasks
    return out


def _close(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return b == pytest.approx(a, rel=1e-6, abs=1e-9)  # bit-identical on one machine; allow another CPU's rounding
    return a == b


@pytest.mark.slow
def test_the_small_matrix_gives_the_numbers_of_the_code_before_the_redesign(tmp_path):
    expected = json.loads(EXPECTED.read_text())
    found = json.loads(json.dumps(numbers(tmp_path)))  # through JSON, as stored
    assert found.keys() == expected.keys()
    for part in expected:
        for name, value in expected[part].items():
            assert name in found[part], f"{part}: {name} missing"
            assert _close(value, found[part][name]), f"{part}: {name} differs:\n{value}\n{found[part][name]}"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        EXPECTED.write_text(json.dumps(numbers(Path(tmp)), indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED}")
