"""Self-contained checkpoints: one directory holding everything needed to use a trained cell.

::

    <dir>/model.safetensors      the weights (safetensors.torch.save_model), rewritten atomically
    <dir>/config.json            the mkeval model config: registered name, size, build options,
                                 vocab_size, max_seq_len, plugin, distribution, causal, tokenizer
    <dir>/tokenizer.json         the tokenizer as a ``tokenizers`` JSON (absent without a text tokenizer)
    <dir>/tokenizer_config.json  what ``transformers.AutoTokenizer`` needs besides tokenizer.json
    <dir>/identity.json          what identifies the cell (name, hashes, dataset, seq_len, seed, ...)

``load_checkpoint(dir)`` rebuilds the model through the registry and the tokenizer from
tokenizer.json. The tokenizer files are written by hand only where ``tokenizers`` has no
ready-made equivalent of an mkeval tokenizer: ``word`` becomes a WordLevel model behind a
whitespace split, ``byte`` a merge-free byte-level BPE whose ids are the byte values.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..data.tokenizers import EOS, UNK, Tokenizer

log = logging.getLogger(__name__)

WEIGHTS, CONFIG, TOKENIZER, TOKENIZER_CONFIG, IDENTITY = (
    "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "identity.json")
FORMAT_VERSION = 1
# files of a local Hugging Face tokenizer folder that are not the tokenizer (never copied)
_NOT_TOKENIZER = {"config.json", "generation_config.json", WEIGHTS, IDENTITY}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf")


# --------------------------------------------------------------------------- writing
def write_checkpoint(directory: str | Path, model: Any, *, name: str, vocab_size: int, max_seq_len: int,
                     size: str | None = None, options: dict[str, Any] | None = None,
                     tokenizer: Tokenizer | None = None, identity: dict[str, Any] | None = None,
                     registry: Any = None, weights: bool = True) -> Path:
    """Write ``directory`` for ``model``, built as ``build_model(name, vocab_size, max_seq_len, size, **options)``.

    Writes config.json, the tokenizer files (``tokenizer`` None: none) and identity.json, and the
    weights unless ``weights=False`` (training then calls ``save_weights`` whenever validation improves).
    """
    from ..registry.manager import get_registry

    directory = Path(directory)
    entry = (registry or get_registry()).entry("model", name)
    if tokenizer is not None and tokenizer.vocab_size > vocab_size:
        raise UsageError(f"checkpoint {directory}: the tokenizer has {tokenizer.vocab_size} ids, "
                         f"more than the model's vocab_size {vocab_size}")
    directory.mkdir(parents=True, exist_ok=True)
    files = write_tokenizer(directory, tokenizer, max_length=max_seq_len) if tokenizer is not None else []
    if size is None:  # record the preset actually built, not "the default" (which a plugin may change)
        size = entry.spec.default_size
    config = {
        "mkeval_checkpoint": FORMAT_VERSION,
        "model": name,
        "size": size,
        "options": dict(options or {}),
        "vocab_size": int(vocab_size),
        "max_seq_len": int(max_seq_len),
        "plugin": entry.plugin,
        "distribution": entry.distribution,
        "causal": bool(getattr(model, "causal", True)),
        "tokenizer": None if tokenizer is None else {
            "name": tokenizer.name, "kind": tokenizer_kind(tokenizer), "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id, "fingerprint": tokenizer.fingerprint, "files": files},
    }
    _write_json(directory / IDENTITY, identity or {})
    _write_json(directory / CONFIG, config)
    if weights:
        save_weights(directory, model)
    return directory


def save_weights(directory: str | Path, model: Any) -> Path:
    """(Re)write ``directory/model.safetensors`` atomically: a temp file in the same folder, then a rename."""
    import safetensors.torch

    from ..results import atomic_write

    path = Path(directory) / WEIGHTS
    atomic_write(path, lambda tmp: safetensors.torch.save_model(model, str(tmp)))
    return path


def weights_file(path: str | Path) -> Path:
    """The weights of a checkpoint: ``path`` itself for a bare safetensors file (results written before
    checkpoints were directories), else ``path/model.safetensors``."""
    path = Path(path)
    return path if path.is_file() else path / WEIGHTS


def load_weights(model: Any, path: str | Path, device: Any) -> None:
    """Load ``model``'s weights from a checkpoint directory (or a bare safetensors file, ``weights_file``)."""
    import safetensors.torch

    safetensors.torch.load_model(model, str(weights_file(path)), device=str(device))


def tokenizer_kind(tokenizer: Tokenizer) -> str:
    """``word``, ``byte``, ``bpe`` or ``hf`` (from the tokenizer's name, e.g. ``bpe:4096``)."""
    kind = tokenizer.name.split(":", 1)[0]
    if kind not in ("word", "byte", "bpe", "hf"):
        raise UsageError(f"tokenizer {tokenizer.name!r}: no tokenizer.json form for this kind of tokenizer")
    return kind


