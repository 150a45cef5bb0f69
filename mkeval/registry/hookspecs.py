"""The hooks a plugin implements. Each docstring is the plugin author's reference.

A plugin is a module listed under the ``mkeval`` entry-point group that defines
one or more of these functions, decorated with ``mkeval.hookimpl``. Each hook
receives a ``register`` callback; call it once per thing the plugin provides::

    import mkeval

    @mkeval.hookimpl
    def register_models(register):
        register(mkeval.ModelSpec(name="my-model", build=build_my_model))
"""

import pluggy

hookspec = pluggy.HookspecMarker("mkeval")
hookimpl = pluggy.HookimplMarker("mkeval")


@hookspec
def register_models(register):
    """Register model architectures: call ``register(ModelSpec(...))`` for each."""


@hookspec
def register_datasets(register):
    """Register language-modelling datasets: call ``register(DatasetSpec(...))`` for each."""


@hookspec
def register_precisions(register):
    """Register numeric precisions: call ``register(PrecisionSpec(...))`` for each."""


@hookspec
def register_tasks(register):
    """Register downstream tasks: call ``register(TaskSpec(...))`` for each."""


@hookspec
def register_task_readers(register):
    """Register task data formats: call ``register(ReaderSpec(...))`` for each (SQuAD's JSON, ...)."""


@hookspec
def register_benchmark_groups(register):
    """Register benchmark groups with their aggregators: call ``register(GroupSpec(...))`` for each."""


@hookspec
def register_benchmarks(register):
    """Register benchmarks for ``mkeval bench``: call ``register(BenchmarkSpec(...))`` for each."""


@hookspec
def register_flop_formulas(register):
    """Register FLOP formulas for custom ops: call ``register(op, formula)``.

    ``op`` is a torch op overload packet (e.g. ``torch.ops.mylib.myop``) and
    ``formula(*args, out_shape=..., **kwargs) -> int`` follows the convention of
    ``torch.utils.flop_counter.register_flop_formula``; the core's FLOP counter
    uses it for every cell.
    """
