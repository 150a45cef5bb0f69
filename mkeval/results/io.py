"""Writing and reading result files: atomically, with mkeval's temp-file mark, never silently skipping
a file that cannot be read."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .types import REQUIRED_FIELDS, SCHEMA_VERSION, CellResult, json_safe

log = logging.getLogger(__name__)

TEMP_MARK = ".mkeval-"  # every temp file mkeval writes: ``.{name}.mkeval-{host}-{pid}-{random}.tmp``
STALE_FOREIGN_SECONDS = 24 * 3600  # a temp file from another host is removed only once this old


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` atomically: ``write(temp)`` fills a temp file in the same directory, which is
    fsynced and renamed over ``path``. A kill leaves either the old file or the new one, never half of
    one; the temp file carries mkeval's mark, host and pid, so a later run can remove it safely.
    The file gets the usual mode (0666 minus the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write text atomically (``atomic_write``)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    """Write standard JSON atomically; non-finite floats become null."""
    write_text(path, json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files that killed mkeval processes left below ``directory``.

    Only mkeval's own pattern is touched. A file from this host is stale when its process is
    gone; one from another host (a shared filesystem) when it is older than a day, since its
    process cannot be asked. Returns what was removed.
    """
    removed = []
    host, now = socket.gethostname(), time.time()
    for path in Path(directory).rglob(f".*{TEMP_MARK}*.tmp"):
        match = re.search(re.escape(TEMP_MARK) + r"(.+)-(\d+)-[^-]*\.tmp$", path.name)
        if match is None or not path.is_file():
            continue
        owner, pid = match.group(1), int(match.group(2))
        try:
            stale = (not _pid_alive(pid)) if owner == host else now - path.stat().st_mtime > STALE_FOREIGN_SECONDS
            if stale:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its owner renamed or removed it meanwhile
            continue
    for path in removed:
        log.warning("removed %s, left behind by a killed run", path)
    return removed


@dataclass
class ResultScan:
    """What a results directory holds: finished cell results by cell hash, and the files that
    could not be read (path -> why). Older-schema results are listed apart: readable, not resumable."""

    finished: dict[str, tuple[Path, dict[str, Any]]] = field(default_factory=dict)
    unreadable: dict[Path, str] = field(default_factory=dict)
    old_schema: dict[Path, str] = field(default_factory=dict)


def read_json_file(path: Path) -> tuple[Any, str | None]:
    """``(data, None)``, or ``(None, why)`` when the file is not readable JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def scan_results(directory: Path) -> ResultScan:
    """Every ``*.json`` at the top of ``directory``: finished cell results, and unreadable files."""
    scan = ResultScan()
    for path in sorted(Path(directory).glob("*.json")):
        data, why = read_json_file(path)
        if why is not None:
            scan.unreadable[path] = why
            continue
        if not (isinstance(data, dict) and "cell_hash" in data and "status" in data):
            continue  # a summary or another file mkeval writes
        if data.get("schema_version") != SCHEMA_VERSION:
            scan.old_schema[path] = f"schema {data.get('schema_version')!r}, this mkeval writes {SCHEMA_VERSION}"
            continue
        missing = [f for f in REQUIRED_FIELDS if f not in data]
        if missing or data.get("status") != "ok" or not isinstance(data.get("cell_hash"), str):
            scan.unreadable[path] = (f"a cell result without {', '.join(missing[:5])}" if missing
                                     else f"a cell result with status {data.get('status')!r}")
            continue
        scan.finished[data["cell_hash"]] = (path, data)
    return scan


def finished_cells(directory: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Finished per-cell results in ``directory`` keyed by cell hash."""
    return scan_results(directory).finished


def read_results(directory: Path) -> list[CellResult]:
    """Every per-cell result in ``directory``, in file-name order."""
    return [CellResult.from_json(data) for _, data in sorted(finished_cells(directory).values(), key=lambda item: item[0])]
