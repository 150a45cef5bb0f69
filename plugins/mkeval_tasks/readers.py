"""The official file formats of SQuAD v1.1, MultiRC and ReCoRD, read into task rows.

Each reader yields ``(where, row)`` per example, or a row ``{"__error__": ...}`` for an example
that cannot be read (a bad row); the core checks every row against the task spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from mkeval import UsageError
from mkeval.data.taskdata import read_jsonl


def read_squad(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """SQuAD's ``{"data": [articles]}``: one row per question, with its answers and their offsets."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not a SQuAD JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise UsageError(f"{path}: a SQuAD file holds {{'data': [articles]}}")
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path}: article {a}, paragraph {p}, question {q}"
                try:
                    answers = qa["answers"]
                    yield where, {"id": qa["id"], "title": article.get("title", ""), "context": para["context"],
                                  "question": qa["question"], "answers": [x["text"] for x in answers],
                                  "answer_starts": [x["answer_start"] for x in answers]}
                except (KeyError, TypeError) as exc:
                    yield where, {"__error__": f"{where}: missing field {exc}"}


def read_multirc(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """One row per answer option; ``group`` is the question (MultiRC's EM is per question)."""
    for where, obj in read_jsonl(path):
        if "__error__" in obj:
            yield where, obj
            continue
        try:
            passage = obj["passage"]
            for question in passage["questions"]:
                group = f"{obj['idx']}-{question['idx']}"
                for answer in question["answers"]:
                    yield where, {"id": f"{group}-{answer['idx']}", "group": group, "paragraph": passage["text"],
                                  "question": question["question"], "answer": answer["text"],
                                  "label": answer.get("label")}
        except (KeyError, TypeError) as exc:
            yield where, {"__error__": f"{where}: missing field {exc}"}


def read_record(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """One row per query; candidates are the passage's entity strings (ReCoRD's official reading)."""
    for where, obj in read_jsonl(path):
        if "__error__" in obj:
            yield where, obj
            continue
        try:
            text = obj["passage"]["text"]
            entities = list(dict.fromkeys(text[e["start"]:e["end"] + 1] for e in obj["passage"]["entities"]))
            passage = text.replace("@highlight\n", "- ")
            for qa in obj["qas"]:
                yield where, {"id": str(qa["idx"]), "passage": passage, "query": qa["query"], "entities": entities,
                              "answers": list(dict.fromkeys(a["text"] for a in qa.get("answers", [])))}
        except (KeyError, TypeError) as exc:
            yield where, {"__error__": f"{where}: missing field {exc}"}
