"""The real `python -m nebius_datasets_async` entry point against the fake over a socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import stat
import sys
from pathlib import Path

import attrs
import pytest

from nebius_datasets_async.testing import FakeDatasetsServer, Faults, make_dataset

from .conftest import wait_until


@attrs.frozen
class Result:
    code: int
    out: str
    err: str


async def run_cli(
    fake: FakeDatasetsServer,
    *args: str,
    stdin: bytes | None = None,
    key: str | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    """Run the command line in a subprocess while the fake serves in this event loop."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEBIUS_")}
    environ["NEBIUS_BASE_URL"] = fake.base_url
    if key != "":
        environ["NEBIUS_API_KEY"] = key or fake.api_key
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nebius_datasets_async",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def write(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


async def test_get_prints_the_dataset(fake: FakeDatasetsServer) -> None:
    """`get ID` prints the dataset; --output json prints it as JSON."""
    dataset_id = fake.dataset_ids[0]
    created = fake.store[dataset_id]["created_at"]
    result = await run_cli(fake, "get", dataset_id)
    assert result.code == 0, result.err
    assert "dataset-000000" in result.out
    created_line = next(line for line in result.out.splitlines() if line.startswith("created_at"))
    assert created_line.split()[1] == "2025-10-10T15:12:04Z"  # 1760109124 as ISO 8601 UTC
    result = await run_cli(fake, "get", dataset_id, "--output", "json")
    assert json.loads(result.out)["id"] == dataset_id
    assert json.loads(result.out)["created_at"] == created  # JSON keeps the raw value


async def test_patch_changes_the_server(fake: FakeDatasetsServer) -> None:
    """`patch ID --name --folder` applies both; no field at all is a usage error."""
    dataset_id = fake.dataset_ids[1]
    result = await run_cli(fake, "patch", dataset_id, "--name", "cli-name", "--folder", "/cli")
    assert result.code == 0, result.err
    assert (fake.store[dataset_id]["name"], fake.store[dataset_id]["folder"]) == (
        "cli-name",
        "/cli",
    )
    result = await run_cli(fake, "patch", dataset_id)
    assert result.code == 2
    assert "changes nothing" in result.err
    assert len(fake.requests) == 1


async def test_missing_item_is_exit_1(fake: FakeDatasetsServer) -> None:
    """A call the server refuses exits 1 and names the error."""
    result = await run_cli(fake, "get", "nope")
    assert result.code == 1
    assert "NotFoundError" in result.err


async def test_no_key_is_a_usage_error(fake: FakeDatasetsServer) -> None:
    """Without NEBIUS_API_KEY or --api-key-file: exit 2, nothing sent."""
    result = await run_cli(fake, "get", fake.dataset_ids[0], key="")
    assert result.code == 2
    assert "NEBIUS_API_KEY" in result.err
    assert fake.requests == []


async def test_api_key_file(fake: FakeDatasetsServer, tmp_path: Path) -> None:
    """--api-key-file supplies the key; there is no option to pass the key itself."""
    key_file = write(tmp_path / "key", fake.api_key + "\n")
    key_file.chmod(0o600)
    result = await run_cli(
        fake, "--api-key-file", str(key_file), "get", fake.dataset_ids[0], key=""
    )
    assert result.code == 0, result.err
    assert result.err == ""
    key_file.chmod(0o644)  # readable by group and others: one warning line, never the key
    result = await run_cli(
        fake, "--api-key-file", str(key_file), "get", fake.dataset_ids[0], key=""
    )
    assert result.code == 0, result.err
    assert result.err.count("\n") == 1
    assert "readable by others" in result.err
    assert "644" in result.err
    assert fake.api_key not in result.err
    result = await run_cli(fake, "--api-key", fake.api_key, "get", fake.dataset_ids[0])
    assert result.code == 2
    assert fake.api_key not in result.err


