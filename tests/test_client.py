"""DatasetsClient over a real socket against the fake server: the wire, the lifecycle, errors."""

from __future__ import annotations

import asyncio
import errno
import json
import re
import types

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

import nebius_datasets_async
from nebius_datasets_async import (
    APIConnectionError,
    APITimeoutError,
    DatasetsClient,
    DatasetsError,
    DatasetStatus,
    InvalidArgumentError,
    NotFoundError,
    ResponseValidationError,
    RetryPolicy,
    UnprocessableEntityError,
    __version__,
)
from nebius_datasets_async.testing import (
    AioresponsesResponse,
    FakeDatasetsServer,
    Faults,
    make_dataset,
)

from .conftest import client_tasks_left


def test_public_names_are_exactly_all() -> None:
    """__all__ is sorted and lists exactly the public names of the package."""
    exported = nebius_datasets_async.__all__
    assert exported == sorted(exported)
    public = {
        name
        for name, value in vars(nebius_datasets_async).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public | {"__version__"} == set(exported)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)


async def test_patch_sends_exact_method_path_headers_and_body(
    fake: FakeDatasetsServer, client: DatasetsClient
) -> None:
    """PATCH carries the bearer key, JSON content type, our User-Agent and only given fields."""
    dataset_id = fake.dataset_ids[3]
    ds = await client.patch_dataset(dataset_id, name="new-name", folder="/team/a")
    (request,) = fake.requests
    assert request.method == "PATCH"
    assert request.raw_path == f"/v1/datasets/{dataset_id}"
    assert request.headers["Authorization"] == f"Bearer {fake.api_key}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["User-Agent"].startswith(f"nebius-datasets-async/{__version__} ")
    assert json.loads(request.body) == {"name": "new-name", "folder": "/team/a"}
    assert ds.name == "new-name"
    assert ds.folder == "/team/a"
    assert fake.store[dataset_id]["name"] == "new-name"
    assert fake.store[dataset_id]["folder"] == "/team/a"


async def test_rename_and_move_send_one_field(
    fake: FakeDatasetsServer, client: DatasetsClient
) -> None:
    """rename sends only name, move only folder; the other field stays as it was."""
    dataset_id = fake.dataset_ids[0]
    await client.rename(dataset_id, "renamed")
    await client.move(dataset_id, "/moved")
    assert [r.json for r in fake.requests] == [{"name": "renamed"}, {"folder": "/moved"}]
    assert fake.store[dataset_id]["name"] == "renamed"
    assert fake.store[dataset_id]["folder"] == "/moved"


async def test_get_sends_no_body_and_returns_the_dataset(
    fake: FakeDatasetsServer, client: DatasetsClient
) -> None:
    """GET returns the same Dataset object; it sends no body and no content type."""
    dataset_id = fake.dataset_ids[1]
    ds = await client.get_dataset(dataset_id)
    assert ds.id == dataset_id
    assert ds.status is DatasetStatus.READY
    (request,) = fake.requests
    assert request.method == "GET"
    assert request.body == b""
    assert "Content-Type" not in request.headers


@pytest.mark.parametrize(
    "dataset_id",
    ["x?y=1", "frag#ment", "100%", "%2F", "with space", "..%2F..", "..etc", "ü数据", "a+b"],
)
async def test_special_ids_reach_the_server_exactly(
    fake: FakeDatasetsServer, client: DatasetsClient, dataset_id: str
) -> None:
    """Ids with reserved or non-ASCII characters arrive exactly as given, as one segment."""
    fake.store[dataset_id] = make_dataset(0, id=dataset_id)
    ds = await client.move(dataset_id, "/odd")
    assert ds.id == dataset_id
    assert fake.requests[-1].dataset_id == dataset_id
    assert fake.store[dataset_id]["folder"] == "/odd"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dataset_id": "", "name": "n"},
        {"name": ""},
        {"folder": ""},
        {"name": None, "folder": None},
        {"name": 3},
    ],
)
async def test_bad_patch_arguments_raise_before_sending(
    fake: FakeDatasetsServer, client: DatasetsClient, kwargs: dict[str, object]
) -> None:
    """Neither field, an empty id, an empty or non-text field: ValueError, nothing sent."""
    args = {"dataset_id": fake.dataset_ids[0], **kwargs}
    with pytest.raises(ValueError):  # noqa: PT011 - InvalidArgumentError is a ValueError
        await client.patch_dataset(**args)  # type: ignore[arg-type]
    assert fake.requests == []


