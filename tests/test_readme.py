"""The README works as written: CI installs and tests as it says, and its runnable blocks run.

Convention: a fenced block of README.md is *runnable* when its info string says so after the
language, ```` ```bash runnable ```` or ```` ```python runnable ```` (renderers use the first word
for highlighting and ignore the rest, so readers see an ordinary block). Each runnable block is run
on its own, as written, in a fresh folder laid out as a checkout: the repository's ``examples/``
(and the other folders below) linked in, and ``../shared`` beside it when the real benchmark files
exist (else a block that names ``../shared`` is skipped with the reason); bash blocks with
``bash -e -x``, Python blocks with this interpreter; ``mkeval`` and ``python`` are this test's
environment's. A block fails the test when any of its commands fails. Blocks that install, take
minutes or need a GPU or a cluster stay unmarked; a runnable block keeps its own budget small
(``--train-tokens``, ``--limit-windows``, ``--limit``), in the README, so a reader's quick start is
as quick as CI's. Each block must stand alone (no block reads another's output).

The examples under ``examples/`` run through the README's runnable blocks, and
``examples/protocol.yaml`` is checked field by field against ``mkeval.Protocol()``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mkeval import Protocol
from mkeval.runner.request import read_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"
SHARED = ROOT.parent / "shared"
LINKED = ("examples", "tasks", "tools", "docs")  # what the README's blocks may read from the checkout
BLOCK_TIMEOUT_S = 600
FENCE = re.compile(r"^(`{3,})(\w*)[ \t]*(.*)$")


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    flags: tuple[str, ...]
    text: str

    @property
    def runnable(self) -> bool:
        return "runnable" in self.flags


def blocks(markdown: str) -> list[Block]:
    """Every fenced block, with its language and the words after it."""
    out, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start, body = m.group(1), i, []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        out.append(Block(start + 1, m.group(2), tuple(m.group(3).split()), "\n".join(body) + "\n"))
        i += 1
    return out


RUNNABLE = [b for b in blocks(README.read_text(encoding="utf-8")) if b.runnable]


# --------------------------------------------------------------------------- the convention itself
def test_block_parser_reads_languages_and_flags():
    text = "x\n```bash runnable\necho a\n```\n\n```python\nprint(1)\n```\n````md\n```bash runnable\n````\n"
    found = blocks(text)
    assert [(b.line, b.language, b.runnable) for b in found] == [(2, "bash", True), (6, "python", False),
                                                                 (9, "md", False)]
    assert found[0].text == "echo a\n"


def test_runnable_blocks_are_bash_or_python_and_keep_budgets_small():
    assert RUNNABLE, "README.md has no runnable block"
    for block in RUNNABLE:
        assert block.language in ("bash", "python"), f"README.md:{block.line}: runnable {block.language!r} block"
        for command in re.findall(r"^\s*mkeval run\b[^\n]*", block.text, flags=re.M):
            if "--dry-run" in command or "--config examples/matrix.yaml" in command:  # its budget: below
                continue
            assert "--train-tokens" in command or "--limit" in command, (
                f"README.md:{block.line}: `{command.strip()}` runs at the full budget; give it a small one")
        for command in re.findall(r"^\s*(?:pip|python3? -m pip|torchrun|sbatch)\b[^\n]*", block.text, flags=re.M):
            pytest.fail(f"README.md:{block.line}: `{command.strip()}` cannot be runnable")


def test_readme_runs_every_example():
    commands = "".join(b.text for b in RUNNABLE)
    assert "python examples/python_api.py" in commands
    assert "--config examples/matrix.yaml" in commands
    assert "--config examples/protocol.yaml" in commands
    readme = README.read_text(encoding="utf-8")
    for path in EXAMPLES.iterdir():
        if not path.name.startswith((".", "__")):
            assert f"examples/{path.name}" in readme, f"README.md does not point to examples/{path.name}"


def test_readme_links_and_example_paths_exist():
    readme = README.read_text(encoding="utf-8")
    targets = set(re.findall(r"\]\(([^)#\s]+)\)", readme)) | set(re.findall(r"(?<![\w/])(examples/[\w./-]+\w)", readme))
    missing = sorted(t for t in targets if "://" not in t and not (ROOT / t).exists())
    assert not missing, f"README.md names files that do not exist: {missing}"


def test_ci_runs_the_readme_install_and_test_commands():
    plain = [b for b in blocks(README.read_text(encoding="utf-8")) if b.language == "bash" and not b.runnable]
    ci = ROOT.joinpath(".ci", "run").read_text().splitlines()
    install = next(line for b in plain for line in b.text.splitlines() if "pip install -e" in line)
    test = next(line for b in plain for line in b.text.splitlines() if "pytest" in line)
    assert install in ci
    assert test in ci


# --------------------------------------------------------------------------- examples/protocol.yaml
def test_protocol_example_lists_every_field_at_its_default():
    """examples/protocol.yaml holds every Protocol field, each at its default, so it cannot drift."""
    path = EXAMPLES / "protocol.yaml"
    request, values, _ = read_config(path)  # what `mkeval run --config` reads
    assert request == type(request)(), "examples/protocol.yaml should hold protocol fields only"
    names = [f.name for f in dataclasses.fields(Protocol)]
    assert sorted(values) == sorted(names), (f"missing {sorted(set(names) - set(values))}, "
                                             f"unknown {sorted(set(values) - set(names))}")
    defaults, loaded = Protocol().to_dict(), Protocol.from_dict(values).to_dict()
    for name in names:
        got, expected = loaded[name], defaults[name]
        assert got == expected and type(got) is type(expected), f"{name}: {got!r} in the file, default {expected!r}"
    assert Protocol.from_dict(values) == Protocol()
    # the raw YAML, too: in the dataclass's order, and each field with a comment (its meaning and unit)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert list(raw) == names
    lines = {m.group(1): m.group(2) for m in
             re.finditer(r"^(\w+):[^#\n]*(#.*)?$", path.read_text(encoding="utf-8"), flags=re.M)}
    uncommented = [n for n in names if not lines.get(n)]
    assert not uncommented, f"fields without a comment: {uncommented}"


def test_matrix_example_is_a_small_matrix():
    request, values, _ = read_config(EXAMPLES / "matrix.yaml")
    protocol = Protocol.from_dict({**Protocol().to_dict(), **values})
    assert len(request.models) > 1 and request.datasets and len(protocol.seq_lens) > 1 and len(protocol.seeds) > 1
    cells = len(request.models) * len(request.datasets) * len(protocol.seq_lens) * len(protocol.seeds)
    assert cells <= 8 and protocol.train_tokens <= 16_384 and request.limit_windows, "keep it under a minute"


# --------------------------------------------------------------------------- running the blocks
def _workdir(tmp_path: Path) -> Path:
    """A fresh folder laid out like a checkout, with ``../shared`` beside it when it exists."""
    work = tmp_path / "checkout"
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED, target_is_directory=True)
    return work


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=[f"README.md:{b.line}" for b in RUNNABLE])
def test_runnable_readme_block(block: Block, tmp_path: Path):
    if "../shared" in block.text and not (SHARED / "data").is_dir():
        pytest.skip(f"README.md:{block.line} reads ../shared/data; real benchmark files not found at {SHARED / 'data'}")
    work = _workdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MKEVAL_CACHE": str(tmp_path / "cache"), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if block.language == "bash":
        script = work / "block.sh"
        script.write_text(block.text)
        command = ["bash", "-e", "-x", str(script)]
    else:
        script = work / "block.py"
        script.write_text(block.text)
        command = [sys.executable, str(script)]
    try:
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"README.md:{block.line}: still running after {BLOCK_TIMEOUT_S} s; give it a smaller budget\n"
                    f"{stderr[-3000:]}")
    assert proc.returncode == 0, (f"README.md:{block.line} ({block.language}) exited {proc.returncode}\n"
                                  f"--- stdout (end)\n{proc.stdout[-4000:]}\n--- stderr (end)\n{proc.stderr[-4000:]}")