async def test_bulk_csv_plan_with_journal(fake: FakeDatasetsServer, tmp_path: Path) -> None:
    """A CSV plan (header, empty cells) is applied; the journal has one private line each."""
    ids = fake.dataset_ids[:6]
    rows = ["dataset_id,name,folder", f"{ids[0]},only-name,", f"{ids[1]},,/only-folder"]
    rows += [f"{i},n-{i[:4]},/f" for i in ids[2:]]
    plan = write(tmp_path / "plan.csv", "\n".join(rows) + "\n")
    journal = tmp_path / "journal.jsonl"
    result = await run_cli(fake, "bulk", str(plan), "--journal", str(journal), "--no-progress")
    assert result.code == 0, result.err
    assert "6 applied, 0 failed" in result.out
    assert fake.store[ids[0]]["name"] == "only-name"
    assert fake.store[ids[0]]["folder"] == "/incoming"
    assert fake.store[ids[1]]["folder"] == "/only-folder"
    assert fake.store[ids[1]]["name"] == "dataset-000001"
    assert fake.applied_requests(ids[0])[0].json == {"name": "only-name"}
    lines = [json.loads(t) for t in journal.read_text().splitlines()]
    assert sorted(e["dataset_id"] for e in lines) == sorted(ids)
    assert {e["status"] for e in lines} == {"applied"}
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600


async def test_bulk_jsonl_from_stdin_with_json_output(fake: FakeDatasetsServer) -> None:
    """A JSON Lines plan on stdin; --output json prints one outcome per line and a summary."""
    ids = fake.dataset_ids[:4]
    plan = "".join(json.dumps({"dataset_id": i, "folder": "/stdin"}) + "\n" for i in ids)
    result = await run_cli(
        fake, "bulk", "-", "--output", "json", "--no-progress", stdin=plan.encode()
    )
    assert result.code == 0, result.err
    *outcomes, summary = [json.loads(t) for t in result.out.splitlines()]
    assert {"requests", "retries", "throttled", "paced_at"} <= set(summary["summary"])
    assert sorted(o["dataset_id"] for o in outcomes) == sorted(ids)
    assert summary["summary"]["applied"] == 4
    assert all(fake.store[i]["folder"] == "/stdin" for i in ids)


async def test_dry_run_sends_no_patch(fake: FakeDatasetsServer, tmp_path: Path) -> None:
    """--dry-run GETs each dataset, prints what would change and sends no PATCH."""
    ids = fake.dataset_ids[:3]
    plan = write(tmp_path / "p.csv", f"{ids[0]},new,\n{ids[1]},dataset-000001,\n{ids[2]},,/x\n")
    result = await run_cli(fake, "bulk", str(plan), "--dry-run")
    assert result.code == 0, result.err
    assert {r.method for r in fake.requests} == {"GET"}
    assert f"{ids[0]}: name 'dataset-000000' -> 'new'" in result.out
    assert f"{ids[1]}: unchanged" in result.out
    assert f"{ids[2]}: folder '/incoming' -> '/x'" in result.out


