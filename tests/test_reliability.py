"""Reliability: a seeded chaos run, restarts, slowloris, huge bodies, kill-and-resume."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from nebius_datasets_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    DatasetsClient,
    DatasetUpdate,
    InternalServerError,
    NotFoundError,
    OutcomeStatus,
    RateLimitError,
    ResponseValidationError,
    RetryPolicy,
)
from nebius_datasets_async.testing import FakeDatasetsServer, Faults, make_dataset

from .conftest import client_tasks_left, wait_until

#: Figures of the chaos run, printed for docs/RELIABILITY.md (pytest -s shows them).
CHAOS = Faults(
    rate_429=0.01,
    retry_after=0.02,
    rate_500=0.01,
    rate_502=0.01,
    rate_503=0.01,
    rate_500_after_apply=0.01,
    rate_reset=0.01,
    rate_slow=0.003,
    slow_delay=1.0,
    rate_malformed=0.005,
    seed=2026,
)


async def test_chaos_run_reports_every_update_truthfully() -> None:
    """5,000 updates through every kind of fault: one outcome each, applied ones equal to the
    server's final record, failed ones carrying the exception that explains them, and
    nothing left open afterwards.
    """
    expected_errors = (
        NotFoundError,
        InternalServerError,
        RateLimitError,
        APIConnectionError,
        ResponseValidationError,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with FakeDatasetsServer(datasets=4900, faults=CHAOS) as fake:
            updates = [DatasetUpdate(i, folder="/chaos") for i in fake.dataset_ids]
            updates += [DatasetUpdate(f"gone-{n}", name="x") for n in range(100)]
            started = time.monotonic()
            async with fake.client(
                max_concurrency=48, timeout=0.5, retry=RetryPolicy(initial_delay=0.02)
            ) as client:
                outcomes = [o async for o in client.patch_many(updates)]
            elapsed = time.monotonic() - started
            assert await client_tasks_left() == set()
            await wait_until(lambda: fake.open_connections == 0)
            gc.collect()

            assert Counter(o.update for o in outcomes) == Counter(updates)
            statuses = Counter(o.status for o in outcomes)
            for outcome in outcomes:
                dataset_id = outcome.update.dataset_id
                if dataset_id.startswith("gone-"):
                    assert isinstance(outcome.error, NotFoundError)
                elif outcome.ok:
                    assert outcome.dataset is not None
                    record = fake.store[dataset_id]
                    assert (outcome.dataset.name, outcome.dataset.folder) == (
                        record["name"],
                        record["folder"],
                    )
                    assert record["folder"] == "/chaos"
                else:
                    assert isinstance(outcome.error, expected_errors), outcome.error
            # Every fault really happened.
            stats = fake.stats
            assert stats.resets > 0
            assert {429, 500, 502, 503} <= set(stats.statuses)
            assert any(isinstance(o.error, ResponseValidationError) for o in outcomes)
            print(
                f"\nchaos: {len(updates)} updates in {elapsed:.1f}s, {stats.requests} requests; "
                f"outcomes {dict(statuses)}; server statuses {dict(stats.statuses)}, "
                f"{stats.resets} resets; failures by type "
                f"{dict(Counter(type(o.error).__name__ for o in outcomes if not o.ok))}"
            )
            assert statuses[OutcomeStatus.APPLIED] >= 4800


async def test_server_restart_mid_run_is_survived() -> None:
    """The fake stops and starts again on the same port mid-run; the run completes."""
    async with FakeDatasetsServer(datasets=400, faults=Faults(latency=0.005)) as fake:
        updates = [DatasetUpdate(i, name="restarted") for i in fake.dataset_ids]
        policy = RetryPolicy(initial_delay=0.2, max_delay=1.0)  # waits 0.2, 0.4, 0.8 s
        async with fake.client(retry=policy, _rand=lambda: 1.0) as client:
            run = client.patch_many(updates, concurrency=8)

            async def bounce() -> None:
                await wait_until(lambda: fake.stats.applied >= 100)
                await fake.stop()
                await asyncio.sleep(0.3)
                await fake.start()

            bouncer = asyncio.create_task(bounce())
            outcomes = [o async for o in run]
            await bouncer
        assert len(outcomes) == 400
        assert all(o.ok for o in outcomes), Counter(type(o.error).__name__ for o in outcomes)
        assert all(r["name"] == "restarted" for r in fake.store.values())
        assert any(o.attempts > 1 for o in outcomes)


@pytest.fixture
async def hostile_server() -> AsyncIterator[str]:
    """A server that trickles bytes (slowloris), sends 50 MB, or redirects."""

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(b" ")
            await asyncio.sleep(0.1)
        return resp

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        chunk = b" " * (1024 * 1024)
        for _ in range(50):
            await resp.write(chunk)
        return resp

    async def ok(request: web.Request) -> web.Response:
        return web.json_response(make_dataset(0, id=request.match_info["id"]))

    app = web.Application()
    app.router.add_route("*", "/v1/datasets/trickle-{n}", trickle)
    app.router.add_route("*", "/v1/datasets/huge", huge)
    app.router.add_route("*", "/v1/datasets/{id}", ok)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_slowloris_times_out_and_the_run_goes_on(hostile_server: str) -> None:
    """A response that trickles bytes hits the per-attempt timeout; other updates finish."""
    updates = [DatasetUpdate(f"trickle-{n}", name="x") for n in range(3)]
    updates += [DatasetUpdate(f"fine-{n}", name="x") for n in range(20)]
    policy = RetryPolicy(max_attempts=2, initial_delay=0.01)
    async with DatasetsClient(
        api_key="k", base_url=hostile_server, timeout=0.4, retry=policy
    ) as client:
        started = time.monotonic()
        outcomes = [o async for o in client.patch_many(updates, concurrency=8)]
    assert time.monotonic() - started < 5
    by_id = {o.update.dataset_id: o for o in outcomes}
    assert all(isinstance(by_id[f"trickle-{n}"].error, APITimeoutError) for n in range(3))
    assert all(by_id[f"fine-{n}"].ok for n in range(20))


async def test_a_50_mb_body_is_refused_without_reading_it_whole(hostile_server: str) -> None:
    """A huge 2xx body stops at max_response_bytes with ResponseValidationError."""
    async with DatasetsClient(api_key="k", base_url=hostile_server) as client:
        with pytest.raises(ResponseValidationError, match="larger than"):
            await client.get_dataset("huge")


@pytest.mark.parametrize("cross_host", [False, True])
async def test_redirects_are_not_followed(cross_host: bool) -> None:
    """A 307 from the API is an error; the Authorization header never reaches the target."""
    seen: list[dict[str, str]] = []

    async def target(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response(make_dataset(0))

    async with FakeDatasetsServer(datasets=1) as fake:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", target)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.2" if cross_host else "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        location = f"http://{host}:{port}/v1/datasets/x"

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(location)

        try:
            redirector = web.Application()
            redirector.router.add_route("*", "/{tail:.*}", redirect)
            rrunner = web.AppRunner(redirector)
            await rrunner.setup()
            rsite = web.TCPSite(rrunner, "127.0.0.1", 0)
            await rsite.start()
            rport = rrunner.addresses[0][1]
            async with DatasetsClient(
                api_key=fake.api_key, base_url=f"http://127.0.0.1:{rport}"
            ) as client:
                with pytest.raises(APIStatusError) as info:
                    await client.rename("x", "y")
            assert info.value.status_code == 307
            assert seen == []
            await rrunner.cleanup()
        finally:
            await runner.cleanup()


async def test_tls_is_verified_by_default(tmp_path: Path) -> None:
    """A self-signed certificate is refused unless verification is explicitly turned off."""
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    proc = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await proc.wait() == 0
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response(make_dataset(0))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        url = f"https://127.0.0.1:{port}"
        async with DatasetsClient(api_key="k", base_url=url, retry=RetryPolicy.never()) as c:
            with pytest.raises(APIConnectionError, match=r"(?i)certificate"):
                await c.get_dataset("x")
        async with DatasetsClient(api_key="k", base_url=url, ssl=False) as c:
            assert (await c.get_dataset("x")).name == "dataset-000000"
    finally:
        await runner.cleanup()


async def test_no_key_in_debug_logs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, through retries and failures, no log record and no error holds the key."""
    import logging

    caplog.set_level(logging.DEBUG)
    faults = Faults(rate_500=0.3, rate_reset=0.1, rate_429=0.1, retry_after=0.01, seed=5)
    async with FakeDatasetsServer(datasets=60, faults=faults) as fake:
        updates = [DatasetUpdate(i, name="n") for i in fake.dataset_ids]
        updates.append(DatasetUpdate("missing", name="n"))
        async with fake.client(retry=RetryPolicy(initial_delay=0.001)) as client:
            outcomes = [o async for o in client.patch_many(updates)]
        texts = [r.getMessage() for r in caplog.records]
        texts += [f"{o.error!s} {o.error!r} {vars(o.error)!r}" for o in outcomes if o.error]
        assert any("retrying" in t for t in texts)
        assert not [t for t in texts if fake.api_key in t]


