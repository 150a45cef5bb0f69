"""lm-evaluation-harness on mkeval checkpoints: the TemplateLM, lm-eval's own evaluator and CLI, and
parity with mkeval's prompted scorer (MMLU) and perplexity (WikiText) on the same checkpoint.

lm-eval never reaches the hub here: tasks are local YAML files over local csv/json files.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from checkpoint_helpers import TEXT, fitted_tokenizer, make_checkpoint
from conftest import shared_data_or_skip

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import mkeval  # noqa: E402
from mkeval.interop.lm_eval import MkevalLM  # noqa: E402


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory):
    """A tiny transformer trained a few steps on text with the answer letters, at seq_len 64."""
    tok = fitted_tokenizer("byte")
    directory, model = make_checkpoint(tmp_path_factory.mktemp("ck") / "byte", "transformer", tok, seq_len=64, steps=10)
    return directory, model, tok


def _requests(kind, arguments):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(arguments)]


def _direct_loglikelihood(model, ids, n):
    """Sum of the last ``n`` tokens' log-probabilities, from one forward pass over ``ids``."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).double(), -1)[0]
    return float(logp[torch.arange(len(ids) - 1 - n, len(ids) - 1), torch.tensor(ids[-n:])].sum())


def test_registered_next_to_lm_eval_models():
    script = textwrap.dedent("""
        import mkeval.interop.lm_eval
        from lm_eval.api.registry import get_model, model_registry
        assert get_model("mkeval") is mkeval.interop.lm_eval.MkevalLM
        assert {"hf", "vllm", "dummy"} <= set(model_registry.keys())
        get_model("dummy")
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


def test_loglikelihood_is_the_model_log_probability(byte_checkpoint):
    directory, model, tok = byte_checkpoint
    lm = mkeval.lm_eval_model(directory, batch_size=3)
    assert isinstance(lm, MkevalLM) and lm.max_length == 64 and lm.eot_token_id == tok.eos_id
    long_context = " ".join(TEXT)  # longer than 64 bytes: lm-eval keeps the last max_length + 1 tokens
    pairs = [("Answer:", " A"), ("Answer:", " B"), ("", "The quick brown fox"), (long_context, " D"),
             ("The quick brown", " fox jumps")]
    results = lm.loglikelihood(_requests("loglikelihood", pairs))
    for (context, continuation), (ll, greedy) in zip(pairs, results):
        ctx = tok.encode(context) or [tok.eos_id]
        whole = (ctx + tok.encode(continuation))[-65:]
        assert ll == pytest.approx(_direct_loglikelihood(model, whole, len(tok.encode(continuation))), abs=1e-5)
        assert isinstance(greedy, bool)
    assert mkeval.lm_eval_model(directory, max_length=16).max_length == 16


def test_rolling_loglikelihood_equals_mkeval_document_nlls(byte_checkpoint):
    from mkeval.engine.perplexity import document_nlls
    from mkeval.registry.manager import get_registry

    directory, model, tok = byte_checkpoint
    lm = mkeval.lm_eval_model(directory, batch_size=4, max_length=16)
    docs = [TEXT[0], "", TEXT[6], "x", " ".join(TEXT[:4]), "exactly sixteen!"]
    theirs = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(d,) for d in docs]))
    ours = document_nlls(model, [tok.encode(d) for d in docs], 16, tok.eos_id, batch_size=5,
                         precision=get_registry().get("precision", "fp32"), device=torch.device("cpu"))
    assert [-t for t in theirs] == pytest.approx(ours, abs=1e-4, rel=1e-6)


class NextId(torch.nn.Module):
    """A model whose greedy next token is always the previous token's id + 1, so greedy text is known
    by hand (a trained tiny model repeats one byte, which tells a right implementation from a wrong one
    poorly)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, ids):
        return torch.nn.functional.one_hot((ids + 1) % self.vocab, self.vocab).float() * 5.0