def write_tokenizer(directory: Path, tokenizer: Tokenizer, max_length: int | None = None) -> list[str]:
    """tokenizer.json (a ``tokenizers`` JSON) and tokenizer_config.json for ``transformers``; returns
    the names of the files written (a local Hugging Face tokenizer: its own files)."""
    kind = tokenizer_kind(tokenizer)
    if kind == "hf":
        return _copy_hf_tokenizer(Path(tokenizer.state), directory)
    hf = tokenizers_object(tokenizer)
    special = {"eos_token": hf.id_to_token(tokenizer.eos_id)}
    if kind == "word":
        special["unk_token"] = UNK
    from ..results import write_text

    write_text(directory / TOKENIZER, tokenizer.state if kind == "bpe" else hf.to_str(pretty=True))
    # PreTrainedTokenizerFast: the class transformers 4 knows, and an alias of transformers 5's TokenizersBackend
    _write_json(directory / TOKENIZER_CONFIG, {
        "tokenizer_class": "PreTrainedTokenizerFast", **special,
        "model_max_length": max_length or 10**30, "clean_up_tokenization_spaces": False,
        "mkeval_tokenizer": tokenizer.name})
    return [TOKENIZER, TOKENIZER_CONFIG]


def tokenizers_object(tokenizer: Tokenizer) -> Any:
    """The mkeval ``word``, ``byte`` or ``bpe`` tokenizer as a ``tokenizers.Tokenizer`` giving the same ids."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    kind = tokenizer_kind(tokenizer)
    if kind == "bpe":
        return HFTokenizer.from_str(tokenizer.state)
    if kind == "word":
        vocab = {w: i for i, w in enumerate(tokenizer.state)}
        for special in (UNK, EOS):
            vocab.setdefault(special, len(vocab))  # as mkeval.data.tokenizers.word_tokenizer does
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # str.split(), not Whitespace's \w+ split
        names = (UNK, EOS)
    elif kind == "byte":
        hf = HFTokenizer(models.BPE(vocab={c: b for b, c in byte_to_unicode().items()}, merges=[]))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        hf.decoder = decoders.ByteLevel()
        names = (byte_to_unicode()[tokenizer.eos_id],)
    else:
        raise UsageError(f"tokenizer {tokenizer.name!r} is a Hugging Face tokenizer; its own files are copied")
    # single_word: transformers matches special tokens inside the text; a word that merely contains
    # one (e.g. "x<eos>") must stay one word, as it is for mkeval's tokenizer
    hf.add_special_tokens([AddedToken(n, single_word=True, special=True) for n in names])
    return hf


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the alphabet of ``tokenizers``' ByteLevel pre-tokenizer
    (which exposes the alphabet but not the byte each character stands for)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def _copy_hf_tokenizer(source: Path, directory: Path) -> list[str]:
    """The folder's own tokenizer files; a tokenizer named from the local cache is saved by transformers."""
    if not source.is_dir():
        from transformers import AutoTokenizer

        saved = AutoTokenizer.from_pretrained(str(source), local_files_only=True).save_pretrained(directory)
        return sorted(Path(f).name for f in saved)
    copied = []
    for f in sorted(source.iterdir()):
        if f.is_file() and f.name not in _NOT_TOKENIZER and not f.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copyfile(f, directory / f.name)
            copied.append(f.name)
    if TOKENIZER not in copied and TOKENIZER_CONFIG not in copied:
        raise UsageError(f"tokenizer folder {source} holds neither {TOKENIZER} nor {TOKENIZER_CONFIG}")
    return copied


def _write_json(path: Path, data: Any) -> None:
    from ..results import write_json

    write_json(path, data)


# --------------------------------------------------------------------------- reading
def read_config(directory: str | Path) -> dict[str, Any]:
    """``directory/config.json``, checked: a UsageError says what is missing or wrong, and where."""
    directory = Path(directory)
    if not directory.is_dir():
        hint = " (a bare .safetensors file holds weights only; checkpoints are directories)" \
            if directory.suffix == ".safetensors" else ""
        raise UsageError(f"checkpoint {directory}: not a directory{hint}")
    path = directory / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"checkpoint {directory}: no {CONFIG}; a checkpoint directory holds {WEIGHTS}, "
                         f"{CONFIG}, {IDENTITY} and (text data) {TOKENIZER}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "mkeval_checkpoint" not in config:
        raise UsageError(f"{path}: not an mkeval checkpoint config (no 'mkeval_checkpoint' key)")
    missing = [k for k in ("model", "vocab_size", "max_seq_len") if k not in config]
    if missing:
        raise UsageError(f"{path}: missing {', '.join(missing)}")
    return config


