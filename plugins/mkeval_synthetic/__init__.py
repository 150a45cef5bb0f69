"""Embedded synthetic datasets, generated deterministically from the data seed: no download.

- ``markov``: a first-order Markov chain with Dirichlet transition rows; its entropy rate
  is known in closed form, so results report the gap to the best achievable perplexity.
- ``mqar``: multi-query associative recall (Arora et al., Zoology, 2023).
- ``selective-copy`` and ``induction``: the synthetic tasks of the Mamba paper (Gu & Dao, 2023).

The recall/copy tasks score only their answer positions (``loss_mask``), whose optimum
perplexity is 1; results also report accuracy on those positions.
"""

from __future__ import annotations

import mkeval
from mkeval import DatasetSpec

from .sources import induction, markov, mqar, selective_copy


@mkeval.hookimpl
def register_datasets(register):
    register(DatasetSpec("markov", markov.load, synthetic=True,
                         description="first-order Markov chain with a closed-form entropy rate"))
    register(DatasetSpec("mqar", mqar.load, synthetic=True, description="multi-query associative recall"))
    register(DatasetSpec("selective-copy", selective_copy.load, synthetic=True,
                         description="copy the data tokens scattered among noise, in order (Mamba paper)"))
    register(DatasetSpec("induction", induction.load, synthetic=True,
                         description="recall the token that followed a trigger (Mamba paper)"))
