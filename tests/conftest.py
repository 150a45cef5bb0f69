import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def registry():
    """A fresh registry holding everything installed through entry points."""
    from mkeval.registry.manager import Registry, load_entry_points

    reg = Registry()
    load_entry_points(reg)
    return reg


@pytest.fixture
def tiny_protocol():
    """A protocol small enough for a cell to train in about a second."""
    from mkeval import Protocol

    return Protocol(batch_size=4, seq_lens=(16,), train_tokens=4 * 16 * 6, eval_interval=3, warmup_steps=1,
                    eval_tokens=256, test_tokens=256)


def shared_data_or_skip() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark files not found at {SHARED_DATA}")
    return SHARED_DATA


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