async def test_journal_then_resume_applies_each_update_once(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """A run where some updates fail, then --resume: only those are sent again, so every
    update is applied exactly once in total.
    """
    ids = fake.dataset_ids[:10]
    late = [f"late-{n}" for n in range(3)]
    plan = write(tmp_path / "p.csv", "".join(f"{i},resumed,\n" for i in ids + late))
    journal = tmp_path / "j.jsonl"
    first = await run_cli(fake, "bulk", str(plan), "--journal", str(journal), "--no-progress")
    assert first.code == 1
    assert "10 applied, 3 failed" in first.out
    for n, i in enumerate(late):
        fake.store[i] = make_dataset(100 + n, id=i)
    second = await run_cli(fake, "bulk", str(plan), "--resume", str(journal), "--no-progress")
    assert second.code == 0, second.err
    assert "3 applied, 0 failed, 0 skipped, 0 not started, 10 already applied" in second.out
    for i in ids:
        assert len(fake.applied_requests(i)) == 1
    for i in late:
        assert len(fake.applied_requests(i)) == 2  # a 404, then the applied one
        assert fake.store[i]["name"] == "resumed"
    statuses = [json.loads(t)["status"] for t in journal.read_text().splitlines()]
    assert statuses.count("applied") == 13


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ab1,b,c,d\n", "line 1: expected 2 or 3 columns"),
        ("ab12,name-1\n,name-2\n", "line 2: dataset_id is missing or empty"),
        ("ab12,name-1\ncd34,,\n", "line 2: "),
        ("ab12,name-1\nab12,name-2\n", "line 2: dataset_id 'ab12' appears twice"),
        ("", "the plan holds no updates"),
        ("\n\n", "the plan holds no updates"),
        ('x,"unclosed\n', "malformed CSV"),
    ],
)
async def test_bad_csv_plans_are_refused_with_line_numbers(
    fake: FakeDatasetsServer, tmp_path: Path, text: str, fragment: str
) -> None:
    """A bad plan is reported with its line number, exit 2, and nothing is sent."""
    plan = write(tmp_path / "bad.csv", text)
    result = await run_cli(fake, "bulk", str(plan))
    assert result.code == 2
    assert fragment in result.err
    assert fake.requests == []


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            '{"dataset_id": "x", "name": "a"}\n{"dataset_id": "y", "name": \n',
            "line 2: not valid JSON",
        ),
        ('["x", "a"]\n', "line 1: expected a JSON object"),
        ('{"dataset_id": "x", "nmae": "a"}\n', "line 1: unknown keys: nmae"),
        ('{"dataset_id": "x", "name": 5}\n', "line 1: name must be text"),
        ('{"dataset_id": "x"}\n', "line 1: update for 'x' changes nothing"),
    ],
)
async def test_bad_jsonl_plans_are_refused_with_line_numbers(
    fake: FakeDatasetsServer, tmp_path: Path, text: str, fragment: str
) -> None:
    """Malformed JSON lines are reported by number; nothing is sent."""
    plan = write(tmp_path / "bad.jsonl", text)
    result = await run_cli(fake, "bulk", str(plan))
    assert result.code == 2
    assert fragment in result.err
    assert fake.requests == []


async def test_bom_and_crlf_are_accepted(fake: FakeDatasetsServer, tmp_path: Path) -> None:
    """A UTF-8 BOM and CRLF line ends (a spreadsheet's export) are read correctly."""
    ids = fake.dataset_ids[:2]
    text = "dataset_id,name,folder\r\n" + "".join(f"{i},crlf-ok,\r\n" for i in ids)
    plan = write(tmp_path / "excel.csv", text, encoding="utf-8-sig")
    result = await run_cli(fake, "bulk", str(plan), "--no-progress")
    assert result.code == 0, result.err
    assert all(fake.store[i]["name"] == "crlf-ok" for i in ids)


async def test_skip_bad_lines_applies_the_rest(fake: FakeDatasetsServer, tmp_path: Path) -> None:
    """--skip-bad-lines reports the bad lines and applies the valid ones."""
    ids = fake.dataset_ids[:2]
    plan = write(tmp_path / "p.csv", f"{ids[0]},ok,\nbroken\n{ids[1]},ok,\n")
    result = await run_cli(fake, "bulk", str(plan), "--skip-bad-lines", "--no-progress")
    assert result.code == 0, result.err
    assert "line 2" in result.err
    assert all(fake.store[i]["name"] == "ok" for i in ids)


