"""The ``nebius-datasets`` command line (also ``python -m nebius_datasets_async``).

Exit codes: 0 everything applied, 1 some update failed or was skipped, 2 usage or plan errors,
130 interrupted (Ctrl-C; the journal holds everything that finished).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
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

import attrs

from ._bulk import BulkProgress, BulkRun, OutcomeStatus, PatchOutcome, ProgressCallback
from ._call import CallContext
from ._client import API_KEY_ENV, DatasetsClient, __version__
from ._exceptions import DatasetsError, InvalidArgumentError
from ._flow import Flow
from ._models import Dataset, DatasetUpdate
from ._plan import PlanEntry, PlanError, PlanFormat, read_plan, sniff_format
from ._retry import RetryPolicy

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
_MAX_LISTED = 20


class UsageError(Exception):
    """A mistake in the command line or the plan: exit code 2."""


# -- arguments --------------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """--base-url, --api-key-file and --timeout; with ``suppress`` they set nothing when absent."""
    none: Any = argparse.SUPPRESS if suppress else None
    timeout: Any = argparse.SUPPRESS if suppress else 30.0
    help_url = "API root (default: $NEBIUS_BASE_URL or the public API)"
    parser.add_argument("--base-url", default=none, help=help_url)
    parser.add_argument(
        "--api-key-file", type=Path, default=none, help="read the API key from this file"
    )
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds per attempt")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nebius-datasets",
        description="Rename and move Nebius Token Factory datasets, one or thousands at a time.",
        epilog=f"The API key is read from ${API_KEY_ENV} or --api-key-file, never from the "
        "command line.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_connection_options(parser)
    # The same options are accepted after the command too (`get ID --base-url URL`); there
    # they default to nothing, so an option given before the command is kept.
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    get = sub.add_parser("get", help="show one dataset", parents=[common])
    get.add_argument("dataset_id")
    get.add_argument("--output", choices=("table", "json"), default="table")

    patch = sub.add_parser("patch", help="rename and/or move one dataset", parents=[common])
    patch.add_argument("dataset_id")
    patch.add_argument("--name")
    patch.add_argument("--folder")
    patch.add_argument("--output", choices=("table", "json"), default="table")

    bulk = sub.add_parser(
        "bulk",
        parents=[common],
        help="apply a plan file of updates",
        description="Apply every update of PLAN: CSV with a header naming dataset_id (or id), "
        "name and/or folder in any order (without a header: dataset_id,name,folder), or JSON "
        "Lines; '-' reads standard input. The plan is checked whole before anything is sent.",
    )
    bulk.add_argument("plan", help="plan file, or - for standard input")
    bulk.add_argument("--format", choices=("csv", "jsonl"), help="default: from the file")
    bulk.add_argument("--concurrency", type=_positive_int, default=32)
    bulk.add_argument(
        "--dry-run",
        action="store_true",
        help="read each dataset and print what would change; send no PATCH",
    )
    bulk.add_argument("--journal", type=Path, help="append one JSON line per finished update")
    bulk.add_argument(
        "--resume",
        type=Path,
        help="skip updates this journal records as applied, and append to it (it must exist, "
        "unless --journal names the same file)",
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
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop
    except ImportError:
        pass  # nothing is run inside this block, so no later error chains to the ImportError
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
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


def _key_file(args: argparse.Namespace) -> str | None:
    """The key from ``--api-key-file``, if given. Otherwise the client reads
    ``$NEBIUS_API_KEY`` itself: the environment is read in one place, the library.
    """
    path: Path | None = args.api_key_file
    if path is None:
        return None
    try:
        key = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except OSError as exc:
        raise UsageError(f"cannot read --api-key-file: {exc.strerror}") from None
    if mode & 0o077:
        print(
            f"nebius-datasets: warning: {path} is readable by others "
            f"(mode {mode & 0o777:03o}); chmod 600 it",
            file=sys.stderr,
        )
    if not key:
        raise UsageError("--api-key-file is empty")
    return key


def _client(args: argparse.Namespace, **kwargs: Any) -> DatasetsClient:
    try:
        return DatasetsClient(
            api_key=_key_file(args), base_url=args.base_url, timeout=args.timeout, **kwargs
        )
    except InvalidArgumentError as exc:
        if str(exc).startswith("no API key"):
            raise UsageError(f"no API key: set {API_KEY_ENV} or pass --api-key-file") from None
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


_Key = tuple[str, str | None, str | None]


def _key(update: DatasetUpdate) -> _Key:
    return (update.dataset_id, update.name, update.folder)


def _applied_in_journal(path: Path) -> set[_Key]:
    """The updates a journal records as applied (a torn last line is ignored)."""
    done: set[_Key] = set()
    try:
        f = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"--resume: no journal at {path}; to start a new one there, pass "
            f"--journal {path} as well (or drop --resume)"
        ) from None
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
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1024 * 1024)
    except BaseException:  # Ctrl-C too: leave no copy of the plan behind
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _listed(lines: list[str], total: int) -> str:
    """The first lines of a list, and how many more there are."""
    shown = "\n".join(f"  {line}" for line in lines[:_MAX_LISTED])
    if total > _MAX_LISTED:
        shown += f"\n  ... and {total - _MAX_LISTED} more"
    return shown


def _check_plan(
    path: Path,
    fmt: PlanFormat,
    skip_bad: bool,
    shard: tuple[int, int] | None,
    done: set[_Key],
) -> tuple[int, int]:
    """Read the whole plan once; return how many valid entries it holds (in ``shard``, if
    given) and how many of them ``done`` holds, or raise UsageError listing the bad lines
    (unless ``skip_bad``).
    """
    errors: list[PlanError] = []
    count = already = 0
    try:
        for entry in read_plan(path, fmt, errors=errors):
            if _in_shard(entry, shard):
                count += 1
                already += _key(entry.update) in done
    except PlanError as exc:  # a header that cannot be read safely: no line is usable
        raise UsageError(f"the plan cannot be read; nothing was sent:\n  {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot read the plan: {exc.strerror or exc}") from None
    if errors:
        listed = _listed([str(e) for e in errors], len(errors))
        if not skip_bad:
            raise UsageError(
                f"the plan has {len(errors)} bad line(s); nothing was sent:\n{listed}\n"
                "(--skip-bad-lines applies the valid lines anyway)"
            )
        print(f"skipping {len(errors)} bad line(s):\n{listed}", file=sys.stderr)
    if count == 0 and shard is None:
        raise UsageError("the plan holds no updates")
    return count, already


def _in_shard(entry: PlanEntry, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of(entry.update.dataset_id, shard[1]) == shard[0]


class _Tally:
    """Where every update of a plan stands, for the progress line and the summary: done
    (applied, or checked by a dry run), failed, skipped (the run stopped first), not started,
    or done by an earlier run (``--resume``). Also measures the pace the gate held.
    """

    def __init__(self, total: int, already: int = 0, *, verb: str = "applied") -> None:
        self.total = total
        self.already = already
        self.verb = verb
        self.last: BulkProgress | None = None
        self._paced_from: BulkProgress | None = None

    def seen(self, progress: BulkProgress) -> None:
        """Record a snapshot of the run."""
        self.last = progress
        if self._paced_from is None and progress.rate_limit is not None:
            self._paced_from = progress

    def not_started(self, p: BulkProgress) -> int:
        """Updates of the plan with no outcome that are not in flight either (after a second
        Ctrl-C, those abandoned in flight too).
        """
        return max(0, self.total - self.already - p.done - p.in_flight)

    def counts(self, p: BulkProgress) -> str:
        done = self.already + p.succeeded
        earlier = f" ({self.already} applied earlier)" if self.already else ""
        return (
            f"{done}/{self.total} {self.verb}{earlier}, {p.failed} failed, {p.skipped} skipped, "
            f"{self.not_started(p)} not started"
        )

    def pace(self, final: BulkProgress) -> float | None:
        """Requests per second the run sent while the gate paced it, or ``None`` when the
        gate did not pace it long enough (half a second and ten requests) to say.
        """
        start = self._paced_from
        if start is None:
            return None
        seconds = final.elapsed - start.elapsed
        sent = final.requests - start.requests
        if seconds < 0.5 or sent < 10:
            return None
        return sent / seconds


class _Display(Protocol):
    def update(self, progress: BulkProgress) -> None: ...
    def close(self) -> None: ...


class _PlainDisplay:
    """A line on stderr every few seconds, for logs and pipes."""

    def __init__(self, tally: _Tally, interval: float = 2.0) -> None:
        self._tally = tally
        self._interval = interval
        self._last = 0.0

    def update(self, p: BulkProgress) -> None:
        now = time.monotonic()
        if now - self._last < self._interval and not p.finished:
            return
        self._last = now
        rate = p.throughput
        left = self._tally.total - self._tally.already - p.done
        eta = "" if p.finished else f", ETA {left / rate:.0f}s" if rate > 0 else ", ETA ?"
        print(
            f"progress: {self._tally.counts(p)}, {p.in_flight} in flight, {rate:.0f}/s{eta}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        pass


class _RichDisplay:
    """A live progress bar (rich) on a terminal."""

    def __init__(self, tally: _Tally) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._tally = tally
        self._progress = Progress(
            TextColumn(f"[bold]{tally.verb}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._progress.add_task(
            "bulk", total=tally.total, completed=tally.already, detail=""
        )
        self._progress.start()

    def update(self, p: BulkProgress) -> None:
        tally = self._tally
        detail = (
            f"failed {p.failed} · skipped {p.skipped} · not started {tally.not_started(p)} · "
            f"in flight {p.in_flight} · {p.throughput:.0f}/s"
        )
        if p.paused:
            detail += " · paused by the server"
        self._progress.update(self._task, completed=tally.already + p.succeeded, detail=detail)

    def close(self) -> None:
        self._progress.stop()


def _display(tally: _Tally, disabled: bool) -> _Display | None:
    if disabled:
        return None
    if sys.stderr.isatty():
        try:
            return _RichDisplay(tally)
        except ImportError:
            pass
    return _PlainDisplay(tally)


def _watch(tally: _Tally, display: _Display | None) -> ProgressCallback:
    """The run's progress callback: the tally always sees it, the display when there is one."""

    def seen(progress: BulkProgress) -> None:
        tally.seen(progress)
        if display is not None:
            display.update(progress)

    return seen


