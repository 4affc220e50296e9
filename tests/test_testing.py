"""The fake server's own contract: status and body rules, fault injection, the pytest plugin."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from nebius_datasets_async import DatasetsClient, NotFoundError, RateLimitError, RetryPolicy
from nebius_datasets_async.testing import FakeDatasetsServer, Faults, make_dataset


async def raw(
    fake: FakeDatasetsServer,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    key: str | None = "default",
) -> tuple[int, CIMultiDict[str], Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {fake.api_key if key == 'default' else key}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, fake.base_url + path, data=body, headers=headers, allow_redirects=False
        ) as resp,
    ):
        text = await resp.read()
        return resp.status, CIMultiDict(resp.headers), json.loads(text) if text else None


async def test_patch_applies_only_the_given_fields(fake: FakeDatasetsServer) -> None:
    """A PATCH with name only changes the name; null leaves a field unchanged."""
    dataset_id = fake.dataset_ids[0]
    before = dict(fake.store[dataset_id])
    body = json.dumps({"name": "renamed", "folder": None}).encode()
    status, _, record = await raw(fake, "PATCH", f"/v1/datasets/{dataset_id}", body=body)
    assert status == 200
    assert record == {**before, "name": "renamed"}
    assert fake.store[dataset_id] == record


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        (b'{"name": ""}', ["body", "name"], "string_too_short"),
        (b'{"folder": 5}', ["body", "folder"], "string_type"),
        (b'{"name": "x", "owner": "me"}', ["body", "owner"], "extra_forbidden"),
        (b'{"name": ', ["body", 9], "json_invalid"),  # FastAPI: the error's position
        (b'["name"]', ["body"], "model_attributes_type"),
        (b"", ["body"], "missing"),
    ],
)
async def test_invalid_bodies_get_fastapi_422(
    fake: FakeDatasetsServer, body: bytes, loc: list[Any], kind: str
) -> None:
    """Each invalid body is a 422 with FastAPI's detail list, and changes nothing."""
    dataset_id = fake.dataset_ids[0]
    before = dict(fake.store[dataset_id])
    status, _, payload = await raw(fake, "PATCH", f"/v1/datasets/{dataset_id}", body=body)
    assert status == 422
    (error,) = payload["detail"]
    assert error["loc"] == loc
    assert error["type"] == kind
    assert isinstance(error["msg"], str)
    assert fake.store[dataset_id] == before


@pytest.mark.parametrize("key", [None, "wrong"])
async def test_missing_or_wrong_key_is_401(fake: FakeDatasetsServer, key: str | None) -> None:
    """Without the right bearer token every request is 401 with a string detail."""
    status, _, payload = await raw(fake, "GET", f"/v1/datasets/{fake.dataset_ids[0]}", key=key)
    assert status == 401
    assert isinstance(payload["detail"], str)


@pytest.mark.parametrize("path", ["/v1/datasets/nope", "/v1/datasets/a/b", "/v1/other", "/"])
async def test_unknown_ids_and_paths_are_404(fake: FakeDatasetsServer, path: str) -> None:
    """Unknown ids, extra segments and other paths are 404."""
    status, headers, payload = await raw(fake, "GET", path)
    assert status == 404
    assert "detail" in payload
    assert headers["x-request-id"].startswith("req-")


async def test_paths_are_routed_as_starlette_routes_them(fake: FakeDatasetsServer) -> None:
    """The path is decoded before routing, as Starlette does: %2F separates segments (so
    such an id is never found), other escapes are part of the id, and a trailing slash is
    redirected (307) to the path without it.
    """
    fake.store["a/b"] = make_dataset(0, id="a/b")
    status, _, body = await raw(fake, "GET", "/v1/datasets/a%2Fb")
    assert (status, body) == (404, {"detail": "Not Found"})
    fake.store["a?b c"] = make_dataset(1, id="a?b c")
    status, _, record = await raw(fake, "GET", "/v1/datasets/a%3Fb%20c")
    assert status == 200
    assert record["id"] == "a?b c"
    dataset_id = fake.dataset_ids[0]
    status, headers, _ = await raw(fake, "GET", f"/v1/datasets/{dataset_id}/")
    assert status == 307
    assert headers["Location"].endswith(f"/v1/datasets/{dataset_id}")


async def test_unsupported_method_is_405(fake: FakeDatasetsServer) -> None:
    """Only GET and PATCH exist."""
    status, _, _ = await raw(fake, "DELETE", f"/v1/datasets/{fake.dataset_ids[0]}")
    assert status == 405


