"""Language-modelling corpora: WikiText-2/103 (tokenized and raw), Penn Treebank, C4 (English), the Pile.

Each dataset reads the official files under ``--data-dir ROOT/<folder>`` when given, and
otherwise downloads through Hugging Face ``datasets`` (cached; ``HF_DATASETS_OFFLINE`` and
``HF_HOME`` are honoured by that library). Tokenization, split mapping, budgets and caching
are the core's (``mkeval.data.text``), identical for every corpus.
"""

from __future__ import annotations

import mkeval
from mkeval import DatasetSpec

from .corpora import CORPORA, load


@mkeval.hookimpl
def register_datasets(register):
    for corpus in CORPORA.values():
        register(DatasetSpec(corpus.name, lambda request, c=corpus: load(c, request), description=corpus.description,
                             maps_splits=True))  # the tokenizer is fitted on the mapped train split
