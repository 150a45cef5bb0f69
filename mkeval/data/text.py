"""Text corpora to token streams: the run's tokenizer, split mapping, token budgets and a verified cache.

Text dataset plugins describe where their documents come from (a ``TextSource``);
``build_lm_data`` does the rest, identically for every corpus:

- splits are mapped by role (``train``/``valid``/``test``; ``validation`` and ``dev`` mean
  ``valid``), so a run can, say, train on the validation split when only valid/test are on disk;
- a run needs all three roles; ``mkeval data`` (a ``StatisticsRequest``) only the splits on
  disk, and fits a vocabulary on train, else valid, never test;
- a split becomes one stream: an end-of-document token, then each document followed by one,
  so every real token (and every separator) is a target exactly once;
- streaming sources (C4, the Pile) are read only up to a token budget (whole documents, stopping
  after the one that reaches it), in bounded memory;
- tokenized splits are cached as memory-mapped int32 files keyed by the source's version,
  the tokenizer and the budget, with a checksum: a stale or corrupt entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import UsageError
from ..engine.perplexity import lm_eval_words
from ..results import write_json
from ..registry.contracts import DataRequest, LMData, TokenSplit
from .tokenizers import Tokenizer, fit_state, make_tokenizer, needs_training

log = logging.getLogger(__name__)

ROLES = ("train", "valid", "test")
SPLIT_ALIASES = {"validation": "valid", "dev": "valid", "val": "valid"}
STREAM_EVAL_TOKENS = 4_194_304  # valid/test tokens read from a streaming source when no budget is set
CACHE_FORMAT = 1
_CHUNK = 1 << 20  # tokens buffered before writing
# text statistics of a split: ``words`` counts str.split() words, ``lm_eval_words`` lm-eval's
# re.split(r"\s+") pieces (``mkeval.engine.perplexity``); ``bytes`` are UTF-8 bytes of the documents
# (the newline that ends a line is not part of its document)
STATS = ("documents", "lines", "words", "lm_eval_words", "bytes", "unk_tokens")  # unk_tokens: ids of <unk>


@dataclass
class TextSplit:
    """Where one split's documents come from. ``read()`` yields them in order, each time afresh."""

    read: Callable[[], Iterator[str]]
    fingerprint: str  # changes when the content changes
    origin: str  # files or dataset id, for results and messages


@dataclass
class TextSource:
    dataset: str
    splits: dict[str, TextSplit]
    looked_for: dict[str, list[str]] = field(default_factory=dict)  # split -> what was looked for
    streaming: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def canonical_split(name: str) -> str:
    return SPLIT_ALIASES.get(name, name)


TEST_OPTION = "--allow-test-contamination"


def parse_split_map(value: str | dict[str, str] | None, allow_test: bool = False) -> dict[str, str]:
    """``"train=valid,test=test"`` -> ``{"train": "valid", "test": "test"}`` (role -> split read).

    Roles and splits are ``train``, ``valid`` (``validation``, ``dev``) and ``test``. Reading the
    test split for training or for checkpoint selection would make the test number meaningless:
    it is refused unless ``allow_test`` (``--allow-test-contamination``), and then marked.
    """
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = []
        for item in str(value).split(","):
            role, sep, split = item.partition("=")
            if not sep or not role.strip() or not split.strip():
                raise UsageError(f"--split-map: {item!r} is not ROLE=SPLIT (e.g. train=valid)")
            pairs.append((role.strip(), split.strip()))
    out: dict[str, str] = {}
    for role, split in pairs:
        role, split = canonical_split(role), canonical_split(split)
        if role not in ROLES:
            raise UsageError(f"--split-map: unknown role {role!r}; roles are train, valid (validation), test")
        if split not in ROLES:
            raise UsageError(f"--split-map: unknown split {split!r} (in {role}={split}); splits are train, "
                             "valid (validation, dev), test")
        if role in out:
            raise UsageError(f"--split-map: role {role!r} is mapped twice")
        if split == "test" and role != "test" and not allow_test:
            use = "train on" if role == "train" else "select the checkpoint on"
            raise UsageError(f"--split-map {role}=test would {use} the test text, so the test perplexity would no "
                             f"longer measure held-out data; map {role} onto another split, or pass {TEST_OPTION} "
                             "to do it anyway (every result and report row is then marked)")
        out[role] = split
    return out


