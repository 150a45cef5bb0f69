"""Plugin discovery through entry points, load errors, name clashes, registration from Python."""

import importlib.metadata
import sys
import types

import pytest

import mkeval
from mkeval import DatasetSpec, ModelSpec, PluginError, PrecisionSpec, UsageError
from mkeval.registry.manager import Registry, load_entry_points


def test_first_party_plugins_come_through_entry_points(registry):
    # the first-party plugins are found exactly like third-party ones, from the mkeval distribution
    assert {"transformer"} <= set(registry.names("model"))
    assert {"markov", "mqar", "selective-copy", "induction"} <= set(registry.names("dataset"))
    assert {"fp32", "bf16", "fp16"} <= set(registry.names("precision"))
    assert registry.entry("model", "transformer").distribution == "mkeval"
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="mkeval")}
    assert eps["transformer"] == "mkeval_transformer"
    assert not registry.load_errors


def _fake_entry_points(monkeypatch, modules: dict[str, tuple[str, str]]):
    """Make entry_points(group='mkeval') return {ep name: (module, distribution)}."""

    class Dist:
        def __init__(self, name):
            self.name = name

    class EP:
        def __init__(self, name, module, dist):
            self.name, self.value, self.dist = name, module, Dist(dist)

        def load(self):
            return __import__(self.value)

    eps = [EP(n, m, d) for n, (m, d) in modules.items()]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: eps if group == "mkeval" else [])


def _module(monkeypatch, name, source):
    mod = types.ModuleType(name)
    exec(source, mod.__dict__)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


GOOD = """
import mkeval
@mkeval.hookimpl
def register_models(register):
    register(mkeval.ModelSpec(name="good-model", build=lambda **kw: None))
"""


def test_a_plugin_that_fails_to_import_is_listed_and_the_rest_load(monkeypatch):
    _module(monkeypatch, "plug_good", GOOD)
    _fake_entry_points(monkeypatch, {"good": ("plug_good", "dist-good"), "bad": ("plug_missing_xyz", "dist-bad")})
    reg = Registry()
    load_entry_points(reg)
    assert reg.names("model") == ["good-model"]
    [err] = reg.load_errors
    assert err.plugin == "bad" and err.distribution == "dist-bad"
    assert "ModuleNotFoundError" in err.error and "plug_missing_xyz" in err.error


def test_a_plugin_whose_hook_raises_registers_nothing(monkeypatch):
    _module(monkeypatch, "plug_half", """
import mkeval
@mkeval.hookimpl
def register_models(register):
    register(mkeval.ModelSpec(name="half-a", build=lambda **kw: None))
    raise RuntimeError("boom in hook")
""")
    _fake_entry_points(monkeypatch, {"half": ("plug_half", "dist-half")})
    reg = Registry()
    load_entry_points(reg)
    assert reg.names("model") == []
    assert "boom in hook" in reg.load_errors[0].error


def test_two_distributions_claiming_one_name_is_an_error_naming_both(monkeypatch):
    _module(monkeypatch, "plug_a", GOOD)
    _module(monkeypatch, "plug_b", GOOD)
    _fake_entry_points(monkeypatch, {"a": ("plug_a", "dist-alpha"), "b": ("plug_b", "dist-beta")})
    reg = Registry()
    load_entry_points(reg)
    with pytest.raises(PluginError) as exc:
        reg.get("model", "good-model")
    assert "dist-alpha" in str(exc.value) and "dist-beta" in str(exc.value)
    assert "good-model" not in reg.names("model")


def test_wrong_spec_type_for_a_hook_is_a_load_error(monkeypatch):
    _module(monkeypatch, "plug_wrong", """
import mkeval
@mkeval.hookimpl
def register_models(register):
    register(mkeval.PrecisionSpec(name="p", bits=8))
""")
    _fake_entry_points(monkeypatch, {"wrong": ("plug_wrong", "dist-wrong")})
    reg = Registry()
    load_entry_points(reg)
    assert "expects a ModelSpec" in reg.load_errors[0].error


def test_unknown_names_suggest_close_matches():
    reg = Registry()
    reg.add(ModelSpec(name="transformer", build=lambda **kw: None))
    reg.add(ModelSpec(name="mamba", build=lambda **kw: None))
    with pytest.raises(UsageError) as exc:
        reg.get("model", "transfomer", option="--models")
    msg = str(exc.value)
    assert "'transfomer'" in msg and "did you mean 'transformer'" in msg and "--models" in msg


def test_registering_from_python():
    reg = Registry()
    reg.add(DatasetSpec(name="mine", load=lambda request: None))

    class Plugin:
        @mkeval.hookimpl
        def register_precisions(self, register):
            register(PrecisionSpec(name="fp64ish", bits=64))

    reg.add_plugin(Plugin(), name="my-plugin")
    assert reg.names("dataset") == ["mine"]
    assert reg.entry("precision", "fp64ish").plugin == "my-plugin"
    assert reg.entry("dataset", "mine").distribution == "(python)"


def test_invalid_names_are_refused():
    with pytest.raises(PluginError, match="invalid name"):
        Registry().add(ModelSpec(name="a,b", build=lambda **kw: None))
