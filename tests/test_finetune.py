"""Task kinds, the fine-tuning loop and log-likelihood scoring, against hand computations and lm-eval's own templates."""

import random
from pathlib import Path

import jinja2
import lm_eval
import pytest
import torch
import yaml
from torch import nn

from mkeval import Protocol
from mkeval.engine.finetune import finetune, join, make_kind, predict
from mkeval.engine.prompting import context_for, encode_pair, fit_prompt, score_prompt
from mkeval.engine.models import build_model
from mkeval.data.taskspec import LocalLayout, Prompt, TaskConfig
from mkeval.data.tokenizers import byte_tokenizer, word_tokenizer

@pytest.fixture(scope="module")
def fp32():
    from mkeval.registry.manager import get_registry

    return get_registry().get("precision", "fp32")


def config(**kw) -> TaskConfig:
    base = dict(name="t", kind="classification", metrics=("accuracy",),
                local=(LocalLayout(format="jsonl", files={"eval": ("x",)}),))
    return TaskConfig(**{**base, **kw})


def rows_of(dicts):
    return [{**d, "_id": str(i), "_where": f"fixture:{i}"} for i, d in enumerate(dicts)]


def test_join_trims_the_longest_segment_first_and_ends_with_the_separator():
    out = join([[1] * 10, [2] * 3], sep=0, max_len=10)
    # 13 tokens + 2 separators = 15 > 10: the 10-token segment loses 5, the short one is intact
    assert out == [1] * 5 + [0] + [2] * 3 + [0]
    assert join([[1, 2], [3]], sep=9, max_len=50) == [1, 2, 9, 3, 9]


def test_span_windows_cover_the_passage_and_their_targets_spell_the_answer():
    tok = word_tokenizer([], "word")  # every word is <unk>: offsets still come from the text
    context = " ".join(f"w{i}" for i in range(100)) + " the Eiffel Tower stands here"
    answer = "Eiffel Tower"
    row = rows_of([{"context": context, "question": "what stands ?", "answers": [answer],
                    "answer_starts": [context.index(answer)]}])[0]
    cfg = config(kind="span", context="context", question="question", answers="answers", metrics=("squad",))
    kind = make_kind(cfg, tok, 32, Protocol(ft_doc_stride=10))
    windows = kind.encode(0, row)
    seen = set()
    hits = 0
    for e in windows:
        assert len(e.seqs[0]) <= 32
        first, n = e.meta["first"], e.meta["length"]
        seen.update(range(first, first + n))
        start, end = e.target
        if start != e.meta["offset"] - 1:  # not the "no answer here" position
            offsets = e.meta["offsets"]
            a, b = offsets[first + start - e.meta["offset"]][0], offsets[first + end - e.meta["offset"]][1]
            assert context[a:b] == answer
            hits += 1
    assert seen == set(range(len(context.split())))  # every token is in some window
    assert hits >= 1


def test_span_prediction_reads_the_best_scoring_span_from_the_text():
    tok = byte_tokenizer()
    context = "Paris is the capital of France."
    cfg = config(kind="span", context="context", question="question", answers="answers", metrics=("squad",))
    kind = make_kind(cfg, tok, 64, Protocol(ft_max_answer_len=30))
    row = rows_of([{"context": context, "question": "capital?", "answers": ["Paris"], "answer_starts": [0]}])[0]
    (e,) = kind.encode(0, row)
    scores = torch.full((len(e.seqs[0]), 2), -5.0)
    o = e.meta["offset"]
    scores[o + 0, 0] = 3.0  # start at "P"
    scores[o + 4, 1] = 3.0  # end at the "s" of Paris
    (record,) = kind.predict([row], [e], [scores])
    assert record["prediction"] == "Paris" and record["reference"] == ["Paris"]


class KnownLM(nn.Module):
    """log p(next = v) = table[v] whatever came before: sums of log-likelihoods are hand-computable."""

    def __init__(self, table):
        super().__init__()
        self.logp = torch.log_softmax(torch.tensor(table, dtype=torch.float32), -1)

    def forward(self, ids):
        return self.logp.expand(*ids.shape, -1).clone()