def reads_test(split_map: dict[str, str]) -> list[str]:
    """The roles other than test that read the test split (results are marked when there are any)."""
    return [role for role, split in split_map.items() if split == "test" and role != "test"]


def apply_split_map(data: LMData, split_map: dict[str, str]) -> LMData:
    """Roles read from the mapped splits, for datasets that do not apply a split map themselves."""
    if not split_map:
        return data
    missing = sorted({s for s in split_map.values() if s not in data.splits})
    if missing:
        raise UsageError(f"--split-map: the dataset has no {', '.join(missing)} split (it has "
                         f"{', '.join(data.splits)})")
    data.splits = {role: data.splits[split_map.get(role, role)] for role in data.splits}
    roles = {role: split_map.get(role, role) for role in data.splits}
    data.info["split_map"] = roles
    data.info["same_text"] = sorted({r for r in roles if list(roles.values()).count(roles[r]) > 1})
    return data


def cache_root() -> Path:
    return Path(os.environ.get("MKEVAL_CACHE", Path.home() / ".cache" / "mkeval"))


def file_fingerprint(paths: list[Path]) -> str:
    """Size, modification time and the first and last MiB of each file: cheap, and changes with any real edit."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        with p.open("rb") as f:
            h.update(f.read(1 << 20))
            if st.st_size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()[:16]


def resolve_roles(source: TextSource, split_map: dict[str, str]) -> dict[str, str]:
    """Role -> source split, after the user's mapping; a missing split lists what was looked for."""
    out = {}
    for role in ROLES:
        split = split_map.get(role, role)
        if split not in source.splits:
            raise UsageError(_missing_split(source, role, split, split_map))
        out[role] = split
    return out


def _missing_split(source: TextSource, role: str, split: str, split_map: dict[str, str]) -> str:
    looked = source.looked_for.get(split) or sorted(source.splits)
    mapped = "" if role not in split_map else f" (mapped from {role!r} by --split-map)"
    # the only mapping suggested is onto valid: never read test for another role
    example = f", e.g. --split-map {role}=valid" if role != "valid" and "valid" in source.splits else ""
    return (f"dataset {source.dataset!r}: no {split!r} split{mapped}; looked for: {', '.join(looked)}. "
            f"Available: {', '.join(sorted(source.splits)) or 'none'}. Map a role onto an available split "
            f"with --split-map{example}")


@dataclass(frozen=True)
class StatisticsRequest(DataRequest):
    """What ``mkeval data`` asks a text dataset for: only the roles in ``splits``, each only if on disk.

    Absent roles are listed in ``info["absent_splits"]`` (an error only when ``required``). A word
    or BPE vocabulary is fitted on the split the train role reads, else on valid, never on test;
    with neither, no vocabulary is fitted (``info["no_vocabulary"]`` says why).
    """

    splits: tuple[str, ...] = ROLES
    required: bool = False  # the roles were named (``--split``): a missing one is an error