async def test_key_never_appears_in_output_or_journal(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """Neither stdout, stderr nor the journal holds the key, even when calls fail."""
    ids = fake.dataset_ids[:3]
    plan = write(tmp_path / "p.csv", "".join(f"{i},k,\n" for i in [*ids, "missing"]))
    journal = tmp_path / "j.jsonl"
    result = await run_cli(fake, "bulk", str(plan), "--journal", str(journal), "--output", "json")
    assert result.code == 1
    refused = await run_cli(fake, "bulk", str(plan), key="not-the-key-" + "x" * 20)
    for text in (result.out, result.err, journal.read_text(), refused.out, refused.err):
        assert fake.api_key not in text
        assert "not-the-key-" not in text


async def test_auth_failure_in_bulk_skips_the_rest(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """A refused key stops a bulk run: exit 1, the rest reported as skipped, with the reason."""
    plan = write(tmp_path / "p.csv", "".join(f"{i},x,\n" for i in fake.dataset_ids))
    result = await run_cli(fake, "bulk", str(plan), "--concurrency", "2", key="bad-key-value")
    assert result.code == 1
    assert "AuthenticationError" in result.out
    assert "the server refused the API key (401)" in result.out
    failed, skipped = (len(fake.requests), 20 - len(fake.requests))
    assert f"0 applied, {failed} failed, {skipped} skipped, 0 not started" in result.out
    assert all(r["name"] != "x" for r in fake.store.values())


async def test_demo_runs_and_verifies(fake: FakeDatasetsServer) -> None:
    """`demo` runs a bulk job against the embedded fake and verifies the final state."""
    result = await run_cli(
        fake,
        "demo",
        "--datasets",
        "150",
        "--latency",
        "0.002",
        "--rate-limit",
        "3000",
        key="",
    )
    assert result.code == 0, result.err
    assert "applied 150, failed 0 of 150" in result.out
    assert "verified" in result.out


async def test_demo_ctrl_c_twice_prints_its_summary_with_skipped_not_failed(
    fake: FakeDatasetsServer,
) -> None:
    """Ctrl-C twice in quick succession during `demo`: the run drains at once, so the second
    press lands while it shuts down; it must not lose the summary (a KeyboardInterrupt), and
    the updates the stop skipped are counted as skipped, not listed as failures.
    """
    proc = await start_cli(fake, "demo", "--no-progress")
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 20)
    assert first.startswith(b"demo:"), first
    await asyncio.sleep(1.0)  # 2,000 updates at 500/s: well inside the run
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    # 130; or, when the second press came as the interpreter was exiting after the summary,
    # killed by SIGINT (which a shell reports as 130 too)
    assert proc.returncode in (130, -signal.SIGINT), err.decode()
    assert "Traceback" not in err.decode()
    summary = out.decode().splitlines()
    counts = re.match(
        r"applied (\d+), failed 0, skipped (\d+) \(run stopped: interrupted\), "
        r"not started (\d+) of 2000 in ",
        summary[0],
    )
    assert counts is not None, out.decode()
    assert sum(map(int, counts.groups())) == 2000
    assert summary[1].startswith("verified: every applied update matches"), out.decode()
    assert len(summary) == 2, out.decode()


# -- what a user's first hour ran into (issue 17) -----------------------------------------------


async def start_cli(fake: FakeDatasetsServer, *args: str) -> asyncio.subprocess.Process:
    """Start the command line against ``fake`` and return at once (to interrupt it)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEBIUS_")}
    environ.update(NEBIUS_API_KEY=fake.api_key, NEBIUS_BASE_URL=fake.base_url)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nebius_datasets_async", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environ,
    )  # fmt: skip


def progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("progress: ")]


async def test_second_ctrl_c_exits_130_with_a_summary_and_no_traceback(
    tmp_path: Path,
) -> None:
    """Ctrl-C twice: the requests in flight are abandoned, the command exits 130 and prints
    its one-line summary; no traceback, no CancelledError.
    """
    async with FakeDatasetsServer(datasets=60, faults=Faults(latency=0.4)) as fake:
        plan = write(tmp_path / "p.csv", "".join(f"{i},,/twice\n" for i in fake.dataset_ids))
        proc = await start_cli(fake, "bulk", str(plan), "--concurrency", "4", "--no-progress")
        await wait_until(lambda: fake.stats.applied >= 4, within=20)
        proc.send_signal(signal.SIGINT)
        await asyncio.sleep(0.1)  # requests in flight take 0.4 s: abandon them
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        applied = sum(r["folder"] == "/twice" for r in fake.store.values())
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    assert "Error" not in err.decode()
    summary = out.decode().strip().splitlines()
    assert len(summary) == 1, out.decode()
    counts = re.match(
        r"(\d+) applied, (\d+) failed, (\d+) skipped, (\d+) not started, 0 already applied "
        r"\(of 60\)",
        summary[0],
    )
    assert counts is not None, summary
    done, failed, skipped, not_started = map(int, counts.groups())
    assert done + failed + skipped + not_started == 60
    assert not_started > 0  # those abandoned in flight have no outcome
    assert done <= applied  # the server may have applied some of the abandoned ones


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` holds ``path`` open (Linux: /proc/PID/fd)."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                return True
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/fd")
async def test_ctrl_c_while_the_plan_is_checked_sends_nothing(tmp_path: Path) -> None:
    """One Ctrl-C while a large plan is still being checked: exit 130 at once, saying nothing
    was sent; no request, no journal. (Before: asyncio's runner marked the task cancelled,
    the run started anyway, and the cancellation landed after its first requests, with
    "finishing requests in flight" printed and no summary.)
    """
    async with FakeDatasetsServer(datasets=10) as fake:
        rows = 300_000  # a check of well over a second, to Ctrl-C in the middle of it
        plan = write(tmp_path / "big.csv", "".join(f"{n:032x},n{n},\n" for n in range(rows)))
        journal = tmp_path / "j.jsonl"
        args = ("bulk", str(plan), "--format", "csv", "--journal", str(journal), "--no-progress")
        proc = await start_cli(fake, *args)
        await wait_until(lambda: _has_open(proc.pid, plan), within=20)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        await asyncio.sleep(0.2)  # a request sent at the last moment would have arrived
        assert fake.requests == []
    assert proc.returncode == 130, err.decode()
    assert err.decode().strip() == (
        "nebius-datasets: interrupted while reading the plan; nothing was sent"
    )
    assert out == b""
    assert not journal.exists()


async def test_progress_after_ctrl_c_and_resume_counts_every_update(tmp_path: Path) -> None:
    """After one Ctrl-C the last progress line counts done, failed, skipped and not started
    (not "60/60 done"); a --resume then ends at 60/60 applied, counting the earlier ones.
    """
    async with FakeDatasetsServer(datasets=60, faults=Faults(latency=0.05)) as fake:
        plan = write(tmp_path / "p.csv", "".join(f"{i},,/ctrl-c\n" for i in fake.dataset_ids))
        journal = tmp_path / "j.jsonl"
        args = ("bulk", str(plan), "--journal", str(journal), "--concurrency", "2")
        proc = await start_cli(fake, *args)
        await wait_until(lambda: fake.stats.applied >= 6, within=20)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 130, err.decode()
        first = fake.stats.applied
        assert 6 <= first < 60
        last = progress_lines(err.decode())[-1]
        assert last.startswith(f"progress: {first}/60 applied, 0 failed, {60 - first} skipped"), (
            last
        )
        assert f"{first} applied, 0 failed, {60 - first} skipped, 0 not started" in out.decode()
        result = await run_cli(fake, "bulk", str(plan), "--resume", str(journal))
        assert result.code == 0, result.err
        last = progress_lines(result.err)[-1]
        assert last.startswith(f"progress: 60/60 applied ({first} applied earlier), 0 failed"), last
        assert all(r["folder"] == "/ctrl-c" for r in fake.store.values())
        assert fake.stats.applied == 60  # nothing applied twice


async def test_dry_run_uses_the_bulk_engine_and_honours_json_output(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """--dry-run GETs each dataset through the bulk engine: --output json gives one line per
    dataset and a summary; it says no PATCH was sent, and the server is unchanged.
    """
    ids = fake.dataset_ids[:3]
    plan = write(tmp_path / "p.csv", f"{ids[0]},new,\n{ids[1]},dataset-000001,\n{ids[2]},,/x\n")
    journal = tmp_path / "j.jsonl"
    result = await run_cli(
        fake, "bulk", str(plan), "--dry-run", "--output", "json", "--journal", str(journal)
    )
    assert result.code == 0, result.err
    *lines, summary = [json.loads(t) for t in result.out.splitlines()]
    assert {line["dataset_id"]: line["changes"] for line in lines} == {
        ids[0]: {"name": ["dataset-000000", "new"]},
        ids[1]: {},
        ids[2]: {"folder": ["/incoming", "/x"]},
    }
    assert summary["summary"]["checked"] == 3
    assert summary["summary"]["dry_run"] is True
    assert "no PATCH was sent" in result.err
    assert {r.method for r in fake.requests} == {"GET"}
    assert not journal.exists()  # a dry run records nothing as applied
    assert [fake.store[i]["name"] for i in ids] == [f"dataset-00000{n}" for n in range(3)]


async def test_dry_run_with_a_refused_key_stops_like_a_real_run(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """The dry run is the bulk engine: a refused key stops it after the requests in flight,
    instead of sending one GET per line of the plan.
    """
    plan = write(tmp_path / "p.csv", "".join(f"{i},x,\n" for i in fake.dataset_ids))
    result = await run_cli(
        fake, "bulk", str(plan), "--dry-run", "--concurrency", "2", key="bad-key-value"
    )
    assert result.code == 1
    assert len(fake.requests) <= 2
    assert "0 checked" in result.err
    assert f"{20 - len(fake.requests)} skipped" in result.err


async def test_paced_at_is_the_pace_the_gate_held(tmp_path: Path) -> None:
    """Against a server that admits 100 requests/s (and says so in x-ratelimit headers), the
    summary's "paced at" is what the run actually sent while paced, near 100/s, not the
    gate's momentary setting (970/s before).
    """
    faults = Faults(rate_limit=100, burst=10, rate_limit_retry_after=1.0, limit_headers=True)
    async with FakeDatasetsServer(datasets=300, faults=faults) as fake:
        plan = write(tmp_path / "p.csv", "".join(f"{i},,/paced\n" for i in fake.dataset_ids))
        result = await run_cli(fake, "bulk", str(plan), "--no-progress")
        assert result.code == 0, result.err
        paced = re.search(r"paced at (\d+)/s", result.out)
        assert paced is not None, result.out
        assert 50 <= int(paced.group(1)) <= 130
        assert all(r["folder"] == "/paced" for r in fake.store.values())
        for dataset_id in fake.dataset_ids:  # and the same in JSON
            fake.store[dataset_id]["folder"] = "/incoming"
        result = await run_cli(fake, "bulk", str(plan), "--no-progress", "--output", "json")
        assert 50 <= json.loads(result.out.splitlines()[-1])["summary"]["paced_at"] <= 130


async def test_no_pace_is_printed_when_the_gate_never_paced(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """A run the server never throttled prints no "paced at" (nothing was measured)."""
    plan = write(tmp_path / "p.csv", "".join(f"{i},,/free\n" for i in fake.dataset_ids))
    result = await run_cli(fake, "bulk", str(plan), "--no-progress")
    assert result.code == 0, result.err
    assert "paced" not in result.out
    assert "20 applied, 0 failed" in result.out


async def test_a_cut_list_of_failures_says_how_many_more(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """30 failures: 20 listed, then "and 10 more"; the server's datasets are untouched."""
    plan = write(tmp_path / "p.csv", "".join(f"missing-{n},x,\n" for n in range(30)))
    result = await run_cli(fake, "bulk", str(plan), "--no-progress")
    assert result.code == 1
    listed = [line for line in result.out.splitlines() if "NotFoundError" in line]
    assert len(listed) == 20
    assert "... and 10 more" in result.out
    assert "0 applied, 30 failed" in result.out
    assert len(fake.requests) == 30


async def test_resume_of_a_missing_journal_is_an_error(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """--resume of a journal that does not exist: exit 2, nothing sent, no file created;
    with --journal naming it too, the run starts afresh and creates it.
    """
    ids = fake.dataset_ids[:2]
    plan = write(tmp_path / "p.csv", "".join(f"{i},,/resumed\n" for i in ids))
    journal = tmp_path / "missing.jsonl"
    result = await run_cli(fake, "bulk", str(plan), "--resume", str(journal))
    assert result.code == 2
    assert f"no journal at {journal}" in result.err
    assert not journal.exists()
    assert fake.requests == []
    result = await run_cli(
        fake, "bulk", str(plan), "--resume", str(journal), "--journal", str(journal)
    )
    assert result.code == 0, result.err
    assert len(journal.read_text().splitlines()) == 2
    assert all(fake.store[i]["folder"] == "/resumed" for i in ids)


async def test_resume_of_a_missing_journal_with_another_journal_is_an_error(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """A mistyped --resume next to a --journal naming another file is still an error: it
    would otherwise start afresh and send the whole plan again. Nothing sent, no file made.
    """
    ids = fake.dataset_ids[:2]
    plan = write(tmp_path / "p.csv", "".join(f"{i},,/resumed\n" for i in ids))
    typo, other = tmp_path / "jounral.jsonl", tmp_path / "journal.jsonl"
    result = await run_cli(fake, "bulk", str(plan), "--resume", str(typo), "--journal", str(other))
    assert result.code == 2, result.err
    assert f"no journal at {typo}" in result.err
    assert not typo.exists()
    assert not other.exists()
    assert fake.requests == []
    assert all(fake.store[i]["folder"] != "/resumed" for i in ids)


async def test_a_base_url_ending_in_v1_is_not_doubled(fake: FakeDatasetsServer) -> None:
    """`--base-url .../v1` (as in the API reference) reaches /v1/datasets/..., once."""
    dataset_id = fake.dataset_ids[0]
    for base in (fake.base_url + "/v1", fake.base_url + "/v1/"):
        result = await run_cli(fake, "--base-url", base, "patch", dataset_id, "--name", "v1")
        assert result.code == 0, result.err
    assert [r.raw_path for r in fake.requests] == [f"/v1/datasets/{dataset_id}"] * 2
    assert fake.store[dataset_id]["name"] == "v1"


async def test_connection_options_are_accepted_after_the_command_too(
    fake: FakeDatasetsServer, tmp_path: Path
) -> None:
    """`get ID --base-url URL` (where a newcomer puts it) works like `--base-url URL get ID`;
    given in both places, the one after the command wins; absent after it, the one before is
    kept. The same for --api-key-file and --timeout, for get, patch and bulk.
    """
    dataset_id = fake.dataset_ids[0]
    nowhere = {"NEBIUS_BASE_URL": "http://127.0.0.1:9"}
    result = await run_cli(fake, "get", dataset_id, "--base-url", fake.base_url, env=nowhere)
    assert result.code == 0, result.err
    assert dataset_id in result.out
    before_and_after = ("--base-url", "http://127.0.0.1:9", "patch", dataset_id, "--name", "a")
    result = await run_cli(fake, *before_and_after, "--base-url", fake.base_url, env=nowhere)
    assert result.code == 0, result.err
    assert fake.store[dataset_id]["name"] == "a"
    key_file = write(tmp_path / "key", fake.api_key)
    key_file.chmod(0o600)
    plan = write(tmp_path / "p.csv", f"{dataset_id},b,\n")
    result = await run_cli(
        fake, "--base-url", fake.base_url, "bulk", str(plan), "--no-progress",
        "--api-key-file", str(key_file), "--timeout", "5", key="",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert fake.store[dataset_id]["name"] == "b"


async def test_a_connection_error_names_the_server_as_given(fake: FakeDatasetsServer) -> None:
    """Nothing listening on an http:// URL: the message names scheme, host and port as the
    user gave them, and no `ssl:default`.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    base = f"http://localhost:{port}"
    result = await run_cli(fake, "--base-url", base, "--timeout", "2", "get", "some-id")
    assert result.code == 1
    assert f"cannot connect to http://localhost:{port}" in result.err
    assert "ssl" not in result.err
    assert "Traceback" not in result.err


def test_the_client_takes_a_base_url_ending_in_v1_as_the_root() -> None:
    """The library too: `.../v1` and `.../v1/` mean the API root; other paths are kept."""
    from nebius_datasets_async import DatasetsClient

    for given in ("https://api.example.com/v1", "https://api.example.com/v1/"):
        assert DatasetsClient(api_key="k", base_url=given).base_url == "https://api.example.com"
    proxied = DatasetsClient(api_key="k", base_url="https://proxy.example.com/nebius/v1")
    assert proxied.base_url == "https://proxy.example.com/nebius"
    kept = DatasetsClient(api_key="k", base_url="https://proxy.example.com/v1beta")
    assert kept.base_url == "https://proxy.example.com/v1beta"
