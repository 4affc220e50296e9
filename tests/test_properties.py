"""Property-based tests: any input is refused up front or sent exactly; any body decodes or
raises ResponseValidationError, nothing else.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from nebius_datasets_async import (
    Dataset,
    DatasetUpdate,
    InvalidArgumentError,
    ResponseValidationError,
)
from nebius_datasets_async._protocol import Request, Response, build_patch, decode_dataset
from nebius_datasets_async.testing import FakeDatasetsServer, make_dataset

from .conftest import sample

TEXT = st.text(alphabet=st.characters(codec=None), max_size=80)
NASTY = st.sampled_from(
    ["", " ", "/", "..", ".", "?", "#", "%2F", "%", "\x00", "\n", "é", "a/../b"]
)
ANY_TEXT = st.one_of(TEXT, NASTY, st.builds(lambda a, b: a + b, NASTY, TEXT))


@given(
    dataset_id=ANY_TEXT, name=st.one_of(st.none(), ANY_TEXT), folder=st.one_of(st.none(), ANY_TEXT)
)
@settings(max_examples=400, deadline=None)
def test_any_update_is_refused_or_encoded_exactly(
    dataset_id: str, name: str | None, folder: str | None
) -> None:
    """Either InvalidArgumentError before sending, or a request whose single path segment
    decodes to exactly the id and whose body decodes to exactly the given fields.
    """
    try:
        update = DatasetUpdate(dataset_id, name=name, folder=folder)
    except InvalidArgumentError:
        return
    request = build_patch(update)
    prefix = "/v1/datasets/"
    assert request.path.startswith(prefix)
    segment = request.path[len(prefix) :]
    assert segment
    assert not set(segment) & set("/?#")
    assert segment.isascii()
    assert unquote(segment, errors="strict") == dataset_id
    assert request.body is not None
    sent = {k: v for k, v in (("name", name), ("folder", folder)) if v is not None}
    assert json.loads(request.body) == sent


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)
FIELDS = [
    "id",
    "name",
    "status",
    "schema",
    "metadata",
    "folder",
    "current_version",
    "created_at",
    "error",
    "current_version_origin",
    "type",
    "ai_project_id",
]


def decode(body: bytes) -> Dataset:
    return decode_dataset(Request("GET", "/v1/datasets/x"), Response(200, CIMultiDict(), body))


@given(value=JSON)
@settings(max_examples=300, deadline=None)
def test_any_json_body_decodes_or_is_a_validation_error(value: Any) -> None:
    """Any JSON value as a 200 body: a Dataset or ResponseValidationError, nothing else."""
    with contextlib.suppress(ResponseValidationError):
        decode(json.dumps(value).encode())


@given(field=st.sampled_from(FIELDS), value=JSON, drop=st.booleans())
@settings(max_examples=400, deadline=None)
def test_any_field_drift_is_contained(field: str, value: Any, drop: bool) -> None:
    """Any value (or absence) in any field of a valid body: a Dataset or the library error."""
    body = sample("dataset_full.json")
    if drop:
        body.pop(field)
    else:
        body[field] = value
    try:
        ds = decode(json.dumps(body).encode())
    except ResponseValidationError as exc:
        errors = exc.errors
    else:
        assert isinstance(ds, Dataset)
        return
    assert errors, "a validation error names what is wrong"


@given(data=st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_bytes_decode_or_are_a_validation_error(data: bytes) -> None:
    """Arbitrary bytes in a 200 body never raise anything but ResponseValidationError."""
    with contextlib.suppress(ResponseValidationError):
        decode(data)


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
def test_deeply_nested_bodies_are_contained(depth: int) -> None:
    """Absurd nesting (in metadata or as the whole body) is a validation error or a model."""
    nested = "[" * depth + "]" * depth
    with pytest.raises(ResponseValidationError):
        decode(nested.encode())
    body = json.dumps(sample("dataset_full.json"))
    deep = body.replace('"metadata": {', '"metadata": {"deep": ' + nested + ",", 1)
    try:
        ds = decode(deep.encode())
    except ResponseValidationError:
        return
    assert isinstance(ds, Dataset)


@pytest.mark.parametrize(
    "value",
    ["x" * 65536, "\x00\x01\x1f", "tab\tnew\nline", "é/../%2F?#", "\u202e\u200b", "🙂" * 100],
)
async def test_hostile_values_reach_the_server_exactly(value: str) -> None:
    """Long, control-character and reserved-character values arrive exactly as given."""
    async with FakeDatasetsServer() as fake:
        short_id = value[:200].replace("/", "_")  # an id holding "/" is refused (unroutable)
        fake.store[short_id] = make_dataset(0, id=short_id)
        async with fake.client() as client:
            ds = await client.patch_dataset(short_id, name=value, folder=value)
        (request,) = fake.requests
        assert request.dataset_id == short_id
        assert request.json == {"name": value, "folder": value}
        assert (ds.name, ds.folder) == (value, value)