def test_seeded_records_follow_the_contract() -> None:
    """Every seeded record has every documented field with the documented type."""
    record = make_dataset(3, seed=1)
    assert len(record["id"]) == 32
    assert record["status"] == "READY"
    assert record["schema"][1]["type"] == {"name": "option", "item": {"name": "string"}}
    assert isinstance(record["created_at"], int)
    assert record["current_version_origin"]["type"] == "s3"
    assert make_dataset(3, seed=1) == record
    assert make_dataset(3, seed=2)["id"] != record["id"]


def test_faults_refuse_impossible_probabilities() -> None:
    """A probability outside [0, 1] is a configuration error."""
    with pytest.raises(ValueError, match="rate_429"):
        Faults(rate_429=1.5)


async def test_faults_are_repeatable_for_a_seed() -> None:
    """The same seed gives the same fault for the same id and attempt, whatever the order."""

    async def statuses(order: list[str]) -> dict[str, int]:
        faults = Faults(rate_500=0.3, rate_429=0.2, seed=11)
        async with FakeDatasetsServer(datasets=0, faults=faults) as fake:
            for i in order:
                fake.store[i] = make_dataset(0, id=i)
            seen = {}
            for i in order:
                seen[i], _, _ = await raw(fake, "GET", f"/v1/datasets/{i}")
            return seen

    ids = [f"id-{n}" for n in range(40)]
    first = await statuses(ids)
    second = await statuses(list(reversed(ids)))
    assert first == second
    assert {200, 429, 500} <= set(first.values())


async def test_fail_next_scripts_exact_answers(fake: FakeDatasetsServer) -> None:
    """fail_next gives the next requests exactly the status, Retry-After and detail asked."""
    fake.fail_next(1, status=429, retry_after=3, detail="slow down")
    status, headers, payload = await raw(fake, "GET", f"/v1/datasets/{fake.dataset_ids[0]}")
    assert (status, headers["Retry-After"], payload["detail"]) == (429, "3", "slow down")
    status, _, _ = await raw(fake, "GET", f"/v1/datasets/{fake.dataset_ids[0]}")
    assert status == 200


async def test_applied_then_500(fake: FakeDatasetsServer) -> None:
    """apply=True changes the record and still answers the error."""
    dataset_id = fake.dataset_ids[0]
    fake.fail_next(1, status=500, apply=True)
    status, _, _ = await raw(
        fake, "PATCH", f"/v1/datasets/{dataset_id}", body=b'{"folder": "/after"}'
    )
    assert status == 500
    assert fake.store[dataset_id]["folder"] == "/after"


async def test_token_bucket_answers_429_with_retry_after() -> None:
    """A request that finds the bucket empty gets 429 with the configured Retry-After."""
    faults = Faults(rate_limit=1, burst=2, rate_limit_retry_after=4)
    async with FakeDatasetsServer(datasets=1, faults=faults) as fake:
        path = f"/v1/datasets/{fake.dataset_ids[0]}"
        results = [await raw(fake, "GET", path) for _ in range(3)]
    assert [r[0] for r in results] == [200, 200, 429]
    assert results[2][1]["Retry-After"] == "4"


async def test_answer_delay_holds_the_answer_after_the_request_was_handled() -> None:
    """With ``answer_delay`` the change is applied and counted by the limit at once, and the
    answer (a 429 too) leaves only after the delay.
    """
    faults = Faults(rate_limit=0.01, burst=1, answer_delay=0.5)
    async with FakeDatasetsServer(datasets=1, faults=faults) as fake:
        dataset_id = fake.dataset_ids[0]
        path = f"/v1/datasets/{dataset_id}"
        first = asyncio.ensure_future(raw(fake, "PATCH", path, body=b'{"name": "early"}'))
        await asyncio.sleep(0.25)
        assert fake.store[dataset_id]["name"] == "early"  # applied...
        assert not first.done()  # ...and not answered yet
        assert fake.stats.in_flight == 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        second = await raw(fake, "GET", path)  # the bucket is empty since the first arrived
        waited = loop.time() - started
        assert (await first)[0] == 200
    assert second[0] == 429
    assert waited >= 0.5


async def test_counters_and_request_log(fake: FakeDatasetsServer, client: DatasetsClient) -> None:
    """stats and requests record what was received."""
    await client.rename(fake.dataset_ids[0], "n")
    with pytest.raises(NotFoundError):
        await client.get_dataset("missing")
    assert fake.stats.requests == 2
    assert fake.stats.applied == 1
    assert fake.stats.statuses == {200: 1, 404: 1}
    assert [r.method for r in fake.requests] == ["PATCH", "GET"]
    assert fake.applied_requests(fake.dataset_ids[0])[0].json == {"name": "n"}


