"""Readers for the official file layouts: plain lines, JSON lines (optionally gzip or zstd compressed).

Every problem names the file and the line (or the byte offset): an empty file, bytes that
are not UTF-8, a truncated gzip/zstd stream, malformed JSON, a JSON line without ``text``.
Nothing is skipped silently.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

from mkeval import UsageError


def read_lines(path: Path) -> Iterator[str]:
    """Each line of a text file (without its newline) is one document, blank lines included."""
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: the file is empty")
    offset = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UsageError(f"{path}:{number}: not valid UTF-8 at byte offset {offset + exc.start}") from None
            offset += len(raw)
            yield line[:-1] if line.endswith("\n") else line


def _zstd_lines(path: Path) -> Iterator[bytes]:
    """Lines of a zstd file, frame by frame; a stream that ends inside a frame is truncated (EOFError)."""
    import zstandard

    dobj, fed = zstandard.ZstdDecompressor().decompressobj(), False
    pending = b""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                pending += dobj.decompress(chunk)
                fed, chunk = True, b""
                if dobj.eof:  # the frame ended; any remaining bytes start the next one
                    chunk = dobj.unused_data
                    dobj, fed = zstandard.ZstdDecompressor().decompressobj(), False
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line + b"\n"
    if fed:
        raise EOFError("the stream ends inside a zstd frame")
    if pending:
        yield pending


def read_json_lines(path: Path, field: str = "text") -> Iterator[str]:
    """The ``field`` of each JSON object, one per line (``.jsonl``/``.json``, optionally ``.gz``/``.zst``)."""
    if path.stat().st_size == 0:
        raise UsageError(f"{path}: the file is empty")
    number = 0
    try:
        with contextlib.ExitStack() as stack:
            if path.name.endswith(".zst"):
                lines: Iterator[bytes] = _zstd_lines(path)
            elif path.name.endswith(".gz"):
                lines = stack.enter_context(gzip.open(path, "rb"))
            else:
                lines = stack.enter_context(path.open("rb"))
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except UnicodeDecodeError as exc:
                    raise UsageError(f"{path}:{number}: not valid UTF-8 ({exc.reason})") from None
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict) or field not in obj:
                    raise UsageError(f"{path}:{number}: no {field!r} field in this JSON line")
                if not isinstance(obj[field], str):
                    raise UsageError(f"{path}:{number}: field {field!r} is not a string")
                yield obj[field]
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        kind = "zstd" if path.name.endswith(".zst") else "gzip"
        raise UsageError(f"{path}: truncated or corrupt {kind} stream after line {number} ({exc})") from None
    except UsageError:
        raise
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard"):
            raise UsageError(f"{path}: corrupt zstd stream after line {number} ({exc})") from None
        raise
    if number == 0:
        raise UsageError(f"{path}: no JSON lines in the file")