@attrs.define
class _CtrlC:
    """How many times Ctrl-C was pressed during a run: once stops it gracefully, twice
    abandons the requests in flight.
    """

    presses: int = 0

    @property
    def abandoned(self) -> bool:
        return self.presses > 1


@contextlib.contextmanager
def _interrupts(run: BulkRun) -> Iterator[_CtrlC]:
    """First Ctrl-C stops the run gracefully; a second one cancels the command's task, which
    catches that cancellation (``_abandon``) to print its summary and exit 130.
    """
    loop = asyncio.get_running_loop()
    ctrl_c = _CtrlC()
    main_task = asyncio.current_task()

    def on_sigint() -> None:
        ctrl_c.presses += 1
        if ctrl_c.presses > 1:
            if ctrl_c.presses == 2 and main_task is not None:
                print("\ninterrupted again: abandoning the requests in flight", file=sys.stderr)
                main_task.cancel()
            return
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
        yield ctrl_c
    finally:
        if installed:
            # A press that comes once the run is over (the second of a quick pair, while the
            # summary is printed and connections close) is counted, never raised as a
            # KeyboardInterrupt that would lose the summary. The loop removes this handler
            # when it closes.
            loop.add_signal_handler(signal.SIGINT, _count_press, ctrl_c)


def _count_press(ctrl_c: _CtrlC) -> None:
    ctrl_c.presses += 1