async def test_server_422_is_unprocessable_entity(
    fake: FakeDatasetsServer, client: DatasetsClient
) -> None:
    """The fake's FastAPI-style 422 reaches the caller with its detail list."""
    fake.fail_next(1, status=422, detail="bad name")
    with pytest.raises(UnprocessableEntityError) as info:
        await client.rename(fake.dataset_ids[0], "x")
    assert info.value.detail == "bad name"
    assert info.value.request_id is not None
    assert info.value.request_id.startswith("req-")


async def test_unknown_id_is_not_found(fake: FakeDatasetsServer, client: DatasetsClient) -> None:
    """A 404 raises NotFoundError naming the path and the request id."""
    with pytest.raises(NotFoundError) as info:
        await client.rename("no-such-dataset", "x")
    assert info.value.path == "/v1/datasets/no-such-dataset"
    assert "not found" in str(info.value)


async def test_wrong_key_is_authentication_error(fake: FakeDatasetsServer) -> None:
    """A key the server refuses raises AuthenticationError; the key is in no message."""
    async with fake.client(api_key="wrong-secret-key") as client:
        with pytest.raises(nebius_datasets_async.AuthenticationError) as info:
            await client.get_dataset(fake.dataset_ids[0])
    assert "wrong-secret-key" not in str(info.value)
    assert "wrong-secret-key" not in repr(info.value)
    assert "wrong-secret-key" not in repr(vars(info.value))


async def test_timeout_is_api_timeout_error(fake: FakeDatasetsServer) -> None:
    """A response slower than the timeout raises APITimeoutError after the last attempt."""
    fake.faults = Faults(rate_slow=1.0, slow_delay=3.0)
    async with fake.client(timeout=0.2, retry=RetryPolicy.never()) as client:
        with pytest.raises(APITimeoutError) as info:
            await client.get_dataset(fake.dataset_ids[0])
    assert info.value.method == "GET"
    assert info.value.__cause__ is None


async def test_reset_connection_is_api_connection_error(fake: FakeDatasetsServer) -> None:
    """A connection closed without an answer (twice: the first is resent at once) raises
    APIConnectionError, not aiohttp's.
    """
    fake.fail_next(2, reset=True)
    async with fake.client(retry=RetryPolicy.never()) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.rename(fake.dataset_ids[0], "x")
    assert type(info.value) is APIConnectionError
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


async def test_one_dead_connection_is_resent_without_counting_an_attempt(
    fake: FakeDatasetsServer,
) -> None:
    """A connection that dies before any byte of the answer is resent once at once, even with
    retries off: PATCH sets absolute values, so this is safe.
    """
    fake.fail_next(1, reset=True)
    async with fake.client(retry=RetryPolicy.never()) as client:
        ds = await client.rename(fake.dataset_ids[0], "resent")
    assert ds.name == "resent"
    assert fake.stats.requests == 2
    assert fake.store[fake.dataset_ids[0]]["name"] == "resent"


async def test_reset_then_success_is_retried(fake: FakeDatasetsServer) -> None:
    """A reset is retried; PATCH sets absolute values, so the retry is safe."""
    fake.fail_next(1, reset=True)
    async with fake.client(_rand=lambda: 0.0) as client:
        ds = await client.rename(fake.dataset_ids[0], "after-reset")
    assert ds.name == "after-reset"
    assert len(fake.applied_requests()) == 2


async def test_applied_then_500_is_retried_to_the_same_state(fake: FakeDatasetsServer) -> None:
    """A 500 after the server applied the change: the retry sets the same values again."""
    fake.fail_next(1, status=500, apply=True)
    async with fake.client(_rand=lambda: 0.0) as client:
        ds = await client.move(fake.dataset_ids[0], "/twice")
    assert ds.folder == "/twice"
    assert fake.stats.applied == 2


async def test_connection_refused_is_api_connection_error() -> None:
    """Nothing listening: APIConnectionError after the attempts."""
    fake = FakeDatasetsServer()
    await fake.start()
    base_url = fake.base_url
    await fake.stop()
    async with DatasetsClient(
        api_key="k", base_url=base_url, retry=RetryPolicy(max_attempts=2, initial_delay=0)
    ) as client:
        with pytest.raises(APIConnectionError):
            await client.get_dataset("x")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
async def test_a_connection_error_names_the_host_as_written_in_the_url(host: str) -> None:
    """The message names scheme, host and port as in the base URL: an IPv6 literal keeps its
    brackets (``http://[::1]:9``, not the ambiguous ``http://::1:9``).
    """
    base_url = f"http://{host}:9"  # discard: nothing listens there
    retry = RetryPolicy(max_attempts=1)
    async with DatasetsClient(api_key="k", base_url=base_url, retry=retry) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.get_dataset("x")
    assert str(info.value).startswith(f"cannot connect to http://{host}:9: ")


