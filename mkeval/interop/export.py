"""Checkpoints to other formats: ``hf`` writes a ``transformers`` model folder.

The model plugin converts the model (``ModelSpec.to_transformers``); the folder gets the
converted model's ``save_pretrained`` output (config.json, model.safetensors), the checkpoint's
tokenizer files (so ``AutoTokenizer.from_pretrained`` encodes as mkeval did) and its
identity.json as ``mkeval_identity.json``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ..engine.checkpoint import IDENTITY, load_checkpoint, read_config
from ..errors import UsageError

log = logging.getLogger(__name__)

FORMATS = ("hf",)


def export_checkpoint(checkpoint: str | Path, output: str | Path, format: str = "hf", registry: Any = None) -> Path:
    """Write ``checkpoint`` (a checkpoint directory) to ``output`` in ``format``; returns ``output``."""
    from ..registry.manager import get_registry

    if format not in FORMATS:
        raise UsageError(f"export format {format!r} is unknown; formats: {', '.join(FORMATS)}")
    checkpoint, output = Path(checkpoint), Path(output)
    if output.resolve() == checkpoint.resolve():
        raise UsageError(f"--output {output} is the checkpoint itself; choose another folder")
    if output.exists() and any(output.iterdir()):
        raise UsageError(f"--output {output} exists and is not empty; choose a new folder")
    registry = registry or get_registry()
    config = read_config(checkpoint)
    model, tokenizer = load_checkpoint(checkpoint, registry=registry)  # checks the model is registered
    spec = registry.get("model", config["model"])
    if spec.to_transformers is None:
        raise UsageError(f"model {config['model']!r} (plugin {config.get('plugin')!r}) has no transformers export: "
                         "its ModelSpec sets no to_transformers")
    hf = spec.to_transformers(model)
    if tokenizer is not None:  # generation and lm-eval's hf model read these from the model config
        for key in ("eos_token_id", "pad_token_id"):
            setattr(hf.config, key, tokenizer.eos_id)
        if getattr(hf, "generation_config", None) is not None:
            hf.generation_config.eos_token_id = tokenizer.eos_id
            hf.generation_config.pad_token_id = tokenizer.eos_id
    output.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(output)
    for name in (config.get("tokenizer") or {}).get("files", []):
        shutil.copyfile(checkpoint / name, output / name)
    if (checkpoint / IDENTITY).is_file():
        shutil.copyfile(checkpoint / IDENTITY, output / "mkeval_identity.json")
    log.info("exported %s (%s) to %s as %s", checkpoint, config["model"], output, type(hf).__name__)
    return output