# -- kill and resume (the real command line in a subprocess) ---------------------------------


async def _start_cli(fake: FakeDatasetsServer, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBIUS_")}
    env.update(NEBIUS_API_KEY=fake.api_key, NEBIUS_BASE_URL=fake.base_url)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nebius_datasets_async", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


def _journal_lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line torn by SIGKILL
            lines.append(json.loads(text))
    return lines


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
async def test_interrupted_bulk_run_resumes_without_resending(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """A bulk run killed mid-way (SIGINT, or SIGKILL) and resumed applies every update; no
    finished update is sent again (after SIGKILL at most those in flight are).
    """
    concurrency = 4
    async with FakeDatasetsServer(datasets=240, faults=Faults(latency=0.02)) as fake:
        plan = tmp_path / "plan.csv"
        plan.write_text("".join(f"{i},,/resumed\n" for i in fake.dataset_ids))
        journal = tmp_path / "journal.jsonl"
        args = ("bulk", str(plan), "--journal", str(journal), "--concurrency", str(concurrency))
        proc = await _start_cli(fake, *args, "--no-progress")
        await wait_until(lambda: len(_journal_lines(journal)) >= 40, within=30)
        proc.send_signal(sig)
        await asyncio.wait_for(proc.communicate(), 30)
        if sig == signal.SIGINT:
            assert proc.returncode == 130
        applied_first = fake.stats.applied
        assert 40 <= applied_first < 240
        resume = await _start_cli(fake, "bulk", str(plan), "--resume", str(journal))
        out, err = await asyncio.wait_for(resume.communicate(), 60)
        assert resume.returncode == 0, err.decode()
        assert "already applied" in out.decode()
        assert all(r["folder"] == "/resumed" for r in fake.store.values())
        sends = Counter(r.dataset_id for r in fake.applied_requests())
        assert set(sends) == set(fake.dataset_ids)
        repeated = [i for i, n in sends.items() if n > 1]
        if sig == signal.SIGINT:
            assert repeated == []
        else:
            assert len(repeated) <= concurrency
        statuses = Counter(e["status"] for e in _journal_lines(journal))
        assert statuses["applied"] >= 240
