"""Models and the converter: round-trips, strictness and forward compatibility."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest

from nebius_datasets_async import (
    APIConnectionError,
    APITimeoutError,
    BulkError,
    BulkReport,
    ColumnType,
    Dataset,
    DatasetOrigin,
    DatasetStatus,
    DatasetUpdate,
    InvalidArgumentError,
    NotFoundError,
    RateLimitError,
    ResponseValidationError,
    RunStoppedError,
)
from nebius_datasets_async._converter import structure_dataset

from .conftest import sample


def test_full_sample_structures_every_field() -> None:
    """The documented example body becomes a Dataset holding each field exactly."""
    ds = structure_dataset(sample("dataset_full.json"))
    assert ds == Dataset(
        id="4d89c87498354518b92fa02fc0ad8720",
        name="example_dataset",
        status=DatasetStatus.READY,
        raw_status="READY",
        schema=ds.schema,
        metadata=ds.metadata,
        folder="/some/folder",
        current_version="0ed2d94b38fb40b9b61f6a",
        created_at=1760109124,
        error=None,
        current_version_origin=DatasetOrigin(
            type="s3", extra={"bucket": "my-bucket", "key": "data/train.jsonl"}
        ),
        type="dataset",
        ai_project_id="example_project",
    )
    assert [c.name for c in ds.schema] == ["text", "text_1"]
    assert ds.schema[0].type == ColumnType(name="string")
    assert ds.schema[1].type == ColumnType(name="option", item=ColumnType(name="string"))
    assert dict(ds.metadata) == {"rows": 1200, "tags": ("a", "b"), "owner": {"team": "ml"}}


def test_minimal_sample_uses_defaults() -> None:
    """Optional fields absent from a body take their documented defaults."""
    ds = structure_dataset(sample("dataset_minimal.json"))
    assert ds.status is DatasetStatus.PENDING
    assert ds.current_version_origin is None
    assert ds.type == "dataset"
    assert ds.ai_project_id is None
    assert ds.schema == ()


def test_unknown_status_type_and_fields_do_not_break_decoding() -> None:
    """A new status, a new column type and new fields are kept or ignored, never an error."""
    ds = structure_dataset(sample("dataset_future.json"))
    assert ds.status is DatasetStatus.UNKNOWN
    assert ds.raw_status == "ARCHIVED"
    column = ds.schema[0].type
    assert column.name == "vector"
    assert dict(column.extra) == {"dim": 768}
    assert column.item == ColumnType(name="float32")
    assert ds.current_version_origin == DatasetOrigin(
        type="huggingface", extra={"repo": "org/data", "revision": "main"}
    )
    assert not hasattr(ds, "labels")


def test_status_enum_itself_stays_strict() -> None:
    """Tolerance lives in the converter: DatasetStatus('typo') still raises."""
    with pytest.raises(ValueError, match="typo"):
        DatasetStatus("typo")


def test_models_are_frozen_all_the_way_down() -> None:
    """Neither the model nor its metadata can be changed in place."""
    ds = structure_dataset(sample("dataset_full.json"))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ds.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ds.metadata["rows"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        ds.metadata["owner"]["team"] = "x"


def test_created_is_timezone_aware() -> None:
    """created_at has a UTC datetime accessor."""
    ds = structure_dataset(sample("dataset_full.json"))
    assert ds.created == datetime(2025, 10, 10, 15, 12, 4, tzinfo=UTC)


def _with(**changes: Any) -> dict[str, Any]:
    body = sample("dataset_full.json")
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (_with(name=5), "$.name"),
        (_with(id=None), "$.id"),
        (_with(created_at="1760109124"), "$.created_at"),
        (_with(created_at=True), "$.created_at"),
        (_with(created_at=1.5), "$.created_at"),
        (_with(status=3), "$.status"),
        (_with(schema={"name": "x"}), "$.schema"),
        (_with(schema=[{"name": "x", "type": {"name": 1}}]), "$.schema[0].type"),
        (_with(schema=[{"name": "x"}]), "$.schema[0].type"),
        (_with(metadata=[]), "$.metadata"),
        (_with(error=0), "$.error"),
        (_with(current_version_origin="s3"), "$.current_version_origin"),
        ({k: v for k, v in sample("dataset_full.json").items() if k != "folder"}, "$.folder"),
    ],
)
def test_wrong_types_are_errors_with_their_path(body: dict[str, Any], path: str) -> None:
    """A number where a string belongs (and every other drift) is an error, never converted."""
    with pytest.raises(ResponseValidationError) as info:
        structure_dataset(body)
    assert any(path in e for e in info.value.errors), info.value.errors


def test_dataset_update_validates() -> None:
    """DatasetUpdate refuses an empty id, empty fields, non-text and a no-op, as ValueError."""
    assert DatasetUpdate("a", name="n") == DatasetUpdate("a", name="n", folder=None)
    for kwargs in (
        {"dataset_id": "a"},
        {"dataset_id": "", "name": "n"},
        {"dataset_id": "a", "name": ""},
        {"dataset_id": "a", "folder": ""},
        {"dataset_id": "a", "name": 5},
        {"dataset_id": 5, "name": "n"},
    ):
        with pytest.raises(InvalidArgumentError):
            DatasetUpdate(**kwargs)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DatasetUpdate("a", name="n").name = "m"  # type: ignore[misc]


def test_evolve_revalidates() -> None:
    """attrs.evolve cannot produce an invalid update."""
    with pytest.raises(InvalidArgumentError):
        attrs.evolve(DatasetUpdate("a", name="n"), name="")


@pytest.mark.parametrize(
    "exc",
    [
        NotFoundError("gone", status_code=404, detail="gone", request_id="r", method="GET"),
        RateLimitError("slow", status_code=429, retry_after=2.0, headers={"a": "b"}),
        APIConnectionError("reset", method="PATCH", path="/v1/datasets/x"),
        APITimeoutError("timed out"),
        ResponseValidationError("bad", errors=("x @ $.id",), excerpt="{", request_id="r"),
        RunStoppedError("stopped", cause=ValueError("why")),
        InvalidArgumentError("bad input"),
        BulkError(BulkReport(failed=1)),
    ],
)
def test_exceptions_pickle(exc: Exception) -> None:
    """Every exception survives pickling with its attributes and message."""
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert {k: str(v) for k, v in vars(copy).items()} == {k: str(v) for k, v in vars(exc).items()}