async def test_malformed_2xx_is_response_validation_error(fake: FakeDatasetsServer) -> None:
    """A 200 with truncated JSON or HTML raises ResponseValidationError with an excerpt."""
    fake.faults = Faults(rate_malformed=1.0)
    async with fake.client() as client:
        for dataset_id in fake.dataset_ids[:6]:
            with pytest.raises(ResponseValidationError) as info:
                await client.get_dataset(dataset_id)
            assert info.value.excerpt
            assert info.value.request_id is None or info.value.request_id.startswith("req-")


async def test_oversized_body_is_refused(fake: FakeDatasetsServer) -> None:
    """A body over max_response_bytes is not read whole: ResponseValidationError."""
    async with fake.client(max_response_bytes=100) as client:
        with pytest.raises(ResponseValidationError, match="larger than the 100-byte limit"):
            await client.get_dataset(fake.dataset_ids[0])


async def test_max_concurrency_bounds_all_calls(fake: FakeDatasetsServer) -> None:
    """Single calls from many tasks never have more than max_concurrency in flight."""
    fake.faults = Faults(latency=0.05)
    async with fake.client(max_concurrency=4) as client:
        await asyncio.gather(*(client.get_dataset(i) for i in fake.dataset_ids))
        assert client.in_flight == 0
    assert fake.stats.max_in_flight == 4
    assert fake.stats.requests == 20


def sessions_of(client: DatasetsClient) -> list[aiohttp.ClientSession]:
    """The aiohttp sessions a client made, one per event loop that used it."""
    return [session for session, _closer in client._transport._sessions.values()]  # type: ignore[attr-defined]


async def test_own_session_is_closed_on_exit_error_and_cancel(fake: FakeDatasetsServer) -> None:
    """The client closes the session it created: on exit, on an error, on cancellation."""
    client = fake.client()
    async with client:
        await client.get_dataset(fake.dataset_ids[0])
        (session,) = sessions_of(client)
    assert session.closed

    async def fail_inside() -> aiohttp.ClientSession | None:
        async with fake.client() as client:
            await client.get_dataset(fake.dataset_ids[0])
            sessions.extend(sessions_of(client))
            raise RuntimeError("boom")

    sessions: list[aiohttp.ClientSession | None] = []
    with pytest.raises(RuntimeError, match="boom"):
        await fail_inside()
    (session,) = sessions
    assert session is not None
    assert session.closed

    fake.faults = Faults(latency=5.0)
    started = asyncio.Event()

    async def use() -> None:
        async with fake.client() as c:
            started.set()
            await c.get_dataset(fake.dataset_ids[0])

    task = asyncio.create_task(use())
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await client_tasks_left() == set()


async def test_users_session_is_used_and_left_open(fake: FakeDatasetsServer) -> None:
    """A caller's session carries the requests and is still open after the client exits."""
    seen: list[str] = []

    async def on_start(_s: object, _ctx: object, params: aiohttp.TraceRequestStartParams) -> None:
        seen.append(params.method)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        async with fake.client(session=session) as client:
            await client.rename(fake.dataset_ids[0], "via-user-session")
        assert not session.closed
        assert seen == ["PATCH"]
        async with session.get(f"{fake.base_url}/health") as resp:
            assert resp.status == 401
    assert fake.store[fake.dataset_ids[0]]["name"] == "via-user-session"


async def test_users_session_with_raise_for_status_still_maps_errors(
    fake: FakeDatasetsServer,
) -> None:
    """A caller's session set to raise_for_status cannot leak aiohttp's exception."""
    async with (
        aiohttp.ClientSession(raise_for_status=True) as session,
        fake.client(session=session) as client,
    ):
        with pytest.raises(NotFoundError):
            await client.get_dataset("missing")