def read_identity(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / IDENTITY
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"checkpoint {directory}: no {IDENTITY}") from None


def load_checkpoint(directory: str | Path, device: Any = "cpu", registry: Any = None) -> tuple[Any, Tokenizer | None]:
    """``(model, tokenizer)`` from a checkpoint directory: the model rebuilt through the registry with
    the saved weights, in eval mode (``model(input_ids)`` -> logits ``[B, N, V]``); the tokenizer as
    an mkeval ``Tokenizer`` encoding exactly as the original did, or None (no text tokenizer)."""
    directory = Path(directory)
    config = read_config(directory)
    model = load_model(directory, config, device=device, registry=registry)
    return model, load_tokenizer(directory, config)


def load_model(directory: Path, config: dict[str, Any], device: Any = "cpu", registry: Any = None) -> Any:
    import safetensors.torch
    import torch

    from .models import build_model
    from ..registry.manager import get_registry

    weights = directory / WEIGHTS
    if not weights.is_file():
        raise UsageError(f"checkpoint {directory}: no {WEIGHTS} (training writes it at the first validation)")
    registry = registry or get_registry()
    try:
        registry.get("model", config["model"])
    except UsageError as exc:
        raise UsageError(f"{directory / CONFIG}: {exc} Install the plugin that provides it "
                         f"(the checkpoint names distribution {config.get('distribution')!r})") from None
    with torch.random.fork_rng(devices=[]):  # building initialises weights; leave the caller's RNG alone
        model = build_model(config["model"], config["vocab_size"], config["max_seq_len"], size=config.get("size"),
                            registry=registry, **config.get("options", {}))
    try:
        safetensors.torch.load_model(model, str(weights), strict=True)
    except RuntimeError as exc:
        if "state_dict" not in str(exc):  # only a mismatch of names or shapes is the checkpoint's fault
            raise
        raise UsageError(f"{weights}: the weights do not fit the model {config['model']!r} that {CONFIG} "
                         f"describes: {' '.join(str(exc).split())[:500]}") from None
    return model.to(device).eval()


def load_tokenizer(directory: str | Path, config: dict[str, Any] | None = None) -> Tokenizer | None:
    """The checkpoint's tokenizer (None: the data had no text tokenizer)."""
    from ..data.tokenizers import bpe_tokenizer, byte_tokenizer, hf_tokenizer, word_tokenizer

    directory = Path(directory)
    config = config if config is not None else read_config(directory)
    info = config.get("tokenizer")
    if info is None:
        return None
    path = directory / TOKENIZER
    kind = info.get("kind")
    if kind == "hf":
        tok = hf_tokenizer(str(directory))
        # the files are byte copies of the original folder's, so its name and fingerprint still apply
        # (hf_tokenizer's own would hash every file here, weights included)
        tok.name, tok.fingerprint = info.get("name", tok.name), info.get("fingerprint", tok.fingerprint)
        return tok
    if not path.is_file():
        raise UsageError(f"checkpoint {directory}: {CONFIG} names tokenizer {info.get('name')!r} but there is "
                         f"no {TOKENIZER}")
    text = path.read_text(encoding="utf-8")
    if kind == "byte":
        tok = byte_tokenizer()
    elif kind == "bpe":
        tok = bpe_tokenizer(text, info["name"])
    elif kind == "word":
        tok = word_tokenizer(_word_list(text, path), info["name"])
    else:
        raise UsageError(f"{directory / CONFIG}: unknown tokenizer kind {kind!r} (word, byte, bpe or hf)")
    if tok.fingerprint != info.get("fingerprint"):
        log.info("%s: rebuilt tokenizer fingerprint %s differs from the recorded %s", path, tok.fingerprint,
                 info.get("fingerprint"))
    if tok.eos_id != info.get("eos_id", tok.eos_id) or tok.vocab_size != info.get("vocab_size", tok.vocab_size):
        raise UsageError(f"{path}: the tokenizer does not match {CONFIG} (eos id or vocabulary size differ)")
    return tok


def _word_list(text: str, path: Path) -> list[str]:
    """The word list ``word_tokenizer`` was built from: the vocabulary in id order, without the
    ``<unk>``/``<eos>`` it appended (so the rebuilt fingerprint is the original one)."""
    try:
        vocab = json.loads(text)["model"]["vocab"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path}: not a WordLevel tokenizers JSON (no model.vocab)") from None
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    if [vocab[w] for w in words] != list(range(len(words))):
        raise UsageError(f"{path}: the word ids are not 0..{len(words) - 1}")
    for special in (EOS, UNK):
        if words and words[-1] == special:
            words.pop()
    return words
