"""The pure request/response layer: no sockets, no event loop."""

from __future__ import annotations

import email.utils
import json

import pytest
from multidict import CIMultiDict

from nebius_datasets_async import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DatasetStatus,
    DatasetUpdate,
    InternalServerError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    UnprocessableEntityError,
)
from nebius_datasets_async._protocol import (
    Request,
    Response,
    build_get,
    build_patch,
    dataset_path,
    decode_dataset,
    error_from_response,
    parse_retry_after,
)

from .conftest import sample_bytes

PATCH = Request("PATCH", "/v1/datasets/abc", b"{}")


def response(status: int, body: bytes = b"", **headers: str) -> Response:
    return Response(status, CIMultiDict(headers), body)


@pytest.mark.parametrize(
    ("update", "body"),
    [
        (DatasetUpdate("abc", name="new"), {"name": "new"}),
        (DatasetUpdate("abc", folder="/team/a"), {"folder": "/team/a"}),
        (DatasetUpdate("abc", name="n", folder="/f"), {"name": "n", "folder": "/f"}),
    ],
)
def test_patch_body_holds_only_the_given_fields(
    update: DatasetUpdate, body: dict[str, str]
) -> None:
    """None fields are left out of the body, so the server leaves them unchanged."""
    request = build_patch(update)
    assert request.method == "PATCH"
    assert request.path == "/v1/datasets/abc"
    assert request.body is not None
    assert json.loads(request.body) == body


def test_patch_body_keeps_unicode_exactly() -> None:
    """Non-ASCII names travel as UTF-8 JSON and decode to the same text."""
    request = build_patch(DatasetUpdate("abc", name="données ✓ 数据"))
    assert request.body is not None
    assert json.loads(request.body.decode("utf-8")) == {"name": "données ✓ 数据"}


@pytest.mark.parametrize(
    ("dataset_id", "path"),
    [
        ("4d89c874", "/v1/datasets/4d89c874"),
        ("a?b#c", "/v1/datasets/a%3Fb%23c"),
        ("100%", "/v1/datasets/100%25"),
        ("%2F", "/v1/datasets/%252F"),
        ("with space", "/v1/datasets/with%20space"),
        ("..admin", "/v1/datasets/..admin"),
        ("é", "/v1/datasets/%C3%A9"),
        ("a.b-c_d~e", "/v1/datasets/a.b-c_d~e"),
    ],
)
def test_dataset_id_is_one_encoded_path_segment(dataset_id: str, path: str) -> None:
    """Every reserved character is percent-encoded, so the id can never change the path."""
    assert dataset_path(dataset_id) == path
    assert build_get(dataset_id).path == path
    assert build_patch(DatasetUpdate(dataset_id, name="x")).path == path


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "x" * 1025, "\ud800", "a/b", "../admin", "abc/", "/abc"]
)
def test_unusable_ids_are_refused(bad: str) -> None:
    """Ids that no URL can carry unchanged, or that the server's router cannot route to a
    dataset (a '/' anywhere), raise InvalidArgumentError (a ValueError) before sending.
    """
    with pytest.raises(InvalidArgumentError):
        build_get(bad)
    with pytest.raises(ValueError, match="dataset_id"):
        DatasetUpdate(bad, name="x")


def test_decode_dataset_from_a_recorded_body() -> None:
    """A 200 with the documented body becomes a Dataset with every field."""
    ds = decode_dataset(PATCH, response(200, sample_bytes("dataset_full.json")))
    assert ds.id == "4d89c87498354518b92fa02fc0ad8720"
    assert ds.status is DatasetStatus.READY
    assert ds.schema[1].type.name == "option"
    assert ds.schema[1].type.item is not None
    assert ds.schema[1].type.item.name == "string"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (504, InternalServerError),
        (418, APIStatusError),
        (302, APIStatusError),
    ],
)
def test_every_status_maps_to_its_exception(status: int, cls: type[APIStatusError]) -> None:
    """Each error status raises exactly its class, with the status and the server's detail."""
    body = json.dumps({"detail": "something went wrong"}).encode()
    with pytest.raises(APIStatusError) as info:
        decode_dataset(PATCH, response(status, body, **{"x-request-id": "req-1"}))
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert info.value.detail == "something went wrong"
    assert info.value.request_id == "req-1"
    assert info.value.method == "PATCH"
    assert info.value.path == "/v1/datasets/abc"