def test_prompt_scoring_sums_continuation_log_probabilities(fp32):
    # byte tokenizer: " A" is bytes 32, 65. Make "B" the likeliest letter.
    table = [0.0] * 256
    table[ord("B")] = 3.0
    table[ord("C")] = 1.0
    model = KnownLM(table)
    tok = byte_tokenizer()
    cfg = config(kind="multiple_choice", inputs=("{q}",), choices=("x", "y", "z", "w"), label="answer",
                 labels=("A", "B", "C", "D"),
                 prompt=Prompt(text="{q}\nAnswer:", choices=("A", "B", "C", "D")))
    rows = rows_of([{"q": "1+1?", "answer": "B", "_label": 1}, {"q": "2+2?", "answer": "C", "_label": 2}])
    records, notes = score_prompt(model, cfg, tok, rows, [], 64, 8, fp32, torch.device("cpu"))
    logp = model.logp
    for rec in records:
        expected = [float(logp[32] + logp[ord(c)]) for c in "ABCD"]
        assert rec["loglikelihoods"] == pytest.approx(expected, abs=1e-5)
        assert rec["prediction"] == "B"
    assert [r["reference"] for r in records] == ["B", "C"]
    assert "degenerate" not in notes and notes["ties"] == 0


def test_options_the_tokenizer_cannot_tell_apart_are_not_scored(fp32):
    """A word vocabulary without the letters maps " A".." D" to <unk>: every option would score the same."""
    model = KnownLM([0.0] * 8)
    tok = word_tokenizer(["what", "is", "it?", "Answer:"])
    cfg = config(kind="multiple_choice", inputs=("{q}",), choices=("x", "y", "z", "w"), label="answer",
                 labels=("A", "B", "C", "D"), prompt=Prompt(text="{q}\nAnswer:", choices=("A", "B", "C", "D")))
    rows = rows_of([{"q": "what is it?", "answer": "B", "_label": 1}] * 3)
    records, notes = score_prompt(model, cfg, tok, rows, [], 64, 8, fp32, torch.device("cpu"))
    assert records is None
    assert "unknown token in 3 of 3 examples" in notes["degenerate"]
    tok2 = word_tokenizer(["what", "is", "it?", "Answer:", "A", "B", "C", "D"])
    cfg2 = config(kind="multiple_choice", inputs=("{q}",), choices=("x", "y"), label="answer", labels=("A", "B"),
                  prompt=Prompt(text="{q}\nAnswer:", choices=("A", "A")))
    records, notes = score_prompt(model, cfg2, tok2, rows_of([{"q": "what", "answer": "B", "_label": 1}]), [], 64, 8,
                                  fp32, torch.device("cpu"))
    assert records is None and "two options encode to the same tokens" in notes["degenerate"]


def test_ties_are_counted_and_marked_per_example(fp32):
    model = KnownLM([0.0] * 256)  # every byte equally likely: every option ties
    cfg = config(kind="multiple_choice", inputs=("{q}",), choices=("x", "y"), label="answer", labels=("A", "B"),
                 prompt=Prompt(text="{q}\nAnswer:", choices=("A", "B")))
    rows = rows_of([{"q": "q", "answer": "B", "_label": 1}, {"q": "r", "answer": "A", "_label": 0}])
    records, notes = score_prompt(model, cfg, byte_tokenizer(), rows, [], 64, 8, fp32, torch.device("cpu"))
    assert notes["ties"] == 2 and all(r["tie"] for r in records)