def present_roles(source: TextSource, split_map: dict[str, str], request: StatisticsRequest
                  ) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Role -> source split for the requested roles on disk, and role -> what was looked for, for the others."""
    roles, absent = {}, {}
    for role in request.splits:
        split = split_map.get(role, role)
        if split in source.splits:
            roles[role] = split
        elif request.required:
            raise UsageError(f"dataset {source.dataset!r}: no {split!r} split"
                             f"{'' if role not in split_map else f' (mapped from {role!r} by --split-map)'}; "
                             f"looked for: {', '.join(source.looked_for.get(split) or ['-'])}. On disk: "
                             f"{', '.join(sorted(source.splits)) or 'none'} (without --split, every split on disk "
                             "is reported)")
        else:
            absent[role] = source.looked_for.get(split, [])
    return roles, absent


def vocabulary_split(source: TextSource, split_map: dict[str, str]) -> str | None:
    """The split a fitted vocabulary comes from for statistics: the train role's, else valid; never test."""
    for split in (split_map.get("train", "train"), "valid"):
        if split != "test" and split in source.splits:
            return split
    return None


def build_lm_data(source: TextSource, request: DataRequest) -> LMData:
    """Tokenize ``source`` for ``request`` (tokenizer, split map, budgets), through the cache.

    A run needs all three roles; a ``StatisticsRequest`` only the splits on disk.
    """
    split_map = parse_split_map(dict(request.split_map), allow_test=True)
    info: dict[str, Any] = {}
    if isinstance(request, StatisticsRequest):
        roles, info["absent_splits"] = present_roles(source, split_map, request)
        fit_on = vocabulary_split(source, split_map)
    else:
        roles = resolve_roles(source, split_map)
        fit_on = roles["train"]
    root = cache_root() / "tokens" / source.dataset
    budgets = {"train": request.train_tokens + request.seq_len + 1 if source.streaming else None}
    eval_budget = request.eval_tokens or STREAM_EVAL_TOKENS
    for role in ("valid", "test"):
        budgets[role] = eval_budget + request.seq_len + 1 if source.streaming else None
    fitted = needs_training(request.tokenizer)
    if fitted and fit_on is None:
        # no train or valid split: fitting on test would leak it, so nothing is fitted; an empty word
        # vocabulary still counts documents, words and (for word tokenizers) tokens exactly
        tokenizer = make_tokenizer("word", [])
        info["no_vocabulary"] = (f"no train or valid split to fit it on: the {request.tokenizer} vocabulary is "
                                 "never fitted on test, so none was fitted")
    else:
        split = source.splits[fit_on] if fitted else None
        tokenizer = load_tokenizer(request.tokenizer, split, budgets["train"], root)
    splits: dict[str, TokenSplit] = {}
    for role, name in roles.items():
        splits[role] = tokenize_split(source.dataset, name, source.splits[name], tokenizer, budgets[role], root)
    same = sorted({r for r in roles if list(roles.values()).count(roles[r]) > 1})
    return LMData(
        vocab_size=tokenizer.vocab_size,
        splits=splits,
        info={
            **source.info,
            "tokenizer": tokenizer.name if "no_vocabulary" not in info else request.tokenizer,
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "split_map": roles,
            "streaming": source.streaming,
            "token_budgets": budgets,
            "vocabulary_fitted_on": fit_on if fitted and "no_vocabulary" not in info else None,
            "same_text": same,
            **({"warning": f"splits {', '.join(same)} read the same text"} if same else {}),
            **info,
        },
        tokenizer=tokenizer,
    )


def load_tokenizer(spec: str, train: TextSplit | None, budget: int | None, root: Path) -> Tokenizer:
    """The run's tokenizer, fitted on the (budgeted) ``train`` split for word and bpe, cached as JSON."""
    if not needs_training(spec):
        return make_tokenizer(spec)
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, spec, train.fingerprint, budget]).encode()).hexdigest()[:16]
    path = root / f"tokenizer-{key}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return make_tokenizer(spec, cached["state"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    docs = train.read() if budget is None else _docs_within(train.read(), budget)
    state = fit_state(spec, docs)
    write_json(path, {"key": key, "spec": spec, "state": state})
    return make_tokenizer(spec, state)


def _docs_within(docs: Iterator[str], budget: int) -> Iterator[str]:
    """Documents until about ``budget`` words (plus one separator each) have been read."""
    seen = 0
    for doc in docs:
        yield doc
        seen += len(doc.split()) + 1
        if seen >= budget:
            return


