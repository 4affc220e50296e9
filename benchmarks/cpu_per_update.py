"""Client CPU per update, against a bare aiohttp loop run side by side in the same run.

Usage:
    .venv/bin/python benchmarks/cpu_per_update.py --rounds 5 [--n 5000] [--concurrency 32]
    .venv/bin/python benchmarks/cpu_per_update.py --profile ours      # cProfile, top functions
    .venv/bin/python benchmarks/cpu_per_update.py --callgrind          # instructions per update

Each round starts the package's fake API (``server.py``) in its own process pinned to CPU 1 and
runs every contender once, in its own process pinned to CPU 0, in an order that rotates from
round to round (``contenders.py NAME``). Contenders:

- ``aiohttp``: the bare loop (``ClientSession`` + semaphore, sends the same PATCH,
  ``json.loads`` the reply): the baseline every ratio is taken against, in the same round;
- ``ours``: ``DatasetsClient.patch_all`` with no observer;
- ``ours_observer``: the same with one observer that does nothing (the event objects built);
- ``ours_otel``: the same with ``nebius_datasets_async.otel`` on, the OpenTelemetry SDK
  recording every span (a ``BatchSpanProcessor`` into an exporter that drops them) and metric;
- ``ours_otel_sampled``: the same with 10% of the traces sampled;
- ``ours_otel_metrics``: the same with metrics only (``instrument(client, traces=False)``).

Prints a Markdown table: per contender, the median CPU us/update, the median of the per-round
ratios to ``aiohttp`` and their spread (min-max).

``--callgrind`` counts instructions instead, which other processes on the machine do not
disturb: each contender runs under ``valgrind --tool=callgrind`` twice, with ``--n`` and with
``--n`` + 1000 updates, and the difference over 1000 is its instructions per update (start-up
and imports cancel out). Instruction counts miss what CPU time also pays (cache misses,
branch mispredictions), so they complement the CPU ratios, not replace them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CONTENDERS = (
    "aiohttp",
    "ours",
    "ours_observer",
    "ours_otel",
    "ours_otel_sampled",
    "ours_otel_metrics",
)


def start_server(datasets: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), json.dumps({"datasets": datasets, "cpu": 1})],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, json.loads(server.stdout.readline())


def run_contender(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(HERE / "contenders.py"), name, json.dumps(cfg)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def instructions(name: str, cfg: dict[str, Any]) -> int:
    """Instructions the contender ran, counted by callgrind (the whole process)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                str(HERE / "contenders.py"),
                name,
                json.dumps(cfg),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in the callgrind output")


def callgrind(names: list[str], n: int, concurrency: int, datasets: int) -> None:
    per_update: dict[str, float] = {}
    for name in names:
        counts = []
        for size in (n, n + 1000):
            server, hello = start_server(datasets)
            try:
                cfg = {**hello, "n": size, "datasets": datasets, "cpu": 0}
                cfg["concurrency"] = concurrency
                counts.append(instructions(name, cfg))
            finally:
                server.terminate()
                server.communicate(timeout=30)
        per_update[name] = (counts[1] - counts[0]) / 1000
        print(f"{name}: {per_update[name]:,.0f} instructions/update", file=sys.stderr, flush=True)
    print(f"\ncallgrind, instructions per update ({n} and {n + 1000} updates, difference)\n")
    print("| contender | instructions/update | ratio to aiohttp |")
    print("|---|---|---|")
    for name in names:
        ratio = per_update[name] / per_update["aiohttp"]
        print(f"| {name} | {per_update[name]:,.0f} | {ratio:.3f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--profile", metavar="CONTENDER", help="cProfile one contender instead")
    parser.add_argument("--callgrind", action="store_true", help="count instructions instead")
    args = parser.parse_args()
    names = [c for c in args.contenders.split(",") if c]
    if "aiohttp" not in names:
        names.insert(0, "aiohttp")
    datasets = min(args.n, 5000)
    if args.profile:
        server, hello = start_server(datasets)
        try:
            cfg = {**hello, "n": args.n, "datasets": datasets, "cpu": 0}
            cfg["concurrency"] = args.concurrency
            cfg["profile"] = True
            out = subprocess.run(
                [sys.executable, str(HERE / "contenders.py"), args.profile, json.dumps(cfg)],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            print(out.stderr)
        finally:
            server.terminate()
            server.communicate(timeout=30)
        return
    if args.callgrind:
        callgrind(names, args.n, args.concurrency, datasets)
        return
    cpu: dict[str, list[float]] = {name: [] for name in names}
    ratio: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        server, hello = start_server(datasets)
        try:
            cfg = {**hello, "n": args.n, "datasets": datasets, "cpu": 0}
            cfg["concurrency"] = args.concurrency
            order = names[r % len(names) :] + names[: r % len(names)]
            this: dict[str, float] = {}
            for name in order:
                result = run_contender(name, cfg)
                if result["ok"] != args.n:
                    raise SystemExit(f"{name}: {result['ok']} of {args.n} applied")
                this[name] = result["cpu"] / args.n * 1e6
        finally:
            server.terminate()
            server.communicate(timeout=30)
        for name in names:
            cpu[name].append(this[name])
            ratio[name].append(this[name] / this["aiohttp"])
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {this[k]:.0f} us" for k in names),
            file=sys.stderr,
            flush=True,
        )
    print(
        f"\n{args.rounds} rounds, {args.n} PATCH per contender per round, concurrency "
        f"{args.concurrency}, no server delay\n"
    )
    print("| contender | CPU us/update, median (min-max) | ratio to aiohttp, median (min-max) |")
    print("|---|---|---|")
    for name in names:
        c, q = cpu[name], ratio[name]
        print(
            f"| {name} | {statistics.median(c):.0f} ({min(c):.0f}-{max(c):.0f}) | "
            f"{statistics.median(q):.3f}x ({min(q):.3f}-{max(q):.3f}) |"
        )


if __name__ == "__main__":
    main()