def test_shots_that_do_not_fit_are_dropped_whole(fp32):
    model = KnownLM([0.0] * 256)
    cfg = config(kind="multiple_choice", inputs=("{q}",), choices=("x", "y"), label="answer", labels=("A", "B"),
                 prompt=Prompt(text="Q: {q}\nAnswer:", choices=("A", "B")))
    shots = rows_of([{"q": "x" * 20, "answer": "A", "_label": 0}, {"q": "y" * 20, "answer": "B", "_label": 1}])
    short = rows_of([{"q": "z", "answer": "A", "_label": 0}])
    tok = byte_tokenizer()
    # "Q: z\nAnswer: A" is 14 bytes; each shot adds 30 ("Q: " + 20 + "\nAnswer: A" + "\n\n"): 44 fit, 74 do not
    pairs, used, cut = fit_prompt(cfg, tok, short[0], shots, max_len=50)
    assert used == 1 and not cut
    text = bytes(pairs[0][0] + pairs[0][1]).decode()
    assert text == "Q: " + "x" * 20 + "\nAnswer: A\n\nQ: z\nAnswer: A"  # the first shot, whole; no second
    records, notes = score_prompt(model, cfg, tok, short, shots, 50, 8, fp32, torch.device("cpu"))
    assert notes["effective_shots"] == {"mean": 1.0, "min": 1, "max": 1} and notes["prompts_with_fewer_shots"] == 1
    assert notes["truncated_inputs"] == 0 and records[0]["shots"] == 1
    long_q = rows_of([{"q": "w" * 80, "answer": "A", "_label": 0}])
    _, used, cut = fit_prompt(cfg, tok, long_q[0], shots, max_len=50)
    assert used == 0 and cut  # not even the question fits: it keeps its last tokens, and is counted


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
    tok = byte_tokenizer()
    ctx, cont = encode_pair(tok, "Answer: ", "A")
    assert bytes(ctx) == b"Answer:" and bytes(cont) == b" A"


def test_mmlu_prompt_matches_lm_evaluation_harness_template(registry):
    """Our spec renders the same text as lm-eval's own jinja template for the same question."""
    source = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    template = yaml.safe_load((source / "_default_template_yaml").read_text())
    subject = yaml.safe_load((source / "mmlu_anatomy.yaml").read_text())
    cfg = registry.get("task", "mmlu_anatomy").spec
    doc = {"question": "  What is the hyoid?  ", "choices": ["a bone", "a muscle", "a nerve", "an organ"], "answer": 0}
    row = rows_of([{"question": doc["question"], "A": "a bone", "B": "a muscle", "C": "a nerve", "D": "an organ",
                    "answer": "A", "_label": 0}])[0]
    theirs = jinja2.Template(template["doc_to_text"]).render(**doc)
    assert context_for(cfg, row, []) == subject["description"] + theirs
    # few-shot: description + (text + " " + target + "\n\n") per shot + text, lm-eval's first_n format
    shot = dict(row, _label=2)
    expected = subject["description"] + theirs + " C\n\n" + theirs
    assert context_for(cfg, row, [shot]) == expected
    assert cfg.prompt.choices == tuple(template["doc_to_choice"])


def _keyword_rows(n, seed, position=None):
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(30)]
    out = []
    for _ in range(n):
        sent = rng.sample(words, 6)
        label = rng.random() < 0.5
        if label:
            sent[rng.randrange(6) if position is None else position] = "good"
        out.append({"sentence": " ".join(sent), "label": int(label), "_label": int(label)})
    return rows_of(out)


# Where the keyword sits. Last: right before the separator the head reads (every architecture
# must learn it: the loop, heads and padding work). Anywhere: up to 7 tokens back. The tiny
# ResNet-BK does not learn that under this recipe (about 0.52-0.58 accuracy; it learns the
# keyword 1-2 tokens back, not 3+, see docs/bk.md), so it is measured there, not asserted here.
CASES = [("transformer", 5), ("bk", 5), ("mamba", 5), ("transformer", None), ("mamba", None)]


@pytest.mark.parametrize("model_name,position", CASES)
def test_fine_tuning_learns_a_keyword_classification_task(model_name, position, fp32):
    """Label 1 iff the sentence contains "good"."""
    torch.manual_seed(0)
    train, test = _keyword_rows(256, 0, position), _keyword_rows(128, 1, position)
    words = sorted({w for r in train + test for w in r["sentence"].split()})
    tok = word_tokenizer(words)
    cfg = config(inputs=("{sentence}",), label="label", labels=(0, 1))
    protocol = Protocol(ft_lr=3e-3, ft_epochs=6, ft_batch_size=16, ft_max_len=16)
    kind = make_kind(cfg, tok, 16, protocol)
    model = build_model(model_name, tok.vocab_size, 16, size="tiny", seed=0)
    enc = [e for i, r in enumerate(train) for e in kind.encode(i, r)]
    head, outcome = finetune(model, kind, enc, protocol, 0, fp32, torch.device("cpu"))
    assert outcome.steps == 6 * 16 and outcome.losses[-1] < outcome.losses[0]
    test_enc = [e for i, r in enumerate(test) for e in kind.encode(i, r)]
    records = predict(model, kind, head, test, test_enc, 32, fp32, torch.device("cpu"))
    acc = sum(r["prediction"] == r["reference"] for r in records) / len(records)
    assert acc >= 0.9, f"{model_name}: accuracy {acc:.3f}"