def test_422_detail_list_is_kept_and_summarised() -> None:
    """FastAPI's list of validation errors is kept whole and named in the message."""
    err = error_from_response(PATCH, response(422, sample_bytes("error_422.json")))
    assert isinstance(err, UnprocessableEntityError)
    assert isinstance(err.detail, list)
    assert err.detail[0]["type"] == "string_too_short"
    assert "name: String should have at least 1 character" in str(err)


def test_error_with_a_non_json_body_keeps_its_start() -> None:
    """An HTML error page from a proxy becomes the detail text, shortened."""
    err = error_from_response(PATCH, response(502, b"<html>" + b"x" * 1000 + b"</html>"))
    assert isinstance(err, InternalServerError)
    assert isinstance(err.detail, str)
    assert err.detail.startswith("<html>xx")
    assert len(err.detail) < 300


def test_request_id_alternate_header() -> None:
    """request-id is read when x-request-id is absent."""
    err = error_from_response(PATCH, response(500, b"", **{"request-id": "abc"}))
    assert err.request_id == "abc"
    assert err.detail is None


def test_redirect_is_an_error_naming_the_location() -> None:
    """A 3xx is never followed; it is reported with its Location."""
    err = error_from_response(PATCH, response(307, b"", Location="https://elsewhere.example/"))
    assert err.status_code == 307
    assert "elsewhere.example" in str(err)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"<html>oops</html>", "not valid JSON"),
        (b'{"id": "x", "name": ', "not valid JSON"),
        (b"[1, 2]", "expected a JSON object @ $"),
        (b'{"id": "x"}', "required field missing @ $.name"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_invalid_2xx_body_is_response_validation_error(body: bytes, fragment: str) -> None:
    """A 2xx that is not a Dataset raises ResponseValidationError with a path and an excerpt."""
    with pytest.raises(ResponseValidationError) as info:
        decode_dataset(PATCH, response(200, body, **{"x-request-id": "r9"}))
    assert fragment in str(info.value)
    assert info.value.excerpt == body[:200].decode("utf-8", errors="replace")
    assert info.value.request_id == "r9"
    assert info.value.path == "/v1/datasets/abc"


def test_retry_after_seconds_and_ms() -> None:
    """Retry-After in seconds, fractional seconds and retry-after-ms are read; ms wins."""
    assert parse_retry_after(CIMultiDict({"Retry-After": "3"}), now=0) == 3.0
    assert parse_retry_after(CIMultiDict({"Retry-After": "0.25"}), now=0) == 0.25
    assert parse_retry_after(CIMultiDict({"retry-after-ms": "1500", "Retry-After": "9"}), 0) == 1.5
    assert parse_retry_after(CIMultiDict({"Retry-After": "-4"}), now=0) == 0.0
    assert parse_retry_after(CIMultiDict({"Retry-After": "soon"}), now=0) is None
    assert parse_retry_after(CIMultiDict({"Retry-After": "nan"}), now=0) is None
    assert parse_retry_after(CIMultiDict(), now=0) is None


def test_retry_after_http_date() -> None:
    """Retry-After as an HTTP date is the time left until then, never negative."""
    now = 1_760_000_000.0
    later = email.utils.formatdate(now + 42, usegmt=True)
    assert parse_retry_after(CIMultiDict({"Retry-After": later}), now=now) == pytest.approx(42)
    earlier = email.utils.formatdate(now - 42, usegmt=True)
    assert parse_retry_after(CIMultiDict({"Retry-After": earlier}), now=now) == 0.0


def test_429_carries_retry_after() -> None:
    """RateLimitError.retry_after is the server's wait."""
    err = error_from_response(PATCH, response(429, b"{}", **{"Retry-After": "7"}), now=0)
    assert isinstance(err, RateLimitError)
    assert err.retry_after == 7.0
