"""The ``nebius-datasets`` command line (also ``python -m nebius_datasets_async``).

Exit codes: 0 everything applied, 1 some update failed or was skipped, 2 usage or plan errors,
130 interrupted (Ctrl-C; the journal holds everything that finished).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from ._bulk import BulkProgress, BulkRun, OutcomeStatus, PatchOutcome
from ._client import API_KEY_ENV, DatasetsClient, __version__
from ._exceptions import DatasetsError, InvalidArgumentError
from ._models import Dataset, DatasetUpdate
from ._plan import PlanEntry, PlanError, PlanFormat, read_plan, sniff_format

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_MAX_LISTED = 20


class UsageError(Exception):
    """A mistake in the command line or the plan: exit code 2."""


# -- arguments --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nebius-datasets",
        description="Rename and move Nebius Token Factory datasets, one or thousands at a time.",
        epilog=f"The API key is read from ${API_KEY_ENV} or --api-key-file, never from the "
        "command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--base-url", help="API root (default: $NEBIUS_BASE_URL or the public API)")
    parser.add_argument("--api-key-file", type=Path, help="read the API key from this file")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = sub.add_parser("get", help="show one dataset")
    get.add_argument("dataset_id")
    get.add_argument("--output", choices=("table", "json"), default="table")

    patch = sub.add_parser("patch", help="rename and/or move one dataset")
    patch.add_argument("dataset_id")
    patch.add_argument("--name")
    patch.add_argument("--folder")
    patch.add_argument("--output", choices=("table", "json"), default="table")

    bulk = sub.add_parser(
        "bulk",
        help="apply a plan file of updates",
        description="Apply every update of PLAN (CSV dataset_id,name,folder or JSON Lines; "
        "'-' reads standard input). The plan is checked whole before anything is sent.",
    )
    bulk.add_argument("plan", help="plan file, or - for standard input")
    bulk.add_argument("--format", choices=("csv", "jsonl"), help="default: from the file")
    bulk.add_argument("--concurrency", type=_positive_int, default=32)
    bulk.add_argument("--dry-run", action="store_true", help="GET each dataset; send no PATCH")
    bulk.add_argument("--journal", type=Path, help="append one JSON line per finished update")
    bulk.add_argument(
        "--resume", type=Path, help="skip updates this journal records as applied (and append)"
    )
    bulk.add_argument("--skip-bad-lines", action="store_true", help="apply the valid lines")
    bulk.add_argument("--output", choices=("table", "json"), default="table")
    bulk.add_argument("--no-progress", action="store_true", help="no progress display")
    bulk.add_argument(
        "--redis",
        metavar="URL",
        help="share the rate, pauses and retry budget with every process of the same key "
        "through this Redis (needs the redis extra)",
    )
    bulk.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="apply only the lines whose dataset id hashes to shard K of N (a stable hash: "
        "hand the same plan to N machines)",
    )

    demo = sub.add_parser(
        "demo",
        help="bulk-update datasets on an embedded fake API (no key, no network)",
        description="Start the embedded fake Datasets API with latency, a rate limit and a "
        "few faults; rename and move every dataset; check the result against the fake.",
    )
    demo.add_argument("--datasets", type=_positive_int, default=2000)
    demo.add_argument("--concurrency", type=_positive_int, default=64)
    demo.add_argument("--rate-limit", type=float, default=500.0, help="requests/s the fake admits")
    demo.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    demo.add_argument("--seed", type=int, default=2026)
    demo.add_argument("--no-progress", action="store_true", help="no progress display")

    sub.add_parser(
        "fake-server",
        help="serve the fake Datasets API on 127.0.0.1 until Ctrl-C",
        add_help=False,
        description="See `nebius-datasets fake-server --help`.",
    )
    return parser


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run ``main`` on uvloop when it is installed (the ``speed`` extra), else asyncio's loop.
    Only the command line chooses a loop; the library runs on whatever loop its user runs.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _shard(text: str) -> tuple[int, int]:
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = (0, 0)
    if not sep or not 1 <= shard[0] <= shard[1]:
        raise argparse.ArgumentTypeError("expected K/N with 1 <= K <= N, e.g. 2/4")
    return shard


def shard_of(dataset_id: str, shards: int) -> int:
    """The shard (1 to ``shards``) a dataset id belongs to: a stable hash, the same on every
    machine and Python version.
    """
    digest = hashlib.blake2b(dataset_id.encode("utf-8", "surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "big") % shards + 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fake-server"]:
        from .testing import main as fake_server

        return fake_server(argv[1:])
    args = _parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], Any]] = {
        "get": _get,
        "patch": _patch,
        "bulk": _bulk,
        "demo": _demo,
    }
    try:
        return int(run(commands[args.command](args)))
    except UsageError as exc:
        print(f"nebius-datasets: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("nebius-datasets: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# -- single calls -----------------------------------------------------------------------------


def _read_key(args: argparse.Namespace) -> str:
    if args.api_key_file is not None:
        try:
            key: str = args.api_key_file.read_text(encoding="utf-8").strip()
            mode = args.api_key_file.stat().st_mode
        except OSError as exc:
            raise UsageError(f"cannot read --api-key-file: {exc.strerror}") from None
        if mode & 0o077:
            print(
                f"nebius-datasets: warning: {args.api_key_file} is readable by others "
                f"(mode {mode & 0o777:03o}); chmod 600 it",
                file=sys.stderr,
            )
        if not key:
            raise UsageError("--api-key-file is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise UsageError(f"no API key: set {API_KEY_ENV} or pass --api-key-file")
    return key


def _client(args: argparse.Namespace, **kwargs: Any) -> DatasetsClient:
    try:
        return DatasetsClient(
            api_key=_read_key(args), base_url=args.base_url, timeout=args.timeout, **kwargs
        )
    except InvalidArgumentError as exc:
        raise UsageError(str(exc)) from None


def _dataset_json(ds: Dataset) -> dict[str, Any]:
    return {
        "id": ds.id,
        "name": ds.name,
        "status": ds.raw_status,
        "folder": ds.folder,
        "current_version": ds.current_version,
        "created_at": ds.created_at,
        "error": ds.error,
        "type": ds.type,
        "ai_project_id": ds.ai_project_id,
        "columns": [c.name for c in ds.schema],
    }


def _print_dataset(ds: Dataset, output: str) -> None:
    data = _dataset_json(ds)
    if output == "json":
        print(json.dumps(data, ensure_ascii=False))
        return
    data["created_at"] = ds.created.strftime("%Y-%m-%dT%H:%M:%SZ")
    width = max(len(k) for k in data)
    for key, value in data.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key:<{width}}  {shown if shown is not None else '-'}")


async def _get(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        try:
            ds = await client.get_dataset(args.dataset_id)
        except InvalidArgumentError as exc:
            raise UsageError(str(exc)) from None
        except DatasetsError as exc:
            print(f"nebius-datasets: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    _print_dataset(ds, args.output)
    return EXIT_OK


async def _patch(args: argparse.Namespace) -> int:
    try:
        update = DatasetUpdate(args.dataset_id, name=args.name, folder=args.folder)
    except InvalidArgumentError as exc:
        raise UsageError(str(exc)) from None
    async with _client(args) as client:
        try:
            ds = await client.apply(update)
        except DatasetsError as exc:
            print(f"nebius-datasets: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    _print_dataset(ds, args.output)
    return EXIT_OK


# -- bulk -------------------------------------------------------------------------------------


def _private_file(path: Path) -> IO[str]:
    """Open ``path`` for appending, created (or tightened) to owner-only permissions."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