def test_multiple_choice_and_regression_heads_learn(fp32):
    """Pick the option that repeats the question's word; predict a number equal to the count of 'x'."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(12)]
    tok = word_tokenizer(words + ["x", "y"])
    mc_rows = []
    for _ in range(256):
        a, b = rng.sample(words, 2)
        label = rng.randrange(2)
        mc_rows.append({"q": a, "c0": a if label == 0 else b, "c1": a if label == 1 else b, "_label": label})
    mc_rows = rows_of(mc_rows)
    cfg = config(kind="multiple_choice", inputs=("{q}",), choices=("{c0}", "{c1}"), label="l", labels=(0, 1))
    protocol = Protocol(ft_lr=3e-3, ft_epochs=5, ft_batch_size=16, ft_max_len=16)
    kind = make_kind(cfg, tok, 16, protocol)
    model = build_model("transformer", tok.vocab_size, 16, size="tiny", seed=0)
    enc = [e for i, r in enumerate(mc_rows[:192]) for e in kind.encode(i, r)]
    head, _ = finetune(model, kind, enc, protocol, 0, fp32, torch.device("cpu"))
    test = mc_rows[192:]
    records = predict(model, kind, head, test, [e for i, r in enumerate(test) for e in kind.encode(i, r)], 16, fp32,
                      torch.device("cpu"))
    assert sum(r["prediction"] == r["reference"] for r in records) / len(records) >= 0.85

    reg_rows = []
    for _ in range(256):
        k = rng.randrange(6)
        toks = ["x"] * k + ["y"] * (6 - k)
        rng.shuffle(toks)
        reg_rows.append({"s": " ".join(toks), "_label": float(k)})
    reg_rows = rows_of(reg_rows)
    cfg = config(kind="regression", inputs=("{s}",), label="v", metrics=("pearson",))
    kind = make_kind(cfg, tok, 16, protocol)
    model = build_model("transformer", tok.vocab_size, 16, size="tiny", seed=0)
    enc = [e for i, r in enumerate(reg_rows[:192]) for e in kind.encode(i, r)]
    head, _ = finetune(model, kind, enc, protocol.replace(ft_epochs=10), 0, fp32, torch.device("cpu"))
    test = reg_rows[192:]
    records = predict(model, kind, head, test, [e for i, r in enumerate(test) for e in kind.encode(i, r)], 16, fp32,
                      torch.device("cpu"))
    preds = torch.tensor([r["prediction"] for r in records])
    refs = torch.tensor([r["reference"] for r in records])
    assert float(torch.corrcoef(torch.stack([preds, refs]))[0, 1]) > 0.9


@pytest.mark.parametrize("task", ["qnli", "cola", "mrpc", "rte", "sst2", "wnli", "qqp"])
def test_glue_prompts_match_lm_evaluation_harness(task, registry):
    source = Path(lm_eval.__file__).parent / "tasks" / "glue" / task
    theirs = yaml.safe_load(next(source.glob("*.yaml")).read_text().replace("!function", ""))
    cfg = registry.get("task", task).spec
    doc = {"question": "Who?", "sentence": "Him.", "sentence1": "A cat sat.", "sentence2": "A cat is here.",
           "question1": "Q1?", "question2": "Q2?"}
    row = rows_of([{**doc, "_label": 0}])[0]
    assert context_for(cfg, row, []) == jinja2.Template(theirs["doc_to_text"]).render(**doc)
    assert list(cfg.prompt.choices) == theirs["doc_to_choice"]
