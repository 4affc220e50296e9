"""The same Dataset model in each library, for the structuring micro-benchmark."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pydantic

from nebius_datasets_async._converter import structure_dataset
from nebius_datasets_async.testing import make_dataset


class PColumnType(pydantic.BaseModel, frozen=True, strict=True):
    name: str
    item: PColumnType | None = None


class PColumn(pydantic.BaseModel, frozen=True, strict=True):
    name: str
    type: PColumnType


class POrigin(pydantic.BaseModel, frozen=True, extra="allow"):
    type: str | None = None


class PDataset(pydantic.BaseModel, frozen=True, strict=True):
    id: str
    name: str
    status: str
    schema_: list[PColumn] = pydantic.Field(alias="schema")
    metadata: dict[str, Any]
    folder: str
    current_version: str | None = None
    created_at: int
    error: str | None = None
    current_version_origin: POrigin | None = None
    type: str = "dataset"
    ai_project_id: str | None = None


class MColumnType(msgspec.Struct, frozen=True):
    name: str
    item: MColumnType | None = None


class MColumn(msgspec.Struct, frozen=True):
    name: str
    type: MColumnType


class MDataset(msgspec.Struct, frozen=True):
    id: str
    name: str
    status: str
    schema: list[MColumn]
    metadata: dict[str, Any]
    folder: str
    created_at: int
    current_version: str | None = None
    error: str | None = None
    current_version_origin: dict[str, Any] | None = None
    type: str = "dataset"
    ai_project_id: str | None = None


def cases() -> dict[str, Callable[[], object]]:
    """One callable per library, each turning the same body into a frozen model."""
    body = json.dumps(make_dataset(1)).encode()
    decoder = msgspec.json.Decoder(MDataset)
    return {
        "ours (json + cattrs)": lambda: structure_dataset(json.loads(body)),
        "ours (orjson + cattrs)": lambda: structure_dataset(orjson.loads(body)),
        "pydantic v2 (strict, frozen)": lambda: PDataset.model_validate_json(body),
        "msgspec (frozen Struct)": lambda: decoder.decode(body),
    }