def test_generate_until_is_greedy_and_stops(byte_checkpoint):
    directory, _, tok = byte_checkpoint
    lm = mkeval.lm_eval_model(directory)
    lm.model = NextId(tok.vocab_size)
    context = "Answer: a"
    last = tok.encode(context)[-1]
    expected = [(last + 1 + i) % tok.vocab_size for i in range(12)]
    assert tok.eos_id not in expected
    text = tok.decode(expected)  # "bcdefghijklm": each byte the next of the one before
    assert len(set(text)) == 12
    out = lm.generate_until(_requests("generate_until", [(context, {"until": [], "max_gen_toks": 12})]))
    assert out == [text]
    stop = text[5:7]  # a stop sequence cuts the text where it first appears
    out = lm.generate_until(_requests("generate_until", [(context, {"until": [stop], "max_gen_toks": 12})]))
    assert out == [text[:5]]


def test_loglikelihood_says_whether_the_continuation_is_greedy(byte_checkpoint):
    directory, _, tok = byte_checkpoint
    lm = mkeval.lm_eval_model(directory)
    lm.model = NextId(tok.vocab_size)
    following = tok.decode([(tok.encode("ab")[-1] + 1 + i) % tok.vocab_size for i in range(3)])  # "cde"
    pairs = [("ab", following), ("ab", following[:2] + "x"), ("ab", "z"), ("ab", following[:1])]
    greedy = [g for _, g in lm.loglikelihood(_requests("loglikelihood", pairs))]
    assert greedy == [True, False, False, True]


def test_cli_runs_lm_eval_on_a_local_task(byte_checkpoint, tmp_path):
    from mkeval.cli import main

    directory, _, _ = byte_checkpoint
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps({"page": line}) + "\n" for line in TEXT[:6]))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "lines.yaml").write_text(textwrap.dedent(f"""
        task: mkeval_test_lines
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: page
        metric_list:
          - metric: word_perplexity
          - metric: bits_per_byte
    """))
    out = tmp_path / "out"
    code = main(["lm-eval", str(directory), "--", "--tasks", "mkeval_test_lines", "--include_path", str(tasks),
                 "--output_path", str(out), "--limit", "4", "--batch_size", "4"])
    assert code == 0
    files = list(out.rglob("results_*.json"))
    assert len(files) == 1
    results = json.loads(files[0].read_text())
    assert results["config"]["model"] == "mkeval"
    assert results["results"]["mkeval_test_lines"]["word_perplexity,none"] > 1
    assert main(["lm-eval", str(tmp_path / "missing"), "--", "--tasks", "x"]) == 2


# --------------------------------------------------------------------------- parity on real benchmark files
MMLU_TASK = """
task: {name}
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {root}/test/anatomy_test.csv
    dev: {root}/dev/anatomy_dev.csv
  column_names: [question, A, B, C, D, answer]
  keep_default_na: false
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
num_fewshot: {shots}
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about anatomy.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
"""


@pytest.mark.slow
def test_mmlu_through_lm_eval_equals_mkeval_prompt_scoring(byte_checkpoint, tmp_path):
    """lm-eval's lm-eval-format MMLU (local csv, mkeval_parity_* task) vs mkeval's score_prompt with
    tasks/mmlu/mmlu_anatomy.yaml: the same per-option log-likelihoods and accuracy, 0 and 2 shots."""
    from pathlib import Path

    from mkeval.engine.prompting import score_prompt
    from mkeval.registry.manager import get_registry
    from mkeval.data.taskdata import load_task_data
    from mkeval.data.taskspec import load_task_file

    data_root = shared_data_or_skip()
    directory, model, tok = byte_checkpoint
    limit = 8
    for shots in (0, 2):
        (tmp_path / f"mmlu{shots}.yaml").write_text(
            MMLU_TASK.format(name=f"mkeval_parity_mmlu_{shots}", root=data_root / "mmlu" / "data", shots=shots))
    results = lm_eval.simple_evaluate(model=mkeval.lm_eval_model(directory, batch_size=8),
                                      tasks=["mkeval_parity_mmlu_0", "mkeval_parity_mmlu_2"], limit=limit,
                                      task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True)
    config = load_task_file(Path(__file__).resolve().parents[1] / "tasks" / "mmlu" / "mmlu_anatomy.yaml")
    data = load_task_data(config, data_root, limit=limit)
    fp32 = get_registry().get("precision", "fp32")
    for shots in (0, 2):
        records, notes = score_prompt(model, config, tok, data.rows["eval"], data.rows["fewshot"][:shots], 64, 8,
                                      fp32, torch.device("cpu"))
        samples = sorted(results["samples"][f"mkeval_parity_mmlu_{shots}"], key=lambda s: s["doc_id"])
        assert len(samples) == len(records) == limit and notes["truncated_inputs"] > 0  # contexts exceed 64 bytes
        for sample, record in zip(samples, records):
            assert [ll for ll, _ in sample["filtered_resps"]] == pytest.approx(record["loglikelihoods"], abs=1e-5)
        ours = sum(r["prediction"] == r["reference"] for r in records) / limit
        assert results["results"][f"mkeval_parity_mmlu_{shots}"]["acc,none"] == pytest.approx(ours)