def tokenize_split(dataset: str, name: str, split: TextSplit, tokenizer: Tokenizer, budget: int | None,
                   root: Path) -> TokenSplit:
    """One split as a memory-mapped int32 stream (cached); ``info`` holds its text statistics."""
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, dataset, name, split.fingerprint, tokenizer.fingerprint,
                                     budget]).encode()).hexdigest()[:16]
    bin_path, meta_path = root / f"{name}-{key}.bin", root / f"{name}-{key}.json"
    meta = _valid_entry(bin_path, meta_path, key)
    if meta is None:
        meta = _write_entry(split, tokenizer, budget, bin_path, meta_path, key, f"{dataset}/{name}")
    stream = np.memmap(bin_path, dtype=np.int32, mode="c", shape=(meta["length"],))
    info = {k: meta[k] for k in (*STATS, "tokens", "budget")}
    info["stopped_at_budget"] = meta["truncated"]
    info.update(source_split=name, origin=split.origin, vocab_size=tokenizer.vocab_size, cache=str(bin_path))
    return TokenSplit(torch.from_numpy(stream), info=info)


def _checksum(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _valid_entry(bin_path: Path, meta_path: Path, key: str) -> dict[str, Any] | None:
    """The entry's metadata if it is complete and intact; None (rebuild) otherwise."""
    if not meta_path.exists() and not bin_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") == key and not all(k in meta for k in STATS):
            log.info("token cache entry %s predates a statistic mkeval now records; rebuilding it", bin_path)
            return None
        ok = (meta.get("key") == key and bin_path.stat().st_size == 4 * meta["length"]
              and _checksum(bin_path) == meta["checksum"])
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        log.warning("token cache entry %s is stale or corrupt; rebuilding it", bin_path)
        return None
    return meta


def _write_entry(split: TextSplit, tokenizer: Tokenizer, budget: int | None, bin_path: Path, meta_path: Path,
                 key: str, where: str) -> dict[str, Any]:
    """Tokenize documents into ``bin_path`` in chunks: memory stays bounded whatever the source's size."""
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    # host and process in the name: builders on several nodes may share a cache on a shared filesystem
    tmp = bin_path.with_name(f".{bin_path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    stats = dict.fromkeys(STATS, 0)
    unk = tokenizer.info.get("unk_id")
    length, truncated = 0, False
    buffer: list[int] = [tokenizer.eos_id]
    try:
        with tmp.open("wb") as f:
            for doc in split.read():
                ids = tokenizer.encode(doc)
                ids.append(tokenizer.eos_id)
                # whole documents only: stop after the one that reaches the budget, so statistics stay exact
                truncated = budget is not None and length + len(buffer) + len(ids) >= budget
                stats["documents"] += 1
                stats["lines"] += doc.count("\n") + 1
                stats["words"] += len(doc.split())
                stats["lm_eval_words"] += lm_eval_words(doc)
                stats["bytes"] += len(doc.encode("utf-8"))
                if unk is not None:
                    stats["unk_tokens"] += ids.count(unk)
                buffer.extend(ids)
                if len(buffer) >= _CHUNK:
                    np.asarray(buffer, dtype=np.int32).tofile(f)
                    length += len(buffer)
                    buffer = []
                if truncated:
                    break
            np.asarray(buffer, dtype=np.int32).tofile(f)
            length += len(buffer)
        if stats["documents"] == 0:
            raise UsageError(f"{where} ({split.origin}): the split holds no documents")
        os.replace(tmp, bin_path)
    finally:
        tmp.unlink(missing_ok=True)
    meta = {"key": key, "length": length, "tokens": length - 1, "budget": budget, "truncated": truncated,
            "checksum": _checksum(bin_path), "tokenizer": tokenizer.name, **stats}
    write_json(meta_path, meta)
    return meta
