"""Plan files for the command line: CSV or JSON Lines, validated in one streaming pass.

A plan lists one update per line: ``dataset_id,name,folder`` in CSV (an empty cell leaves that
field unchanged; a header row with those names is optional), or one JSON object per line with
``dataset_id`` and ``name`` and/or ``folder``. A UTF-8 BOM and CRLF line ends are accepted.
A dataset id may appear only once in a plan.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs

from ._exceptions import InvalidArgumentError
from ._models import DatasetUpdate

__all__ = ["PlanEntry", "PlanError", "PlanFormat", "read_plan", "sniff_format"]

PlanFormat = Literal["csv", "jsonl"]
_HEADER = ("dataset_id", "name", "folder")
_JSON_KEYS = frozenset(_HEADER)


class PlanError(InvalidArgumentError):
    """A plan line that is not a valid update; ``line`` is its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@attrs.frozen
class PlanEntry:
    """One update of a plan, with the line it came from."""

    line: int
    update: DatasetUpdate


def sniff_format(path: Path) -> PlanFormat:
    """``jsonl`` for .jsonl/.ndjson/.json files or a file whose first non-blank text is ``{``;
    ``csv`` otherwise.
    """
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if path.suffix.lower() in (".csv", ".tsv"):
        return "csv"
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        for text in f:
            if text.strip():
                return "jsonl" if text.lstrip().startswith("{") else "csv"
    return "csv"


def read_plan(
    path: Path, fmt: PlanFormat, *, errors: list[PlanError] | None = None
) -> Iterator[PlanEntry]:
    """Stream the entries of a plan. A bad line raises ``PlanError``, or, when ``errors`` is
    given, is appended to it and skipped.
    """
    seen: set[bytes] = set()
    lines = _csv_rows(path) if fmt == "csv" else _json_rows(path)
    for line, parsed in lines:
        try:
            if isinstance(parsed, PlanError):
                raise parsed
            update = _update(line, parsed)
            key = hashlib.blake2b(update.dataset_id.encode(), digest_size=12).digest()
            if key in seen:
                raise PlanError(line, f"dataset_id {update.dataset_id!r} appears twice")
            seen.add(key)
        except PlanError as exc:
            if errors is None:
                raise
            errors.append(exc)
            continue
        yield PlanEntry(line, update)


def _update(line: int, fields: dict[str, Any]) -> DatasetUpdate:
    dataset_id = fields.get("dataset_id")
    name = fields.get("name") or None
    folder = fields.get("folder") or None
    if not isinstance(dataset_id, str) or not dataset_id:
        raise PlanError(line, "dataset_id is missing or empty")
    for key, value in (("name", name), ("folder", folder)):
        if value is not None and not isinstance(value, str):
            raise PlanError(line, f"{key} must be text, not {type(value).__name__}")
    try:
        return DatasetUpdate(dataset_id, name=name, folder=folder)
    except InvalidArgumentError as exc:
        raise PlanError(line, str(exc)) from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | PlanError]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        first = True
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if first and tuple(c.strip().lower() for c in row) in (_HEADER, _HEADER[:2]):
                    first = False
                    continue
                first = False
                if len(row) not in (2, 3):
                    columns = ",".join(_HEADER)
                    message = f"expected 2 or 3 columns ({columns}), got {len(row)}"
                    yield line, PlanError(line, message)
                    continue
                yield line, dict(zip(_HEADER, row, strict=False))
        except csv.Error as exc:
            yield reader.line_num, PlanError(reader.line_num, f"malformed CSV: {exc}")
        except UnicodeDecodeError:
            yield reader.line_num + 1, PlanError(reader.line_num + 1, "not valid UTF-8")


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | PlanError]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        line = 0
        try:
            for text in f:
                line += 1
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except ValueError as exc:
                    yield line, PlanError(line, f"not valid JSON: {exc}")
                    continue
                if not isinstance(obj, dict):
                    yield line, PlanError(line, "expected a JSON object")
                    continue
                unknown = set(obj) - _JSON_KEYS
                if unknown:
                    yield line, PlanError(line, f"unknown keys: {', '.join(sorted(unknown))}")
                    continue
                yield line, obj
        except UnicodeDecodeError:
            yield line + 1, PlanError(line + 1, "not valid UTF-8")