WIKITEXT_TASK = """
task: mkeval_parity_wikitext_lines
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: page
process_results: !function wikitext_counts.process_results
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


@pytest.mark.slow
def test_wikitext_word_perplexity_through_lm_eval_equals_mkeval(tmp_path, monkeypatch):
    """Lines of WikiText-2 test as documents: lm-eval's loglikelihood_rolling and its wikitext task's own
    counting and aggregation vs mkeval's text statistics, per-document windows and lm_eval_text_metrics."""
    from mkeval.engine.perplexity import document_nlls, documents_from_stream, split_text_metrics
    from mkeval.registry.manager import get_registry
    from mkeval.data.text import TextSplit, tokenize_split

    data_root = shared_data_or_skip()
    valid = (data_root / "wikitext-2" / "valid.txt").read_text(encoding="utf-8").split("\n")
    test = (data_root / "wikitext-2" / "test.txt").read_text(encoding="utf-8").split("\n")
    lines = test[:12] + [""]  # a heading, blank (" ") lines, paragraphs of ~100-200 words, an empty line
    assert " " in lines and max(len(line.split()) for line in lines) > 100
    tok = fitted_tokenizer("word", valid[:2000])
    directory, model = make_checkpoint(tmp_path / "ck", "bk", tok, valid[:300], seq_len=16, steps=6)

    (tmp_path / "lines.jsonl").write_text("".join(json.dumps({"page": line}) + "\n" for line in lines))
    (tmp_path / "wikitext_counts.py").write_text(
        "from lm_eval.tasks.wikitext.preprocess_wikitext import process_results  # noqa: F401\n")
    (tmp_path / "wikitext.yaml").write_text(WIKITEXT_TASK.format(data=tmp_path / "lines.jsonl"))
    results = lm_eval.simple_evaluate(model=mkeval.lm_eval_model(directory, batch_size=8),
                                      tasks=["mkeval_parity_wikitext_lines"], log_samples=True,
                                      task_manager=TaskManager(include_path=str(tmp_path)))
    theirs = results["results"]["mkeval_parity_wikitext_lines"]
    their_nlls = [-s["filtered_resps"][0] for s in sorted(results["samples"]["mkeval_parity_wikitext_lines"],
                                                             key=lambda s: s["doc_id"])]

    monkeypatch.setenv("MKEVAL_CACHE", str(tmp_path / "cache"))
    split = tokenize_split("wikitext-2", "test", TextSplit(read=lambda: iter(lines), fingerprint="t12", origin="t"),
                           tok, None, tmp_path / "cache")
    documents = documents_from_stream(split.tokens, tok.eos_id)
    assert len(documents) == len(lines)
    fp32 = get_registry().get("precision", "fp32")
    nlls = document_nlls(model, documents, 16, tok.eos_id, batch_size=8, precision=fp32, device=torch.device("cpu"))
    assert nlls == pytest.approx(their_nlls, rel=1e-6, abs=1e-4)
    # what the engine calls on a test split
    word_ppl, bpb = split_text_metrics(model, split, tok.eos_id, 16, 8, fp32, torch.device("cpu"))
    assert word_ppl == pytest.approx(theirs["word_perplexity,none"], rel=1e-6)
    assert bpb == pytest.approx(theirs["bits_per_byte,none"], rel=1e-6)
    assert 2 ** bpb == pytest.approx(theirs["byte_perplexity,none"], rel=1e-6)
