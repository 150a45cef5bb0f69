"""Plugins' ``transformers`` classes, registered with the Auto factories when ``transformers`` loads them.

A model plugin whose exported checkpoints need their own ``transformers`` classes (``bk``)
declares a function in the ``mkeval.transformers`` entry-point group that calls
``AutoConfig.register`` / ``AutoModelForCausalLM.register``. After ``import mkeval``,
``AutoModelForCausalLM.from_pretrained(exported_dir)`` then works with no other mkeval call.

``import mkeval`` must not import ``transformers`` (or torch): ``mkeval report`` starts without
them. So registration waits for ``transformers`` itself: if its auto-model module is already
imported, the functions run at once; otherwise a one-shot import hook runs them right after
that module executes (``from transformers import AutoModelForCausalLM``, or ``AutoTokenizer``,
which imports it too). Until then nothing is imported; the hook costs one ``sys.meta_path`` entry.
"""

from __future__ import annotations

import sys
from typing import Any

ENTRY_POINT_GROUP = "mkeval.transformers"
TRIGGER = "transformers.models.auto.modeling_auto"
_done = False


def register_plugins() -> None:
    """Run every ``mkeval.transformers`` entry point once; a failing one is logged, never raised."""
    global _done
    if _done:
        return
    _done = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()()
        except Exception as exc:  # a broken plugin must not break importing transformers
            import logging

            logging.getLogger(__name__).warning("mkeval: could not register %s's transformers classes (%s: %s)", ep.name,
                        type(exc).__name__, exc)


def install() -> None:
    """Register now if ``transformers``' auto models are loaded, else when they are."""
    if _done:
        return
    module = sys.modules.get(TRIGGER)
    if module is not None and not getattr(getattr(module, "__spec__", None), "_initializing", False):
        register_plugins()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


class _Finder:
    """Finds nothing itself: wraps the loader of ``TRIGGER`` so that registration follows its execution."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != TRIGGER:
            return None
        sys.meta_path.remove(self)  # one shot; and the finders asked below never see this one
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader:
    """The real loader, plus ``register_plugins()`` once the module has executed."""

    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        register_plugins()

    def __getattr__(self, name: str) -> Any:  # get_source, get_filename, ... for inspect and linecache
        return getattr(self._loader, name)