class Journal:
    """One JSON line per finished update, flushed as written: a crash loses nothing done."""

    def __init__(self, path: Path) -> None:
        self._file = _private_file(path)

    def write(self, outcome: PatchOutcome) -> None:
        self._file.write(json.dumps(_outcome_json(outcome), ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _outcome_json(outcome: PatchOutcome) -> dict[str, Any]:
    update = outcome.update
    data: dict[str, Any] = {
        "dataset_id": update.dataset_id,
        "name": update.name,
        "folder": update.folder,
        "status": outcome.status.value,
        "attempts": outcome.attempts,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if outcome.error is not None:
        data["error"] = f"{type(outcome.error).__name__}: {outcome.error}"
    return data


def _applied_in_journal(path: Path) -> set[tuple[str, str | None, str | None]]:
    """The updates a journal records as applied (a torn last line is ignored)."""
    done: set[tuple[str, str | None, str | None]] = set()
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        return done
    except OSError as exc:
        raise UsageError(f"cannot read --resume journal: {exc.strerror}") from None
    with f:
        for text in f:
            try:
                entry = json.loads(text)
            except ValueError:
                continue  # a line cut short by a crash: that update is not known to be done
            if isinstance(entry, dict) and entry.get("status") == "applied":
                dataset_id, name, folder = (entry.get(k) for k in ("dataset_id", "name", "folder"))
                if isinstance(dataset_id, str):
                    done.add((dataset_id, name, folder))
    return done


def _spool_stdin() -> Path:
    """Copy standard input to a private temporary file, so the plan can be checked first."""
    fd, name = tempfile.mkstemp(prefix="nebius-plan-", suffix=".txt")
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(sys.stdin.buffer, out, 1024 * 1024)
    return Path(name)


def _check_plan(
    path: Path, fmt: PlanFormat, skip_bad: bool, shard: tuple[int, int] | None = None
) -> int:
    """Read the whole plan once; return how many valid entries it holds (in ``shard``, if
    given), or raise UsageError listing the bad lines (unless ``skip_bad``).
    """
    errors: list[PlanError] = []
    try:
        count = sum(1 for e in read_plan(path, fmt, errors=errors) if _in_shard(e, shard))
    except OSError as exc:
        raise UsageError(f"cannot read the plan: {exc.strerror or exc}") from None
    if errors:
        listed = "\n".join(f"  {e}" for e in errors[:_MAX_LISTED])
        more = f"\n  ... and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
        if not skip_bad:
            raise UsageError(
                f"the plan has {len(errors)} bad line(s); nothing was sent:\n{listed}{more}\n"
                "(--skip-bad-lines applies the valid lines anyway)"
            )
        print(f"skipping {len(errors)} bad line(s):\n{listed}{more}", file=sys.stderr)
    if count == 0 and shard is None:
        raise UsageError("the plan holds no updates")
    return count


def _in_shard(entry: PlanEntry, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of(entry.update.dataset_id, shard[1]) == shard[0]


class _Display(Protocol):
    def update(self, progress: BulkProgress) -> None: ...
    def close(self) -> None: ...


class _PlainDisplay:
    """A line on stderr every few seconds, for logs and pipes."""

    def __init__(self, total: int, interval: float = 2.0) -> None:
        self._total = total
        self._interval = interval
        self._last = 0.0

    def update(self, p: BulkProgress) -> None:
        now = time.monotonic()
        if now - self._last < self._interval and not p.finished:
            return
        self._last = now
        rate = p.throughput
        eta = (self._total - p.done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        print(
            f"progress: {p.done}/{self._total} done, {p.failed} failed, {p.in_flight} in flight, "
            f"{rate:.0f}/s, ETA {eta_text}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        pass


class _RichDisplay:
    """A live progress bar (rich) on a terminal."""

    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]datasets"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task("bulk", total=total, detail="")
        self._progress.start()

    def update(self, p: BulkProgress) -> None:
        detail = f"failed {p.failed} · in flight {p.in_flight} · {p.throughput:.0f}/s"
        if p.paused:
            detail += " · paused by the server"
        self._progress.update(self._task, completed=p.done, detail=detail)

    def close(self) -> None:
        self._progress.stop()


def _display(total: int, disabled: bool) -> _Display | None:
    if disabled:
        return None
    if sys.stderr.isatty():
        try:
            return _RichDisplay(total)
        except ImportError:
            pass
    return _PlainDisplay(total)


@contextlib.contextmanager
def _interrupts(run: BulkRun) -> Iterator[list[bool]]:
    """First Ctrl-C stops the run gracefully; a second one cancels it at once."""
    loop = asyncio.get_running_loop()
    interrupted: list[bool] = []
    main_task = asyncio.current_task()

    def on_sigint() -> None:
        if interrupted:
            if main_task is not None:
                main_task.cancel()
            return
        interrupted.append(True)
        print(
            "\ninterrupted: finishing requests in flight (Ctrl-C again to abandon them)",
            file=sys.stderr,
        )
        run.stop("interrupted")

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        installed = True
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
        installed = False
    try:
        yield interrupted
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


async def _bulk(args: argparse.Namespace) -> int:
    spooled = args.plan == "-"
    path = _spool_stdin() if spooled else Path(args.plan)
    try:
        if not spooled and not path.is_file():
            raise UsageError(f"no plan file at {path}")
        fmt: PlanFormat = args.format or sniff_format(path)
        total = _check_plan(path, fmt, args.skip_bad_lines, args.shard)
        if args.shard is not None:
            k, n = args.shard
            print(f"shard {k}/{n}: {total} update(s) of this plan", file=sys.stderr)
        journal_path = args.journal or args.resume
        done = _applied_in_journal(args.resume) if args.resume else set()
        client = _client(args, **_flow_options(args))
        async with client, contextlib.AsyncExitStack() as stack:
            flow = client.flow
            if hasattr(flow, "aclose"):
                stack.push_async_callback(flow.aclose)
            if args.dry_run:
                return await _dry_run(client, path, fmt, args, done)
            journal = Journal(journal_path) if journal_path else None
            try:
                return await _apply_plan(client, path, fmt, args, total, done, journal)
            finally:
                if journal is not None:
                    journal.close()
    finally:
        if spooled:
            path.unlink(missing_ok=True)


def _flow_options(args: argparse.Namespace) -> dict[str, Any]:
    """The client's concurrency, and a flow shared through Redis with --redis."""
    if args.redis is None:
        return {"max_concurrency": args.concurrency}
    try:
        from .redis import RedisFlowControl
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    try:
        return {"flow": RedisFlowControl(args.redis, max_concurrency=args.concurrency)}
    except (ValueError, InvalidArgumentError) as exc:
        raise UsageError(f"--redis: {exc}") from None


def _entries(path: Path, fmt: PlanFormat, args: argparse.Namespace) -> Iterator[PlanEntry]:
    errors: list[PlanError] | None = [] if args.skip_bad_lines else None
    shard = args.shard
    return (e for e in read_plan(path, fmt, errors=errors) if _in_shard(e, shard))


async def _apply_plan(
    client: DatasetsClient,
    path: Path,
    fmt: PlanFormat,
    args: argparse.Namespace,
    total: int,
    done: set[tuple[str, str | None, str | None]],
    journal: Journal | None,
) -> int:
    resumed = 0

    def pending() -> Iterator[DatasetUpdate]:
        nonlocal resumed
        for entry in _entries(path, fmt, args):
            u = entry.update
            if (u.dataset_id, u.name, u.folder) in done:
                resumed += 1
                continue
            yield u

    display = _display(total, args.no_progress)
    failures: list[PatchOutcome] = []
    run = client.patch_many(
        pending(), concurrency=args.concurrency, progress=display.update if display else None
    )
    try:
        with _interrupts(run) as interrupted:
            async with run:
                async for outcome in run:
                    if outcome.status is not OutcomeStatus.SKIPPED and journal is not None:
                        journal.write(outcome)
                    if args.output == "json":
                        print(json.dumps(_outcome_json(outcome), ensure_ascii=False), flush=True)
                    if not outcome.ok and len(failures) < _MAX_LISTED:
                        failures.append(outcome)
    finally:
        if display is not None:
            display.close()
    report = run.report()
    summary = {
        "applied": report.succeeded,
        "failed": report.failed,
        "skipped": report.skipped,
        "already_applied": resumed,
        "total": total,
        "requests": report.requests,
        "retries": report.retries,
        "throttled": report.throttled,
        "final_rate": None if report.final_rate is None else round(report.final_rate, 1),
        "seconds": round(report.elapsed, 3),
        "interrupted": bool(interrupted),
    }
    pace = "unpaced" if report.final_rate is None else f"paced at {report.final_rate:.0f}/s"
    if args.output == "json":
        print(json.dumps({"summary": summary}))
    else:
        for outcome in failures:
            error = outcome.error
            kind = type(error).__name__
            print(f"{outcome.status.value:<8} {outcome.update.dataset_id}  {kind}: {error}")
        print(
            f"{report.succeeded} applied, {report.failed} failed, {report.skipped} left undone, "
            f"{resumed} already applied (of {total}); {report.requests} requests, "
            f"{report.retries} retries, {report.throttled} answered 429, {pace}, "
            f"{report.elapsed:.1f}s"
        )
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_FAILED


async def _dry_run(
    client: DatasetsClient,
    path: Path,
    fmt: PlanFormat,
    args: argparse.Namespace,
    done: set[tuple[str, str | None, str | None]],
) -> int:
    """GET every dataset of the plan and say what would change; send no PATCH."""
    failed = 0

    async def describe(update: DatasetUpdate) -> str:
        nonlocal failed
        try:
            ds = await client.get_dataset(update.dataset_id)
        except DatasetsError as exc:
            failed += 1
            return f"{update.dataset_id}: cannot check ({type(exc).__name__}: {exc})"
        changes = []
        if update.name is not None and update.name != ds.name:
            changes.append(f"name {ds.name!r} -> {update.name!r}")
        if update.folder is not None and update.folder != ds.folder:
            changes.append(f"folder {ds.folder!r} -> {update.folder!r}")
        return f"{update.dataset_id}: {', '.join(changes) if changes else 'unchanged'}"

    async for line in _bounded_map(
        describe,
        (
            e.update
            for e in _entries(path, fmt, args)
            if (e.update.dataset_id, e.update.name, e.update.folder) not in done
        ),
        args.concurrency,
    ):
        print(line)
    print(f"dry run: nothing was sent; {failed} dataset(s) could not be checked", file=sys.stderr)
    return EXIT_OK if failed == 0 else EXIT_FAILED


async def _bounded_map(
    fn: Callable[[DatasetUpdate], Any], items: Iterator[DatasetUpdate], limit: int
) -> AsyncIterator[str]:
    """Run ``fn`` over ``items`` with at most ``limit`` at once, yielding results in order."""
    window: list[asyncio.Task[str]] = []
    try:
        for item in items:
            window.append(asyncio.ensure_future(fn(item)))
            if len(window) >= limit:
                yield await window.pop(0)
        while window:
            yield await window.pop(0)
    finally:
        for task in window:
            task.cancel()
        await asyncio.gather(*window, return_exceptions=True)


# -- demo -------------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    from .testing import FakeDatasetsServer, Faults

    faults = Faults(
        latency=args.latency,
        rate_limit=args.rate_limit,
        burst=50,
        rate_limit_retry_after=1.0,
        rate_500=0.003,
        rate_500_after_apply=0.002,
        rate_reset=0.002,
        seed=args.seed,
    )
    print(
        f"demo: a fake Datasets API on 127.0.0.1 with {args.datasets} datasets, "
        f"{args.latency * 1000:.0f} ms latency, {args.rate_limit:.0f} requests/s allowed "
        "(burst 50, Retry-After: 1) and a few 500s and resets",
        file=sys.stderr,
    )
    async with FakeDatasetsServer(
        datasets=args.datasets, faults=faults, record_requests=False
    ) as fake:
        targets = {
            i: DatasetUpdate(i, name=f"{rec['name']}-archived", folder="/archive/2026")
            for i, rec in fake.store.items()
        }
        display = _display(len(targets), args.no_progress)
        applied: dict[str, Dataset] = {}
        failed: list[PatchOutcome] = []
        async with fake.client(max_concurrency=args.concurrency) as client:
            run = client.patch_many(targets.values(), progress=display.update if display else None)
            try:
                with _interrupts(run) as interrupted:
                    async with run:
                        async for outcome in run:
                            if outcome.ok and outcome.dataset is not None:
                                applied[outcome.update.dataset_id] = outcome.dataset
                            else:
                                failed.append(outcome)
            finally:
                if display is not None:
                    display.close()
        report = run.report()
        mismatches = [
            i
            for i, ds in applied.items()
            if (ds.name, ds.folder) != (fake.store[i]["name"], fake.store[i]["folder"])
            or (ds.name, ds.folder) != (targets[i].name, targets[i].folder)
        ]
        stats = fake.stats
    throughput = len(applied) / report.elapsed if report.elapsed else 0.0
    print(
        f"applied {len(applied)}, failed {len(failed)} of {len(targets)} in {report.elapsed:.2f}s "
        f"({throughput:.0f} updates/s); {report.requests} requests, {report.retries} retries, "
        f"{stats.statuses[429]} answered 429, {stats.statuses[500]} answered 500, "
        f"{stats.resets} connections reset"
    )
    for outcome in failed[:_MAX_LISTED]:
        print(f"  failed {outcome.update.dataset_id}: {outcome.error}")
    if mismatches:
        print(f"verification FAILED: {len(mismatches)} datasets differ from the server's record")
        return EXIT_FAILED
    print(f"verified: every applied update matches the server's final record ({len(applied)})")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if not failed else EXIT_FAILED
