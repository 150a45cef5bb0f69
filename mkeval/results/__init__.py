"""Result files: their types, atomic I/O, and summaries that never mix what should not be mixed. No torch."""

from .io import (STALE_FOREIGN_SECONDS, TEMP_MARK, ResultScan, atomic_write, finished_cells, read_json_file,
                 read_results, remove_stale_temp_files, scan_results, write_json, write_text)
from .types import REQUIRED_FIELDS, SCHEMA_VERSION, SHARD_SUMMARY_GLOB, SUMMARY_FILE, CellResult, CellStatus, json_safe

__all__ = ["REQUIRED_FIELDS", "SCHEMA_VERSION", "SHARD_SUMMARY_GLOB", "STALE_FOREIGN_SECONDS", "SUMMARY_FILE",
           "TEMP_MARK", "CellResult", "CellStatus", "ResultScan", "atomic_write", "finished_cells", "json_safe",
           "read_json_file", "read_results", "remove_stale_temp_files", "scan_results", "write_json", "write_text"]