@contextlib.asynccontextmanager
async def _abandon(ctrl_c: _CtrlC) -> AsyncIterator[None]:
    """Swallow the cancellation a second Ctrl-C caused (and only that one)."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if not ctrl_c.abandoned or task is None or task.uncancel() > 0:
            raise


class _Check:
    """The per-update operation of a dry run: read the dataset (a GET through the client's
    gate and retry loop, with the run's counters and stop signal) instead of changing it.
    Handed to ``BulkRun`` in place of the client, so a dry run is the same engine as a real run.
    """

    def __init__(self, client: DatasetsClient) -> None:
        self._client = client

    @property
    def retry(self) -> RetryPolicy:
        return self._client.retry

    @property
    def flow(self) -> Flow:
        return self._client.flow

    async def apply(self, update: DatasetUpdate, *, context: CallContext | None = None) -> Dataset:
        return await self._client.get_dataset(update.dataset_id, context=context)


def _changes(update: DatasetUpdate, ds: Dataset) -> dict[str, list[str]]:
    """What ``update`` would change on ``ds``: field -> [now, then]."""
    changes: dict[str, list[str]] = {}
    if update.name is not None and update.name != ds.name:
        changes["name"] = [ds.name, update.name]
    if update.folder is not None and update.folder != ds.folder:
        changes["folder"] = [ds.folder, update.folder]
    return changes


def _error_text(outcome: PatchOutcome) -> str:
    return f"{type(outcome.error).__name__}: {outcome.error}"


def _ctrl_c_raises() -> None:
    """Until the run installs its own handler (``_interrupts``), Ctrl-C raises
    ``KeyboardInterrupt`` where it lands. Otherwise ``asyncio.Runner`` would only mark the main
    task cancelled during the (synchronous) plan check, the cancellation would land in the
    run's first ``await`` after requests were sent, and the run's handler would see the same
    press again: one Ctrl-C taken for two, no summary.
    """
    with contextlib.suppress(ValueError):  # not the main thread: nothing to change
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupted_before_sending() -> int:
    print("nebius-datasets: interrupted while reading the plan; nothing was sent", file=sys.stderr)
    return EXIT_INTERRUPTED


async def _bulk(args: argparse.Namespace) -> int:
    _ctrl_c_raises()
    spooled = args.plan == "-"
    try:
        path = _spool_stdin() if spooled else Path(args.plan)
    except KeyboardInterrupt:
        return _interrupted_before_sending()
    try:
        try:
            if not spooled and not path.is_file():
                raise UsageError(f"no plan file at {path}")
            fmt: PlanFormat = args.format or sniff_format(path)
            done = set() if args.resume is None else _resumable(args)
            total, already = _check_plan(path, fmt, args.skip_bad_lines, args.shard, done)
        except KeyboardInterrupt:
            return _interrupted_before_sending()
        if args.shard is not None:
            k, n = args.shard
            print(f"shard {k}/{n}: {total} update(s) of this plan", file=sys.stderr)
        journal_path = None if args.dry_run else args.journal or args.resume
        client = _client(args, **_flow_options(args))
        async with client, contextlib.AsyncExitStack() as stack:
            flow = client.flow
            if hasattr(flow, "aclose"):
                stack.push_async_callback(flow.aclose)
            journal = Journal(journal_path) if journal_path else None
            if journal is not None:
                stack.callback(journal.close)
            tally = _Tally(total, already, verb="checked" if args.dry_run else "applied")
            return await _run_plan(client, path, fmt, args, tally, done, journal)
    finally:
        if spooled:
            path.unlink(missing_ok=True)


def _resumable(args: argparse.Namespace) -> set[_Key]:
    """What ``--resume`` says was applied; a missing journal is fine only when ``--journal``
    names the same file (which starts it). A ``--journal`` elsewhere does not excuse a
    mistyped ``--resume``: that would send the whole plan again.
    """
    resume: Path = args.resume
    journal: Path | None = args.journal
    if journal is not None and not resume.exists() and journal.absolute() == resume.absolute():
        return set()
    return _applied_in_journal(resume)


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


async def _run_plan(
    client: DatasetsClient,
    path: Path,
    fmt: PlanFormat,
    args: argparse.Namespace,
    tally: _Tally,
    done: set[_Key],
    journal: Journal | None,
) -> int:
    """Apply (or, with --dry-run, check) every pending update of the plan through one
    ``BulkRun``: the same engine, gate, progress and output for both.
    """
    dry_run: bool = args.dry_run
    as_json = args.output == "json"
    pending = (e.update for e in _entries(path, fmt, args) if _key(e.update) not in done)
    display = _display(tally, args.no_progress)
    failed: list[str] = []
    skipped: collections.Counter[str] = collections.Counter()
    run = BulkRun(
        _Check(client) if dry_run else client,
        pending,
        concurrency=args.concurrency,
        progress=_watch(tally, display),
    )
    try:
        with _interrupts(run) as ctrl_c:
            async with _abandon(ctrl_c), run:
                async for outcome in run:
                    if journal is not None and outcome.status is not OutcomeStatus.SKIPPED:
                        journal.write(outcome)
                    if outcome.status is OutcomeStatus.SKIPPED:
                        skipped[str(outcome.error)] += 1
                    elif outcome.status is OutcomeStatus.FAILED and len(failed) < _MAX_LISTED:
                        failed.append(f"{outcome.update.dataset_id}  {_error_text(outcome)}")
                    if dry_run:
                        _print_check(outcome, as_json)
                    elif as_json:
                        print(json.dumps(_outcome_json(outcome), ensure_ascii=False), flush=True)
        final = run.progress()
        if display is not None and not final.finished:  # abandoned: the run never finished
            display.update(attrs.evolve(final, finished=True))
        tally.seen(final)
    finally:
        if display is not None:
            display.close()
    _print_summary(tally, final, args, failed, skipped, ctrl_c)
    if ctrl_c.presses:
        return EXIT_INTERRUPTED
    return EXIT_OK if final.failed == 0 and final.skipped == 0 else EXIT_FAILED


def _print_check(outcome: PatchOutcome, as_json: bool) -> None:
    """One line of a dry run: what the update would change, or why it cannot be checked."""
    update, ds = outcome.update, outcome.dataset
    if as_json:
        data: dict[str, Any] = {"dataset_id": update.dataset_id, "status": "checked"}
        if ds is not None:
            data["changes"] = _changes(update, ds)
        else:
            data["status"] = outcome.status.value
            data["error"] = _error_text(outcome)
        print(json.dumps(data, ensure_ascii=False), flush=True)
    elif ds is not None:
        changes = _changes(update, ds)
        text = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()) or "unchanged"
        print(f"{update.dataset_id}: {text}", flush=True)
    elif outcome.status is OutcomeStatus.FAILED:
        print(f"{update.dataset_id}: cannot check ({_error_text(outcome)})", flush=True)


def _print_summary(
    tally: _Tally,
    final: BulkProgress,
    args: argparse.Namespace,
    failed: list[str],
    skipped: collections.Counter[str],
    ctrl_c: _CtrlC,
) -> None:
    pace = tally.pace(final)
    verb = tally.verb
    if args.dry_run:
        print(f"dry run: no PATCH was sent ({final.requests} GET requests)", file=sys.stderr)
    not_started = tally.not_started(final)
    if args.output == "json":
        summary = {
            verb: final.succeeded,
            "failed": final.failed,
            "skipped": final.skipped,
            "not_started": not_started,
            "already_applied": tally.already,
            "total": tally.total,
            "requests": final.requests,
            "retries": final.retries,
            "throttled": final.throttled,
            "paced_at": None if pace is None else round(pace, 1),
            "seconds": round(final.elapsed, 3),
            "interrupted": bool(ctrl_c.presses),
            "dry_run": bool(args.dry_run),
        }
        print(json.dumps({"summary": summary}), flush=True)
        return
    if not ctrl_c.abandoned and not args.dry_run:
        if failed:
            print(f"failed ({final.failed}):\n{_listed(failed, final.failed)}")
        for reason, count in skipped.most_common():
            print(f"skipped ({count}): {reason}")
    paced = "" if pace is None else f", paced at {pace:.0f}/s"
    print(
        f"{final.succeeded} {verb}, {final.failed} failed, {final.skipped} skipped, "
        f"{not_started} not started, {tally.already} already applied "
        f"(of {tally.total}); {final.requests} requests, {final.retries} retries, "
        f"{final.throttled} answered 429{paced}, {final.elapsed:.1f}s",
        # a dry run's standard output is one line per dataset, for pipes
        file=sys.stderr if args.dry_run else sys.stdout,
        flush=True,
    )


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
        tally = _Tally(len(targets))
        display = _display(tally, args.no_progress)
        applied: dict[str, Dataset] = {}
        failed: list[PatchOutcome] = []
        skipped: collections.Counter[str] = collections.Counter()
        async with fake.client(max_concurrency=args.concurrency) as client:
            run = client.patch_many(targets.values(), progress=_watch(tally, display))
            try:
                with _interrupts(run) as ctrl_c:
                    async with _abandon(ctrl_c), run:
                        async for outcome in run:
                            if outcome.ok and outcome.dataset is not None:
                                applied[outcome.update.dataset_id] = outcome.dataset
                            elif outcome.status is OutcomeStatus.SKIPPED:
                                skipped[str(outcome.error)] += 1
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
    stopped = ""
    if skipped or ctrl_c.presses:  # a stopped run: say what was skipped and what never started
        reasons = "; ".join(skipped) or "-"
        not_started = len(targets) - len(applied) - len(failed) - skipped.total()
        stopped = f", skipped {skipped.total()} ({reasons}), not started {not_started}"
    print(
        f"applied {len(applied)}, failed {len(failed)}{stopped} of {len(targets)} "
        f"in {report.elapsed:.2f}s "
        f"({throughput:.0f} updates/s); {report.requests} requests, {report.retries} retries, "
        f"{stats.statuses[429]} answered 429, {stats.statuses[500]} answered 500, "
        f"{stats.resets} connections reset"
    )
    if failed:
        lines = [f"failed {o.update.dataset_id}: {o.error}" for o in failed[:_MAX_LISTED]]
        print(_listed(lines, len(failed)))
    if mismatches:
        print(f"verification FAILED: {len(mismatches)} datasets differ from the server's record")
        return EXIT_FAILED
    print(f"verified: every applied update matches the server's final record ({len(applied)})")
    if ctrl_c.presses:
        return EXIT_INTERRUPTED
    return EXIT_OK if not failed and not skipped else EXIT_FAILED
