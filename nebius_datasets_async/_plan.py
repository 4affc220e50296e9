"""Plan files for the command line: CSV or JSON Lines, validated in one streaming pass.

A plan lists one update per line. An empty value leaves that field unchanged. A UTF-8 BOM and
CRLF line ends are accepted; a dataset id may appear only once in a plan.

**CSV.** Columns are found by the header's names, in any order: ``dataset_id`` (or ``id``),
``name`` and ``folder`` (case, surrounding spaces, and ``-`` or a space for ``_`` do not
matter: ``Dataset ID`` is ``dataset_id``). A header needs ``dataset_id`` and at least one of
the other two; a column of any other name is refused, never guessed. Without a header the
columns are ``dataset_id,name,folder`` in that order (the third may be left out).

Whether the first line is a header: it is one when one of its cells is a known column name, or
when it *could* be one, that is every cell is filled and made only of letters, spaces, ``_``
and ``-`` (no digit, ``/`` or ``.``, which dataset ids, folders and most names hold). Such a
line whose names are not all known is refused with the columns found and the ones expected,
and nothing is sent; a headerless plan whose first line reads like names gets a header.

**JSON Lines.** One object per line with ``dataset_id`` and ``name`` and/or ``folder``, by
field name; another key is refused.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs

from ._exceptions import InvalidArgumentError
from ._models import DatasetUpdate

__all__ = [
    "COLUMN_ALIASES",
    "PlanEntry",
    "PlanError",
    "PlanHeaderError",
    "PlanFormat",
    "read_plan",
    "sniff_format",
]

PlanFormat = Literal["csv", "jsonl"]
_COLUMNS = ("dataset_id", "name", "folder")
#: The header names each column is recognised by (after normalising case, spaces and ``-``).
COLUMN_ALIASES: dict[str, str] = {
    "dataset_id": "dataset_id",
    "id": "dataset_id",
    "name": "name",
    "folder": "folder",
}
_EXPECTED = "dataset_id (or id), and name and/or folder, in any order"
_JSON_KEYS = frozenset(_COLUMNS)
# A cell that could be a column's name: letters, spaces, '_' and '-' only.
_NAME_LIKE = re.compile(r"[^\W\d]+(?:[ _-]+[^\W\d]+)*")


class PlanError(InvalidArgumentError):
    """A plan line that is not a valid update; ``line`` is its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


class PlanHeaderError(PlanError):
    """A CSV header that cannot be read safely: no line of the plan can be applied."""


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
    given, is appended to it and skipped. A CSV header that cannot be read safely always
    raises ``PlanHeaderError``.
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


def _normalise(cell: str) -> str:
    return re.sub(r"[\s_-]+", "_", cell.strip().lower())


def _header_columns(line: int, row: list[str]) -> tuple[str, ...] | None:
    """The columns a CSV plan's first row names, ``None`` if it is data (see the module's
    rule), or raise ``PlanHeaderError`` for a header that cannot be read safely.
    """
    cells = [c.strip() for c in row]
    known = [COLUMN_ALIASES.get(_normalise(c)) for c in cells]
    if not any(known) and not all(_NAME_LIKE.fullmatch(c) for c in cells):
        return None
    found = ", ".join(repr(c) for c in cells)
    unknown = [c for c, k in zip(cells, known, strict=True) if k is None]
    if unknown:
        hint = (
            "; a plan without a header must not start with a line of names only: "
            "add the header 'dataset_id,name,folder'"
            if not any(known)
            else ""
        )
        raise PlanHeaderError(
            line,
            f"the header's columns are {found}; {', '.join(map(repr, unknown))} "
            f"{'is' if len(unknown) == 1 else 'are'} not known. Expected {_EXPECTED}{hint}",
        )
    columns = tuple(k for k in known if k is not None)
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise PlanHeaderError(
            line, f"the header's columns are {found}; {', '.join(twice)} appears twice"
        )
    if "dataset_id" not in columns or len(columns) < 2:
        raise PlanHeaderError(line, f"the header's columns are {found}; expected {_EXPECTED}")
    return columns


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | PlanError]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        columns: tuple[str, ...] | None = None
        first = True
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue
                if first:
                    first = False
                    columns = _header_columns(line, row)
                    if columns is not None:
                        continue
                if columns is not None:
                    if len(row) != len(columns):
                        message = (
                            f"expected {len(columns)} columns ({','.join(columns)}), got {len(row)}"
                        )
                        yield line, PlanError(line, message)
                        continue
                    yield line, dict(zip(columns, row, strict=True))
                    continue
                if len(row) not in (2, 3):
                    message = f"expected 2 or 3 columns ({','.join(_COLUMNS)}), got {len(row)}"
                    yield line, PlanError(line, message)
                    continue
                yield line, dict(zip(_COLUMNS, row, strict=False))
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
