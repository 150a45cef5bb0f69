"""Security review as tests: what mkeval deserialises, and where it can write.

- weights are read with safetensors, other tensors only with ``torch.load(weights_only=True)``;
- YAML only through the safe loader (a ``!!python/object`` tag runs nothing; see also
  tests/test_protocol.py and tests/test_tasks.py);
- no name from a plugin, a task spec or a data folder can make mkeval write outside the output dir;
- no archive is extracted (so there is no path traversal to refuse).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mkeval import ModelSpec, PluginError
from mkeval.registry.manager import Registry

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.joinpath("mkeval").rglob("*.py"), *ROOT.joinpath("plugins").rglob("*.py"),
                  *ROOT.joinpath("tools").rglob("*.py")])


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_scan_sees_the_sources():
    assert len(SOURCES) > 30 and any(p.name == "loop.py" for p in SOURCES)


def test_torch_load_only_with_weights_only():
    bad, seen = [], 0
    for path in SOURCES:
        for node, name in _calls(path):
            if name == "torch.load":
                seen += 1
                flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    bad.append(f"{path}:{node.lineno}")
    assert seen >= 1  # the training state is read this way
    assert bad == [], f"torch.load without weights_only=True: {bad}"


def test_no_unsafe_deserialisers():
    unsafe = {"pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "marshal.loads",
              "dill.load", "eval", "exec", "tarfile.open", "zipfile.ZipFile", "shutil.unpack_archive"}
    bad = [f"{path}:{node.lineno} {name}" for path in SOURCES for node, name in _calls(path) if name in unsafe
           and not (name == "yaml.load" and _safe_loader(node))]
    assert bad == [], bad


def _safe_loader(node: ast.Call) -> bool:
    """``yaml.load(..., Loader=SAFE_LOADER)``, the one constant checked below to be a safe loader."""
    loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
    return isinstance(loader, ast.Name) and loader.id == "SAFE_LOADER"


def test_the_yaml_loader_constant_is_a_safe_loader():
    import yaml

    from mkeval.protocol import SAFE_LOADER

    assert SAFE_LOADER in {yaml.SafeLoader, getattr(yaml, "CSafeLoader", None)} - {None}


def test_a_yaml_python_tag_in_a_config_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"lr: !!python/object/apply:os.system ['touch {marker}']\n")
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--config", str(cfg), "--output-dir",
                           str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2 and f"{cfg}:1" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "a\\b", "x\n", ""])
def test_a_plugin_name_that_could_leave_the_output_dir_is_refused(name):
    registry = Registry()
    with pytest.raises(PluginError, match="invalid name"):
        registry.add(ModelSpec(name=name, build=lambda **kw: None))


@pytest.mark.parametrize("name", ["../../x", "..", ".x", "a/b"])
def test_a_task_named_to_escape_the_output_dir_exits_2_and_writes_nothing(tmp_path, name):
    spec = tmp_path / "spec" / "evil.yaml"
    spec.parent.mkdir()
    spec.write_text(f"name: '{name}'\nkind: classification\nmetrics: [accuracy]\nlocal:\n  - format: tsv\n"
                    "    files: {eval: dev.tsv}\ninputs: ['{s}']\nlabel: label\nlabels: [0, 1]\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dev.tsv").write_text("s\tlabel\na\t0\n")
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    proc = subprocess.run([sys.executable, "-m", "mkeval", "run", "--tasks", "x", "--include-path",
                           str(spec.parent), "--data-dir", str(tmp_path / "data"), "--output-dir", str(out)],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 2, proc.stderr
    assert f"{spec}:1" in proc.stderr and "field 'name'" in proc.stderr
    assert not out.exists() and {p for p in tmp_path.rglob("*")} == before  # nothing written anywhere below
