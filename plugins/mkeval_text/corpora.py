"""Where each corpus lives: local file layouts and Hugging Face dataset ids."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from mkeval import DataRequest, LMData, UsageError
from mkeval.data import hub
from mkeval.data.text import TextSource, TextSplit, build_lm_data, file_fingerprint

from .readers import read_json_lines, read_lines

SPLITS = ("train", "valid", "test")
HF_SPLIT = {"train": "train", "valid": "validation", "test": "test"}


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    folders: tuple[str, ...]  # folder names accepted under --data-dir
    patterns: dict[str, tuple[str, ...]]  # split -> glob patterns inside the folder, first match wins
    reader: Callable[[Path], Iterator[str]]
    hf: tuple[str, str | None, str]  # dataset id, config, text field
    streaming: bool = False
    hf_splits: tuple[str, ...] = SPLITS
    notes: str = ""
    extra: dict = field(default_factory=dict)


def _wikitext(name: str, hf_config: str, raw: bool, size: str) -> Corpus:
    ext = "raw" if raw else "tokens"
    patterns = {s: (f"wiki.{s}.{ext}",) + (() if raw else (f"{s}.txt",)) for s in SPLITS}
    return Corpus(
        name, f"WikiText-{size} ({'raw' if raw else 'tokenized'}), one document per line",
        (name, f"{name}-v1"),  # the official archive's folder, and the hub config's name
        patterns, read_lines, ("Salesforce/wikitext", hf_config, "text"),
    )


CORPORA = {c.name: c for c in [
    _wikitext("wikitext-2", "wikitext-2-v1", False, "2"),
    _wikitext("wikitext-2-raw", "wikitext-2-raw-v1", True, "2"),
    _wikitext("wikitext-103", "wikitext-103-v1", False, "103"),
    _wikitext("wikitext-103-raw", "wikitext-103-raw-v1", True, "103"),
    Corpus("ptb", "Penn Treebank (Mikolov's simple-examples), one sentence per line",
           ("ptb", "penn-treebank", "simple-examples/data"),
           {s: (f"ptb.{s}.txt", f"{s}.txt") for s in SPLITS}, read_lines,
           ("ptb-text-only/ptb_text_only", "penn_treebank", "sentence")),
    Corpus("c4", "C4 English (streamed up to the token budget), one document per JSON line",
           ("c4", "c4/en", "en", "c4_reserialized"),
           {"train": ("c4-train.*.json.gz", "c4-train.*.json", "*train*.json*"),
            "valid": ("c4-validation.*.json.gz", "c4-validation.*.json", "*valid*.json*"),
            "test": ("*test*.json*",)},
           read_json_lines, ("allenai/c4", "en", "text"), streaming=True, hf_splits=("train", "valid"),
           notes="a JSON-lines file whose name names no split (e.g. c4_sample.jsonl) is read as train"),
    Corpus("pile", "The Pile (streamed up to the token budget), one document per JSON line",
           ("pile", "the-pile"),
           {"train": ("train/*.jsonl.zst", "train/*.jsonl", "train.jsonl.zst", "train.jsonl"),
            "valid": ("val.jsonl.zst", "val.jsonl", "valid.jsonl.zst", "valid.jsonl"),
            "test": ("test.jsonl.zst", "test.jsonl")},
           read_json_lines, ("monology/pile-uncopyrighted", None, "text"), streaming=True),
]}


def load(corpus: Corpus, request: DataRequest) -> LMData:
    source = local_source(corpus, request.data_dir) if request.data_dir is not None else hub_source(corpus)
    data = build_lm_data(source, request)
    data.info["corpus"] = corpus.name
    return data


def local_source(corpus: Corpus, root: Path) -> TextSource:
    folder = next((root / f for f in corpus.folders if (root / f).is_dir()), None)
    if folder is None:
        raise UsageError(
            f"dataset {corpus.name!r}: no folder {' or '.join(corpus.folders)} under --data-dir {root}; "
            f"place the official files ({', '.join(p for s in SPLITS for p in corpus.patterns[s][:1])}) in "
            f"{root / corpus.folders[0]}"
        )
    splits, looked_for = {}, {}
    for split in SPLITS:
        looked_for[split] = [str(folder / p) for p in corpus.patterns[split]]
        files = _first_match(folder, corpus.patterns[split])
        if split == "train" and not files and corpus.name == "c4":
            files = [p for p in sorted(folder.glob("*.json*")) if not any(w in p.name for w in ("valid", "test"))]
        if files:
            splits[split] = TextSplit(read=_reader(corpus.reader, files), fingerprint=file_fingerprint(files),
                                      origin=", ".join(str(f) for f in files))
    return TextSource(corpus.name, splits, looked_for, corpus.streaming, {"source": "local", "folder": str(folder)})


def _first_match(folder: Path, patterns: tuple[str, ...]) -> list[Path]:
    for pattern in patterns:
        files = sorted(Path(p) for p in glob.glob(str(folder / pattern)))
        if files:
            return files
    return []


def _reader(read: Callable[[Path], Iterator[str]], files: list[Path]) -> Callable[[], Iterator[str]]:
    def documents() -> Iterator[str]:
        for f in files:
            yield from read(f)

    return documents


def local_layout(corpus: Corpus) -> str:
    """Where ``--data-dir`` wants the official files, for messages."""
    return (f"pass --data-dir ROOT with the official files in ROOT/{corpus.folders[0]}/: "
            + "; ".join(f"{s}: {' or '.join(corpus.patterns[s])}" for s in SPLITS))


def hub_source(corpus: Corpus) -> TextSource:
    """The corpus from the Hugging Face hub (or its local cache), through ``datasets``."""
    repo, config, text_field = corpus.hf
    offline = hub.offline_mode()
    # without network datasets retries for about 25 s; ask once, in seconds, before it starts
    if offline is None and (reason := hub.unreachable()) is not None:
        raise UsageError(f"dataset {corpus.name!r}: {reason}, so {repo} ({config}) cannot be downloaded. Without "
                         f"network, {local_layout(corpus)}. If it is already in the Hugging Face cache, set "
                         "HF_HUB_OFFLINE=1 to read it from there")
    import datasets

    splits, looked_for = {}, {}
    for split in corpus.hf_splits:
        looked_for[split] = [f"{repo}:{config}:{HF_SPLIT[split]}"]
        try:
            ds = datasets.load_dataset(repo, config, split=HF_SPLIT[split], streaming=corpus.streaming)
        except Exception as exc:  # offline, not cached, or unreachable: say what to place where
            what = (f"{offline} is set and {repo} ({config}) is not in the Hugging Face cache" if offline else
                    f"could not load {repo} ({config}) from the Hugging Face hub or its cache")
            summary = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise UsageError(f"dataset {corpus.name!r}: {what} ({summary}). Without network, "
                             f"{local_layout(corpus)}") from None
        fingerprint = f"{repo}/{config}/{HF_SPLIT[split]}" if corpus.streaming else ds._fingerprint
        strip_newline = corpus.reader is read_lines

        def documents(ds=ds) -> Iterator[str]:
            for row in ds:
                text = row[text_field]
                yield text[:-1] if strip_newline and text.endswith("\n") else text

        splits[split] = TextSplit(read=documents, fingerprint=fingerprint, origin=f"hf:{repo}:{config}")
    return TextSource(corpus.name, splits, looked_for, corpus.streaming, {"source": "huggingface", "id": repo,
                                                                          "config": config})
