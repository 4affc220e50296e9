"""Frozen, keyword-only models of the Datasets API. No I/O and no JSON details here."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs

from ._exceptions import InvalidArgumentError

__all__ = [
    "ColumnSchema",
    "ColumnType",
    "Dataset",
    "DatasetOrigin",
    "DatasetStatus",
    "DatasetUpdate",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: Longest dataset id accepted. Real ids are 32 hex characters; anything near this is a mistake.
MAX_ID_LENGTH = 1024


class DatasetStatus(enum.StrEnum):
    """Lifecycle status of a dataset.

    ``UNKNOWN`` stands for a status this version of the library does not know yet; the server's
    own string is then in ``Dataset.raw_status``.
    """

    READY = "READY"
    PENDING = "PENDING"
    FAILED = "FAILED"
    TEMPORARY = "TEMPORARY"
    DRAFT = "DRAFT"
    UNKNOWN = "UNKNOWN"


@attrs.frozen(kw_only=True)
class ColumnType:
    """The type of a column: ``name`` (``string``, ``option``, ``json``, ...) and, for container
    types such as ``option``, the ``item`` type. Any other fields the server sends are kept,
    read-only, in ``extra``; an unknown type name is kept as it is.
    """

    name: str
    item: ColumnType | None = None
    extra: Mapping[str, Any] = _EMPTY


@attrs.frozen(kw_only=True)
class ColumnSchema:
    """One column of a dataset's schema."""

    name: str
    type: ColumnType


@attrs.frozen(kw_only=True)
class DatasetOrigin:
    """Where the current version came from (``type``, e.g. ``"s3"``); the object is extensible,
    so every other field is kept, read-only, in ``extra``.
    """

    type: str | None
    extra: Mapping[str, Any] = _EMPTY


@attrs.frozen(kw_only=True)
class Dataset:
    """A dataset as the API returns it from ``GET`` and ``PATCH /v1/datasets/{dataset_id}``."""

    id: str
    name: str
    status: DatasetStatus
    #: The status string exactly as the server sent it (differs from ``status`` only for
    #: a status this library does not know, where ``status`` is ``UNKNOWN``).
    raw_status: str
    schema: tuple[ColumnSchema, ...]
    metadata: Mapping[str, Any]
    folder: str
    current_version: str | None = None
    created_at: int
    error: str | None = None
    current_version_origin: DatasetOrigin | None = None
    type: str = "dataset"
    ai_project_id: str | None = None

    @property
    def created(self) -> datetime:
        """``created_at`` as a timezone-aware UTC datetime."""
        return datetime.fromtimestamp(self.created_at, tz=UTC)


def _check_text(value: object, what: str, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise InvalidArgumentError(f"{what} must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{what} is not valid Unicode (it holds a lone surrogate)"
        ) from None


def validate_dataset_id(dataset_id: object) -> str:
    """Check a dataset id; raise ``InvalidArgumentError`` (a ``ValueError``) if it is unusable.

    Any non-empty text is allowed except what the server cannot route to the dataset: a ``/``
    anywhere (the API's router decodes ``%2F`` before matching, so the id would become two path
    segments, and a trailing ``/`` is redirected to another path), ``.`` and ``..`` (which URLs
    and proxies resolve away), and ids longer than ``MAX_ID_LENGTH``.
    """
    _check_text(dataset_id, "dataset_id", optional=False)
    assert isinstance(dataset_id, str)
    if dataset_id in (".", ".."):
        raise InvalidArgumentError(f"dataset_id {dataset_id!r} cannot be sent as a path segment")
    if "/" in dataset_id:
        raise InvalidArgumentError(
            f"dataset_id {dataset_id[:80]!r} holds a '/': the API's router decodes it before "
            "matching, so no request can reach that dataset"
        )
    if len(dataset_id) > MAX_ID_LENGTH:
        raise InvalidArgumentError(
            f"dataset_id is {len(dataset_id)} characters long; the limit is {MAX_ID_LENGTH}"
        )
    return dataset_id


def _validate_update(instance: DatasetUpdate, _attribute: object, _value: str | None) -> None:
    # Runs after every field has been set (it is attached to the last field).
    validate_dataset_id(instance.dataset_id)
    _check_text(instance.name, "name", optional=True)
    _check_text(instance.folder, "folder", optional=True)
    if instance.name is None and instance.folder is None:
        raise InvalidArgumentError(
            f"update for {instance.dataset_id!r} changes nothing: give a name, a folder or both"
        )


@attrs.frozen
class DatasetUpdate:
    """One change to apply: a new ``name`` and/or ``folder`` for ``dataset_id``.

    ``None`` leaves a field unchanged (it is left out of the request body). Raises
    ``InvalidArgumentError`` (a ``ValueError``) for an empty or non-text id, an empty name or
    folder, or an update that changes nothing.
    """

    dataset_id: str
    name: str | None = attrs.field(default=None, kw_only=True)
    folder: str | None = attrs.field(default=None, kw_only=True, validator=_validate_update)
