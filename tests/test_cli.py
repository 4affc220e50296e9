"""The real `python -m nebius_datasets_async` entry point against the fake over a socket."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path

import attrs
import pytest

from nebius_datasets_async.testing import FakeDatasetsServer, make_dataset


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