async def test_closed_client_refuses_calls(fake: FakeDatasetsServer) -> None:
    """A call after aclose() is a clear error, not a new session."""
    client = fake.client()
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.get_dataset(fake.dataset_ids[0])


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """api_key=None reads NEBIUS_API_KEY; base_url=None reads NEBIUS_BASE_URL."""
    monkeypatch.setenv("NEBIUS_API_KEY", "env-key-123")
    monkeypatch.setenv("NEBIUS_BASE_URL", "http://127.0.0.1:9/")
    client = DatasetsClient()
    assert client.base_url == "http://127.0.0.1:9"
    assert client._transport._get_headers["Authorization"] == "Bearer env-key-123"


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without argument or environment, the public API is used."""
    assert DatasetsClient(api_key="k").base_url == "https://api.tokenfactory.nebius.com"


def test_missing_key_is_a_clear_error() -> None:
    """No key anywhere: InvalidArgumentError naming NEBIUS_API_KEY, at construction."""
    with pytest.raises(InvalidArgumentError, match="NEBIUS_API_KEY"):
        DatasetsClient()


@pytest.mark.parametrize("key", ["", "has space", "line\r\nX-Evil: 1", " padded"])
def test_malformed_key_is_refused_without_echoing_it(key: str) -> None:
    """A key with whitespace or control characters is refused; the message does not echo it."""
    with pytest.raises(DatasetsError) as info:
        DatasetsClient(api_key=key)
    assert not key.strip() or key.strip() not in str(info.value)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://api.example.com", True),
        ("https://api.example.com/prefix/", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080", True),
        ("http://127.5.5.5", True),
        ("http://api.example.com", False),
        ("http://10.0.0.1", False),
        ("ftp://api.example.com", False),
        ("api.example.com", False),
        ("https://user:pw@api.example.com", False),
    ],
)
def test_base_url_rules(url: str, ok: bool) -> None:
    """Plain http is refused unless the host is loopback; only absolute http(s) URLs pass."""
    if ok:
        assert DatasetsClient(api_key="k", base_url=url).base_url == url.rstrip("/")
    else:
        with pytest.raises(InvalidArgumentError):
            DatasetsClient(api_key="k", base_url=url)


@pytest.mark.parametrize(
    "kwargs", [{"max_concurrency": 0}, {"timeout": 0}, {"retry": 3}, {"session": object()}]
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    """Nonsense limits fail at construction with InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError):
        DatasetsClient(api_key="k", **kwargs)  # type: ignore[arg-type]


def test_repr_holds_no_key() -> None:
    """Neither the client's nor its transport's repr shows the key."""
    client = DatasetsClient(api_key="super-secret-value")
    assert "super-secret-value" not in repr(client)
    assert "super-secret-value" not in str(client)
    assert "super-secret-value" not in repr(client._transport)


async def test_payload_error_is_mapped_without_a_socket() -> None:
    """Any aiohttp client error (here a payload error, mocked) becomes APIConnectionError."""
    with aioresponses() as mocked:
        mocked.get(
            "https://api.example.com/v1/datasets/x",
            exception=aiohttp.ClientPayloadError("truncated"),
        )
        async with DatasetsClient(
            api_key="k", base_url="https://api.example.com", retry=RetryPolicy.never()
        ) as client:
            with pytest.raises(APIConnectionError, match="ClientPayloadError: truncated"):
                await client.get_dataset("x")


async def test_a_connection_reset_as_aiohttp_wraps_it_is_resent_once() -> None:
    """uvicorn closing an idle pooled connection as a request goes out reaches the client as
    aiohttp's ``ClientOSError`` (errno ECONNRESET), not as ``ConnectionResetError``: it is a
    dead connection too, sent once more at once even with retries off (it failed the call).
    """
    url = "https://api.example.com/v1/datasets/x"
    reset = aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer")
    with aioresponses() as mocked:
        mocked.patch(url, exception=reset)
        mocked.patch(
            url, payload=make_dataset(0, id="x", name="y"), response_class=AioresponsesResponse
        )
        async with DatasetsClient(
            api_key="k", base_url="https://api.example.com", retry=RetryPolicy.never()
        ) as client:
            ds = await client.rename("x", "y")
        assert ds.name == "y"
        assert len(mocked.requests[("PATCH", URL(url))]) == 2
    with aioresponses() as mocked:
        mocked.patch(url, exception=reset, repeat=True)
        async with DatasetsClient(
            api_key="k", base_url="https://api.example.com", retry=RetryPolicy.never()
        ) as client:
            with pytest.raises(APIConnectionError, match="Connection reset by peer"):
                await client.rename("x", "y")
        assert len(mocked.requests[("PATCH", URL(url))]) == 2  # (once more, not again)


async def test_os_error_is_mapped_without_a_socket() -> None:
    """An OSError from below aiohttp becomes APIConnectionError too."""
    with aioresponses() as mocked:
        mocked.patch(
            "https://api.example.com/v1/datasets/x",
            exception=ConnectionResetError("peer"),
            repeat=True,
        )
        async with DatasetsClient(
            api_key="k", base_url="https://api.example.com", retry=RetryPolicy.never()
        ) as client:
            with pytest.raises(APIConnectionError, match="ConnectionResetError"):
                await client.rename("x", "y")
