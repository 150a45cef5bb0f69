"""Plugin discovery through the ``mkeval`` entry-point group, and the typed registry.

First-party plugins in ``plugins/`` are found exactly like third-party ones: through
the entry points their distribution declares. A plugin that fails to import, or whose
hook raises, is recorded as a load error and the rest still load. Two distributions
registering one name is an error when that name is used (``mkeval list`` shows it).
"""

from __future__ import annotations
import importlib.metadata
import logging
import re
import traceback
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from ..errors import PluginError, UsageError, did_you_mean
from .contracts import KINDS

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "mkeval"
_HOOKS = {
    "model": "register_models",
    "dataset": "register_datasets",
    "precision": "register_precisions",
    "task": "register_tasks",
    "benchmark": "register_benchmarks",
    "reader": "register_task_readers",
    "group": "register_benchmark_groups",
}


@dataclass
class Entry:
    """One registered spec and who provided it."""

    kind: str
    spec: Any
    plugin: str
    distribution: str


@dataclass
class LoadError:
    plugin: str
    distribution: str
    error: str
    traceback: str


@dataclass
class Registry:
    """Everything registered, by kind then name."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    clashes: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)
    load_errors: list[LoadError] = field(default_factory=list)
    flop_formulas: dict[Any, Any] = field(default_factory=dict)
    manager: pluggy.PluginManager = field(default_factory=lambda: _new_manager())

    # ------------------------------------------------------------------ adding
    def add(self, spec: Any, plugin: str = "python", distribution: str = "(python)") -> None:
        """Register one spec; its kind follows from its type."""
        kind = _kind_of(spec)
        name = spec.name
        if not valid_name(name):
            raise PluginError(
                f"plugin {plugin!r} ({distribution}) registered a {kind} with an invalid name {name!r}: "
                "names must be non-empty, start with a letter or digit, and hold no commas, spaces, path "
                "separators or other control characters (they become file names)"
            )
        entry = Entry(kind, spec, plugin, distribution)
        key = (kind, name)
        if key in self.clashes:
            self.clashes[key].append(entry)
            return
        existing = self.entries[kind].get(name)
        if existing is not None:
            if existing.distribution == distribution and existing.plugin == plugin:
                self.entries[kind][name] = entry  # re-registration by the same plugin replaces
                return
            self.clashes[key] = [existing, entry]
            del self.entries[kind][name]
            return
        self.entries[kind][name] = entry

    def add_plugin(self, plugin: Any, name: str | None = None, distribution: str = "(python)") -> None:
        """Register a pluggy plugin object (module or instance) and collect what its hooks register."""
        plugin_name = name or getattr(plugin, "__name__", None) or repr(plugin)
        self.manager.register(plugin, name=plugin_name)
        self._collect(plugin_name, distribution)

    def _collect(self, plugin_name: str, distribution: str) -> None:
        plugin = self.manager.get_plugin(plugin_name)
        pending: list[Any] = []  # added only once every hook of the plugin has succeeded
        formulas: dict[Any, Any] = {}
        for kind, hook_name in _HOOKS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue

                def register(spec: Any, _kind: str = kind) -> None:
                    if _kind_of(spec) != _kind:
                        raise PluginError(
                            f"plugin {plugin_name!r} ({distribution}) passed a {type(spec).__name__} to "
                            f"{_HOOKS[_kind]}; it expects a {KINDS[_kind].__name__}"
                        )
                    pending.append(spec)

                impl.function(register=register)
        for impl in self.manager.hook.register_flop_formulas.get_hookimpls():
            if impl.plugin is plugin:
                impl.function(register=formulas.__setitem__)
        for spec in pending:
            self.add(spec, plugin_name, distribution)
        self.flop_formulas.update(formulas)

    # ------------------------------------------------------------------ lookup
    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str, option: str | None = None) -> Any:
        """The spec registered as ``name``; a UsageError with close matches otherwise."""
        if (kind, name) in self.clashes:
            who = " and ".join(f"{e.distribution} (plugin {e.plugin})" for e in self.clashes[(kind, name)])
            raise PluginError(f"{kind} {name!r} is registered by more than one plugin: {who}; uninstall one of them")
        entry = self.entries[kind].get(name)
        if entry is None:
            raise UsageError(unknown_name_message(kind, name, self.names(kind), option))
        return entry.spec

    def entry(self, kind: str, name: str) -> Entry:
        self.get(kind, name)
        return self.entries[kind][name]


def valid_name(name: Any) -> bool:
    """A name that is safe as a CLI list item and as a file name: no way to climb out of the output dir."""
    return isinstance(name, str) and bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+:@-]*", name)) and ".." not in name


def unknown_name_message(kind: str, name: str, known: list[str], option: str | None = None) -> str:
    where = f" (in {option})" if option else ""
    hint = did_you_mean(name, known) or "."
    available = ", ".join(known) if known else "none installed"
    return f"unknown {kind} {name!r}{where}{hint} Available: {available}. See `mkeval list`."


def _kind_of(spec: Any) -> str:
    for kind, cls in KINDS.items():
        if isinstance(spec, cls):
            return kind
    raise PluginError(
        f"register() got a {type(spec).__name__}; expected one of {', '.join(c.__name__ for c in KINDS.values())}"
    )


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("mkeval")
    pm.add_hookspecs(hookspecs)
    return pm


def load_entry_points(registry: Registry) -> None:
    """Import every ``mkeval`` entry point into ``registry``; failures become load errors."""
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        if registry.manager.has_plugin(ep.name):
            other = registry.manager.get_plugin(ep.name)
            registry.load_errors.append(
                LoadError(ep.name, dist, f"entry point name {ep.name!r} is already used by {other!r}", "")
            )
            continue
        try:
            module = ep.load()
            registry.add_plugin(module, name=ep.name, distribution=dist)
        except Exception as exc:  # a broken plugin must not break the rest
            log.warning("plugin %s (%s) failed to load: %s", ep.name, dist, exc)
            if registry.manager.has_plugin(ep.name):
                registry.manager.unregister(name=ep.name)
            registry.load_errors.append(
                LoadError(ep.name, dist, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            )


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loading entry points on first use."""
    global _default
    if _default is None:
        registry = Registry()
        load_entry_points(registry)
        _default = registry
    return _default


def reset_registry() -> None:
    """Forget the process-wide registry (the next use reloads entry points)."""
    global _default
    _default = None


def register(spec: Any) -> None:
    """Register one spec from Python (library use), e.g. ``mkeval.register(ModelSpec(...))``."""
    get_registry().add(spec)


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object from Python; its hooks run at once."""
    get_registry().add_plugin(plugin, name=name)