async def test_a_stopped_server_can_start_again_on_its_port() -> None:
    """stop() then start() serves on the same port (for restart tests)."""
    fake = FakeDatasetsServer(datasets=1)
    await fake.start()
    port = fake.port
    await fake.stop()
    await fake.start()
    try:
        assert fake.port == port
        status, _, _ = await raw(fake, "GET", f"/v1/datasets/{fake.dataset_ids[0]}")
        assert status == 200
    finally:
        await fake.stop()


async def test_plugin_fixtures(
    nebius_fake: FakeDatasetsServer, nebius_client: DatasetsClient
) -> None:
    """The pytest plugin's fixtures give a started fake and a client pointed at it."""
    assert len(nebius_fake.store) == 100
    ds = await nebius_client.move(nebius_fake.dataset_ids[0], "/plugin")
    assert ds.folder == "/plugin"


@pytest.mark.nebius_fake(datasets=3, faults=Faults(rate_429=1.0, retry_after=None))
async def test_plugin_marker_configures_the_fake(nebius_fake: FakeDatasetsServer) -> None:
    """@pytest.mark.nebius_fake passes its arguments to the fake."""
    assert len(nebius_fake.store) == 3
    async with nebius_fake.client(retry=RetryPolicy.never()) as client:
        with pytest.raises(RateLimitError):
            await client.get_dataset(nebius_fake.dataset_ids[0])


async def test_readme_mock_transport_example_runs_as_written() -> None:
    """The README's MockTransport example: a scripted 429, then a 200, with no socket."""
    from nebius_datasets_async import DatasetsClient
    from nebius_datasets_async.testing import MockTransport, json_response, make_dataset

    answers = iter(
        [
            json_response(429, {"detail": "slow down"}, headers={"Retry-After": "0"}),
            json_response(200, make_dataset(0, name="renamed")),
        ]
    )
    transport = MockTransport(lambda request: next(answers))
    async with DatasetsClient(api_key="test", transport=transport) as client:
        ds = await client.rename("any-id", "renamed")
    assert ds.name == "renamed"
    assert [r.method for r in transport.requests] == ["PATCH", "PATCH"]
    assert transport.requests[0].body == b'{"name":"renamed"}'
    assert transport.closed


async def test_standalone_fake_server_serves_until_interrupted(tmp_path: Path) -> None:
    """`python -m nebius_datasets_async.testing` prints the lines to export and the ids, serves
    real requests (here through the command line) and exits 0 on Ctrl-C.
    """
    import os
    import signal
    import sys

    ids_file = tmp_path / "ids.txt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nebius_datasets_async.testing", "--datasets", "5",
        "--rate-limit", "100", "--limit-headers", "--seed", "4", "--ids-file", str(ids_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    exports: dict[str, str] = {}
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "the fake server exited early"
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exports[name] = value
            if line.startswith("# serving"):
                break
    assert exports["NEBIUS_BASE_URL"].startswith("http://127.0.0.1:")
    ids = ids_file.read_text().split()
    assert len(ids) == 5
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBIUS_")} | exports
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nebius_datasets_async", "patch", ids[0], "--name", "standalone",
        "--output", "json", stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(cli.communicate(), 30)
    assert cli.returncode == 0
    assert json.loads(out)["name"] == "standalone"
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert "1 changes applied" in err.decode()


def test_fake_server_subcommand_has_help() -> None:
    """`nebius-datasets fake-server --help` describes the standalone fake's options."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "nebius_datasets_async", "fake-server", "--help"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert "--window-limit" in result.stdout
    assert "--ids-file" in result.stdout


@pytest.mark.parametrize("status", [429, 503])
async def test_aioresponses_mocks_the_client_with_the_response_class(status: int) -> None:
    """With aioresponses' response_class hook, mocked replies work on the aiohttp the package
    installs: a scripted throttle or busy answer, then the dataset.
    """
    from aioresponses import aioresponses

    from nebius_datasets_async.testing import AioresponsesResponse

    url = "https://api.example.com/v1/datasets/ds-1"
    with aioresponses() as mocked:
        mocked.patch(
            url,
            status=status,
            payload={"detail": "slow down"},
            headers={"Retry-After": "0"},
            response_class=AioresponsesResponse,
        )
        mocked.patch(
            url, payload=make_dataset(0, id="ds-1", name="mocked"),
            response_class=AioresponsesResponse,
        )  # fmt: skip
        async with DatasetsClient(api_key="k", base_url="https://api.example.com") as client:
            ds = await client.rename("ds-1", "mocked")
    assert ds.name == "mocked"
    calls = mocked.requests[("PATCH", aiohttp.client.URL(url))]
    assert [c.kwargs["data"] for c in calls] == [b'{"name":"mocked"}'] * 2
