"""Run every benchmark scenario side by side and write benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/run.py            # the full run (about twenty minutes)
    .venv/bin/python benchmarks/run.py --quick    # small sizes, one repetition (under a minute)

Each run starts the fake server in its own process pinned to CPU 1 and the contender in its own
process pinned to CPU 0, so the client's CPU time is its own. Contenders alternate within each
repetition; the table shows the median of the repetitions and the spread (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import attrs

HERE = Path(__file__).resolve().parent
Run = dict[str, Any]


@attrs.frozen
class Scenario:
    key: str
    title: str
    contenders: tuple[str, ...]
    n: int
    concurrency: int
    faults: dict[str, Any] = attrs.field(factory=dict)
    datasets: int = 5000
    # Per contender: a different number of updates (a slow baseline on a smaller sample).
    n_for: dict[str, int] = attrs.field(factory=dict)
    #: The limit's average rate (requests/s), for the wall / (N/R) figure.
    rate: float | None = None
    #: The contenders' event loop: "asyncio" or "uvloop".
    loop: str = "asyncio"
    #: Extra settings for the contenders (worker processes, a shared Redis).
    extra: dict[str, Any] = attrs.field(factory=dict)
    #: Serve the FastAPI app of the contract under uvicorn with these settings instead of
    #: the package's fake.
    uvicorn: dict[str, Any] | None = None


LATENCY = 0.02


def bucket(rate: float, burst: int, retry_after: float = 1.0) -> dict[str, Any]:
    return {
        "rate_limit": rate,
        "burst": burst,
        "rate_limit_retry_after": retry_after,
        "latency": LATENCY,
    }


TINY_FLOW = {"grid_500_50", "service", "mixed", "two_bulk", "window_fixed_headers"}


def flow_scenarios(scale: float, tiny: bool) -> list[Scenario]:
    """The gate's targets: rate limits as token buckets and windows, shared by several kinds
    of callers. N scales with the limit, so each takes about the same time.
    """

    def n(full: int) -> int:
        return max(50, int(full * scale))

    out = []
    for rate, burst in ((100, 10), (100, 50), (200, 10), (200, 50), (500, 10), (500, 50),
                        (1000, 10), (1000, 50)):  # fmt: skip
        out.append(
            Scenario(
                f"grid_{rate}_{burst}",
                f"6. Token bucket {rate}/s, burst {burst}, Retry-After 1, 20 ms, N = 10 R",
                ("ours",),
                n(10 * rate),
                64,
                bucket(rate, burst),
                datasets=n(10 * rate),
                rate=rate,
            )
        )

    def limited(key: str, title: str, contender: str, full: int, rate: int, burst: int,
                retry_after: float = 1.0, **faults: float) -> Scenario:  # fmt: skip
        """A scenario against a token bucket of ``rate``/s, with N = ``full`` at full size."""
        return Scenario(
            key, title, (contender,), n(full), 64,
            {**bucket(rate, burst, retry_after), **faults}, datasets=n(full), rate=rate,
        )  # fmt: skip

    out += [
        limited("grid_long", "6. Token bucket 200/s, burst 10, N = 40 R", "ours", 8000, 200, 10),
        limited("service", "7. Service: 300 tasks x 5 single calls, bucket 150/s, burst 10",
                "service", 1500, 150, 10),
        limited("mixed", "7. One bulk run (80%) + single calls (20%) at once, 200/s",
                "mixed", 2000, 200, 10),
        limited("two_bulk", "7. Two bulk runs at once on one client, 200/s",
                "two_bulk", 3000, 200, 10),
        limited("fleet4", "7. Four processes, one key, each its own client, 200/s",
                "fleet4", 3000, 200, 10),
        limited("demo", "7. The demo's server: 500/s, burst 50, 20 ms, a few faults",
                "ours", 2000, 500, 50,
                rate_500=0.003, rate_500_after_apply=0.002, rate_reset=0.002),
        limited("retry_after_5", "7. Token bucket 200/s, burst 20, Retry-After 5",
                "ours", 2000, 200, 20, retry_after=5.0),
    ]  # fmt: skip
    window = 1.0 if tiny else 10.0
    for kind in ("fixed", "sliding"):
        for headers in (True, False):
            label = "with" if headers else "without"
            out.append(
                Scenario(
                    f"window_{kind}_{'headers' if headers else 'bare'}",
                    f"8. {kind.title()} window 1,000 per 10 s, {label} x-ratelimit headers",
                    ("ours",),
                    n(5000),
                    64,
                    {
                        "window_limit": max(20, int(1000 * scale)),
                        "window": window,
                        "window_kind": kind,
                        "limit_headers": headers,
                        "latency": LATENCY,
                    },
                    datasets=n(5000),
                    rate=max(20, int(1000 * scale)) / window,
                )
            )
    out += [
        Scenario(
            "busy_uvicorn",
            "10. uvicorn --limit-concurrency 8 (plain 503s), 5 ms, concurrency 64",
            ("ours",),
            n(2000),
            64,
            {"latency": 0.005},
            datasets=n(2000),
            uvicorn={"limit_concurrency": 8},
        ),
        Scenario(
            "idle_gaps",
            "10. uvicorn keep-alive 5 s: calls after idle gaps of 4.9-5.1 s, retries off",
            ("idle_gaps",),
            48,
            4,
            datasets=48,
            uvicorn={},
        ),
        Scenario(
            "idle_gaps_dead",
            "10. The same with the client keeping idle connections 30 s (dead ones resent)",
            ("idle_gaps",),
            48,
            4,
            datasets=48,
            uvicorn={},
            extra={"keepalive": 30.0},
        ),
    ]
    return [s for s in out if s.key in TINY_FLOW] if tiny else out


def scenarios(quick: bool, tiny: bool) -> list[Scenario]:
    scale = 0.01 if tiny else (0.1 if quick else 1.0)

    def n(full: int) -> int:
        return max(50, int(full * scale))

    return [
        Scenario(
            "overhead",
            "1. Client overhead: PATCH, no server delay, concurrency 32",
            ("ours", "aiohttp", "httpx"),
            n(5000),
            32,
        ),
        Scenario(
            "overhead_pair",
            "1a. Client overhead, ours and aiohttp only (for repeated runs)",
            ("ours", "aiohttp"),
            n(5000),
            32,
        ),
        Scenario(
            "overhead_uvloop",
            "1b. Client overhead on uvloop: PATCH, no server delay, concurrency 32",
            ("ours", "aiohttp"),
            n(5000),
            32,
            loop="uvloop",
        ),
        Scenario(
            "latency",
            "2. Latency-bound: PATCH, 50 ms server latency, concurrency 64",
            ("ours", "aiohttp"),
            n(5000),
            64,
            {"latency": 0.05},
        ),
        Scenario(
            "memory_small",
            "3a. Memory: updates from a generator (small run)",
            ("ours", "gather"),
            n(20_000),
            64,
        ),
        Scenario(
            "memory_large",
            "3b. Memory: updates from a generator (10x the small run)",
            ("ours", "gather"),
            n(200_000),
            64,
        ),
        Scenario(
            "ratelimit",
            "4. Rate-limited: token bucket 200/s, burst 20, Retry-After 1",
            ("ours", "openai_style"),
            n(4000),
            64,
            {"rate_limit": 200, "burst": 20, "rate_limit_retry_after": 1},
        ),
        Scenario(
            "outage",
            "5. Outage: every request answered 503",
            ("ours", "openai_style"),
            n(10_000),
            64,
            {"rate_503": 1.0},
            n_for={"openai_style": n(1000)},
        ),
        *flow_scenarios(scale, tiny),
        *fleet_scenarios(scale, tiny),
    ]


def fleet_scenarios(scale: float, tiny: bool) -> list[Scenario]:
    """A fleet of worker processes sharing one key: independent clients beside clients whose
    flow is shared through one Redis.
    """
    out = []
    for rate, full in ((5, 100), (50, 1000), (200, 3000), (1000, 6000)):
        n = max(50, int(full * scale))
        for workers in (1, 2, 4, 8):
            for shared in (False, True):
                mode = "redis" if shared else "independent"
                out.append(
                    Scenario(
                        f"fleet_{rate}_{workers}_{mode}",
                        f"9. Fleet of {workers} process(es), bucket {rate}/s, {mode}",
                        ("fleet",),
                        n,
                        32,
                        bucket(rate, 10),
                        datasets=n,
                        rate=rate,
                        extra={"workers": workers, "redis_url": "start" if shared else None},
                    )
                )
    return [s for s in out if s.key in ("fleet_200_2_redis",)] if tiny else out


_REDIS: list[Any] = []
#: The package at ``--baseline``'s revision (a fleet row's ``fleet_base`` contender imports it).
_BASELINE: list[Any] = []  # [the tree, the revision]


def baseline_tree(revision: str, into: Path) -> Path:
    """The package's source at a git revision, extracted (``git archive``) under ``into``."""
    tree = into / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", revision, "nebius_datasets_async"],
        cwd=HERE.parent, check=True, capture_output=True,
    ).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def redis_url() -> str:
    """One redis-server for the whole run, flushed before each use."""
    if not _REDIS:
        sys.path.insert(0, str(HERE.parent))
        from tests.redis_server import RedisServer

        server = RedisServer()
        server.start()
        _REDIS.append(server)
    server = _REDIS[0]
    subprocess.run(
        [sys.executable, "-c", f"import redis; redis.Redis.from_url({server.url!r}).flushdb()"],
        check=True,
    )
    return str(server.url)


def run_once(scenario: Scenario, contender: str) -> Run:
    env = None
    if contender == "fleet_base":  # the same fleet, importing the package at --baseline
        env = {**os.environ, "PYTHONPATH": str(_BASELINE[0])}
        contender = "fleet"
    server_cfg: dict[str, Any] = {
        "datasets": min(scenario.datasets, scenario.n),
        "faults": scenario.faults,
        "cpu": 1,
    }
    if scenario.uvicorn is not None:
        server_cfg["uvicorn"] = scenario.uvicorn
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), json.dumps(server_cfg)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        hello = json.loads(server.stdout.readline())
        cfg = {
            **hello,
            "n": scenario.n_for.get(contender, scenario.n),
            "datasets": server_cfg["datasets"],
            "concurrency": scenario.concurrency,
            "cpu": 0,
            "loop": scenario.loop,
            **scenario.extra,
        }
        if cfg.get("redis_url") == "start":
            cfg["redis_url"] = redis_url()
        out = subprocess.run(
            [sys.executable, str(HERE / "contenders.py"), contender, json.dumps(cfg)],
            capture_output=True,
            text=True,
            timeout=900,
            check=True,
            env=env,
        )
        result: Run = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        stats_line = server.communicate(timeout=30)[0].strip().splitlines()
    stats = json.loads(stats_line[-1]) if stats_line else {}
    result["n"] = cfg["n"]
    # uvicorn's own 503s never reach the app: count what the client sent instead
    result["server_requests"] = stats.get("requests", result.get("requests"))
    result["server_429"] = stats.get("statuses", {}).get("429", 0)
    result["server_max_in_flight"] = stats.get("max_in_flight")
    # refused beyond the first burst (issue 16): none refused at all counts as 0
    burst = stats.get("first_burst") or {"requests": 0, "429": result["server_429"]}
    later = result["server_requests"] - burst["requests"]
    result["refused_later"] = (result["server_429"] - burst["429"]) / later if later > 0 else 0.0
    if scenario.rate:
        result["vs_ideal"] = result["wall"] / (cfg["n"] / scenario.rate)
    if result.get("redis_calls"):
        result["redis_per_request"] = result["redis_calls"] / max(result["requests"], 1)
    if "child_cpu" in result:
        result["cpu"] += result["child_cpu"]
    if result.get("proposals"):
        result["conflict_rate"] = result["conflicts"] / result["proposals"]
    return result


def median(runs: list[Run], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def spread(runs: list[Run], key: str, fmt: str) -> str:
    values = [float(r[key]) for r in runs]
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def structuring(iterations: int) -> dict[str, float]:
    """Microseconds to turn one Dataset body (bytes) into a model, per library."""
    sys.path.insert(0, str(HERE))
    from structuring import cases

    results = {}
    for name, fn in cases().items():
        fn()
        best = min(timeit.repeat(fn, number=iterations, repeat=5))
        results[name] = best / iterations * 1e6
    return results


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
        f"aiohttp {version('aiohttp')}, attrs {version('attrs')}, cattrs {version('cattrs')}, "
        f"httpx {version('httpx')}; {platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes (for the suite)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--only", help="comma-separated scenario keys")
    parser.add_argument(
        "--append", action="store_true", help="add this run's tables to --out, keep the rest"
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="a git revision: each fleet row shared through Redis also runs the package as it "
        "was there (contender fleet_base), side by side",
    )
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick or args.tiny else 3)
    chosen = scenarios(args.quick, args.tiny)
    if args.only:
        keep = set(args.only.split(","))
        chosen = [s for s in chosen if s.key in keep]
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        if args.baseline:
            _BASELINE.extend([baseline_tree(args.baseline, Path(tmp)), args.baseline])
            chosen = [
                attrs.evolve(s, contenders=(*s.contenders, "fleet_base"))
                if s.key.startswith("fleet_") and s.key.endswith("_redis")
                else s
                for s in chosen
            ]
        return run(chosen, reps, args)


def run(chosen: list[Scenario], reps: int, args: argparse.Namespace) -> int:
    started = time.monotonic()
    runs: dict[str, dict[str, list[Run]]] = {}
    for scenario in chosen:
        runs[scenario.key] = {c: [] for c in scenario.contenders}
        for rep in range(reps):
            order = scenario.contenders if rep % 2 == 0 else tuple(reversed(scenario.contenders))
            for contender in order:
                result = run_once(scenario, contender)
                runs[scenario.key][contender].append(result)
                print(
                    f"{scenario.key:<13} {contender:<13} rep {rep + 1}: "
                    f"wall {result['wall']:.2f}s cpu {result['cpu']:.2f}s "
                    f"rss {result['peak_rss_mb']:.0f}MB ok {result['ok']} "
                    f"failed {result['failed']} 429s {result['server_429']} "
                    f"later {result['refused_later']:.3f} x{result.get('vs_ideal', 0):.3f} "
                    f"redis {result.get('redis_per_request', 0):.2f}/req "
                    f"conflicts {result.get('conflicts', 0)}/{result.get('proposals', 0)}",
                    file=sys.stderr,
                    flush=True,
                )
    for server in _REDIS:
        server.close()
    micro = structuring(200 if args.tiny else 20_000)
    text = render(chosen, runs, micro, reps, args, time.monotonic() - started)
    if args.append and args.out.exists():
        title = f"# Targeted run: {', '.join(s.key for s in chosen)}"
        text = args.out.read_text() + "\n" + text.replace("# Benchmark results", title, 1)
    args.out.write_text(text)
    print(text)
    return 0


def render(
    chosen: list[Scenario],
    runs: dict[str, dict[str, list[Run]]],
    micro: dict[str, float],
    reps: int,
    args: argparse.Namespace,
    seconds: float,
) -> str:
    mode = "tiny" if args.tiny else ("quick" if args.quick else "full")
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; mode: {mode}; "
        f"median of {reps} repetition(s), spread min-max; took {seconds:.0f}s",
        f"- Machine: {machine()}",
        "- Server: the package's fake API in its own process on CPU 1; each contender in its "
        "own process on CPU 0. Reproduce: `.venv/bin/python benchmarks/run.py`",
        "",
        "| scenario | contender | updates | wall s | client CPU us/update | peak RSS MB | "
        "requests/update | 429 share | ok | failed | ratio to ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for by_contender in runs.values():
        for rs in by_contender.values():
            for r in rs:
                r["per_update_requests"] = r["server_requests"] / r["n"]
                r["cpu_us"] = r["cpu"] / r["n"] * 1e6
                r["share_429"] = r["server_429"] / max(r["server_requests"], 1)
    for scenario in chosen:
        by = runs[scenario.key]
        base = by.get("ours") or next(iter(by.values()))
        metric = _headline(scenario.key)
        for contender, rs in by.items():
            n = rs[0]["n"]
            reqs = median(rs, "server_requests")
            ratio = median(rs, metric) / median(base, metric) if median(base, metric) else 0
            if scenario.rate:
                ratio_text = f"{median(rs, 'vs_ideal'):.3f}x N/R"
            elif scenario.key.startswith("memory"):
                ratio_text = f"RSS {ratio:.2f}x"
            elif metric == "per_update_requests":
                ratio_text = f"requests {ratio:.2f}x"
            elif metric == "cpu_us":
                ratio_text = f"CPU {ratio:.2f}x"
            else:
                ratio_text = f"{metric} {ratio:.2f}x"
            lines.append(
                f"| {scenario.title} | {contender} | {n} | {spread(rs, 'wall', '.2f')} | "
                f"{spread(rs, 'cpu_us', '.0f')} | {spread(rs, 'peak_rss_mb', '.0f')} | "
                f"{reqs / n:.2f} | {median(rs, 'share_429'):.3f} | "
                f"{int(median(rs, 'ok'))} | {int(median(rs, 'failed'))} | {ratio_text} |"
            )
    lines += _derived(chosen, runs)
    lines += [
        "",
        "## Structuring one Dataset body (bytes to model)",
        "",
        "| library | us per object |",
        "|---|---|",
    ]
    lines += [f"| {name} | {us:.1f} |" for name, us in micro.items()]
    lines.append("")
    return "\n".join(lines)


def _headline(key: str) -> str:
    """The figure a scenario's ratio is taken on."""
    return {
        "overhead": "cpu_us",
        "overhead_pair": "cpu_us",
        "overhead_uvloop": "cpu_us",
        "latency": "wall",
        "memory_small": "peak_rss_mb",
        "memory_large": "peak_rss_mb",
        "ratelimit": "wall",
        "outage": "per_update_requests",
    }.get(key, "wall")


def _target(key: str) -> str:
    if key.startswith("grid_") and key != "grid_long":
        return "<= 1.15x N/R + 1 s, < 5% 429s"
    if key.startswith("fleet_") and key.endswith("_redis"):
        return "<= 1.15x N/R + 2 s, <= 5% refused beyond the first burst"
    return {
        "grid_long": "<= 1.05x N/R",
        "service": "<= 1.2x N/R + 1.5 s, <= 5% 429s, 0 failed",
        "mixed": "<= 1.25x N/R + 1.5 s",
        "two_bulk": "<= 1.25x N/R + 1.5 s",
        "fleet4": "<= 1.5x N/R, all applied",
        "demo": "<= 1.25x N/R",
        "retry_after_5": "<= 1.25x N/R + 5 s",
        "window_fixed_headers": "<= 1.05x N/R, < 1% 429s",
        "window_sliding_headers": "<= 1.05x N/R, < 1% 429s",
        "window_fixed_bare": "<= 1.25x N/R",
        "window_sliding_bare": "<= 1.25x N/R",
    }.get(key, "-")


def _derived(chosen: list[Scenario], runs: dict[str, dict[str, list[Run]]]) -> list[str]:
    """The figures the targets are stated in."""
    out = ["", "## Against the targets", ""]
    keys = {s.key: s for s in chosen}
    if "overhead" in keys:
        by = runs["overhead"]
        ours, raw = median(by["ours"], "cpu_us"), median(by["aiohttp"], "cpu_us")
        httpx = median(by["httpx"], "cpu_us")
        out.append(
            f"- Client overhead: ours {ours:.0f} us/update vs hand-written aiohttp "
            f"{raw:.0f} ({ours / raw:.2f}x; target <= 1.15x); httpx {httpx:.0f} "
            f"({httpx / ours:.1f}x ours)."
        )
    if "overhead_pair" in keys:
        by = runs["overhead_pair"]
        ours, raw = median(by["ours"], "cpu_us"), median(by["aiohttp"], "cpu_us")
        ratios = sorted(
            a["cpu_us"] / b["cpu_us"] for a, b in zip(by["ours"], by["aiohttp"], strict=True)
        )
        out.append(
            f"- Client overhead, repeated: ours {ours:.0f} us/update vs aiohttp {raw:.0f} "
            f"({ours / raw:.2f}x; per repetition {ratios[0]:.2f}-{ratios[-1]:.2f}x; "
            "target <= 1.15x)."
        )
    if "overhead_uvloop" in keys:
        by = runs["overhead_uvloop"]
        ours, raw = median(by["ours"], "cpu_us"), median(by["aiohttp"], "cpu_us")
        out.append(
            f"- Client overhead on uvloop (both contenders): ours {ours:.0f} us/update vs "
            f"aiohttp {raw:.0f} ({ours / raw:.2f}x; target <= 1.15x)."
        )
    if "latency" in keys:
        s = keys["latency"]
        by = runs["latency"]
        bound = s.n * 0.05 / s.concurrency
        ours, raw = median(by["ours"], "wall"), median(by["aiohttp"], "wall")
        out.append(
            f"- Latency-bound: ours {ours:.2f}s vs aiohttp {raw:.2f}s ({ours / raw:.3f}x; "
            f"target <= 1.05x); Little's-law bound N*L/C = {bound:.2f}s: ours "
            f"{ours / bound:.2f}x, aiohttp {raw / bound:.2f}x of it."
        )
    if "memory_small" in keys and "memory_large" in keys:
        small, large = runs["memory_small"], runs["memory_large"]
        growth = {
            c: median(large[c], "peak_rss_mb") - median(small[c], "peak_rss_mb") for c in small
        }
        out.append(
            f"- Memory growth from {keys['memory_small'].n} to {keys['memory_large'].n} "
            f"updates: ours {growth['ours']:+.1f} MB (target < 10 MB), gather "
            f"{growth['gather']:+.1f} MB."
        )
    if "ratelimit" in keys:
        s = keys["ratelimit"]
        by = runs["ratelimit"]
        ideal = s.n / 200
        ours = median(by["ours"], "wall")
        share = median(by["ours"], "share_429")
        d = by["openai_style"]
        out.append(
            f"- Rate-limited: ours {ours:.2f}s = {ours / ideal:.3f}x N/R ({ideal:.0f}s; "
            f"target <= 1.10x), {share:.1%} of requests answered 429 (target < 5%); "
            f"baseline (d) {median(d, 'wall'):.2f}s, {median(d, 'share_429'):.1%} 429s, "
            f"{int(median(d, 'failed'))} of {d[0]['n']} updates failed."
        )
    flow = [s for s in chosen if s.rate and s.key != "ratelimit"]
    if flow:
        out += ["", "### The gate's targets (wall / (N/R), 429 share)", ""]
        for s in flow:
            rs = next(iter(runs[s.key].values()))
            out.append(
                f"- {s.title}: {median(rs, 'vs_ideal'):.3f}x N/R "
                f"({spread(rs, 'vs_ideal', '.3f')}), {median(rs, 'share_429'):.1%} 429s, "
                f"{int(median(rs, 'failed'))} failed; target {_target(s.key)}."
            )
    fleet = [s for s in chosen if s.key.startswith("fleet_")]
    if fleet:
        out += ["", "### A fleet sharing one key (issues 10 and 16)", ""]
        out.append(
            "Target (issue 16): wall <= 1.15x N/R + 2 s, <= 5% refused beyond the first burst. "
            "Median (min-max) of the repetitions; `fleet_base`: the package at "
            f"`{_BASELINE[1] if len(_BASELINE) > 1 else '-'}`."
        )
        out.append("")
        out.append(
            "| scenario | contender | wall / (N/R) | wall vs target | 429 share | refused beyond "
            "the first burst | Redis calls per request | CAS conflicts per proposal | client "
            "CPU us/request | failed |"
        )
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for s in fleet:
            for contender, rs in runs[s.key].items():
                assert s.rate is not None
                target = [r["wall"] / (1.15 * r["n"] / s.rate + 2.0) for r in rs]
                for r, t in zip(rs, target, strict=True):
                    r["vs_target"] = t
                    r["cpu_per_request"] = r["cpu"] / max(r["server_requests"], 1) * 1e6
                per = [r["redis_per_request"] for r in rs if r.get("redis_per_request")]
                conflicts = [r["conflict_rate"] for r in rs if "conflict_rate" in r]
                out.append(
                    f"| {s.title} | {contender} | {median(rs, 'vs_ideal'):.3f}x "
                    f"({spread(rs, 'vs_ideal', '.2f')}) | {median(rs, 'vs_target'):.2f} "
                    f"({spread(rs, 'vs_target', '.2f')}) | {median(rs, 'share_429'):.1%} | "
                    f"{median(rs, 'refused_later'):.1%} ({spread(rs, 'refused_later', '.3f')}) | "
                    f"{statistics.median(per) if per else 0:.2f} | "
                    f"{statistics.median(conflicts) if conflicts else 0:.2f} | "
                    f"{median(rs, 'cpu_per_request'):.0f} | {int(median(rs, 'failed'))} |"
                )
    if "outage" in keys:
        by = runs["outage"]
        out.append(
            f"- Outage: ours {median(by['ours'], 'per_update_requests'):.3f} requests "
            f"per update (target <= 1.2), in {median(by['ours'], 'wall'):.1f}s; "
            f"baseline (d) {median(by['openai_style'], 'per_update_requests'):.2f} "
            f"(measured on {by['openai_style'][0]['n']} updates)."
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
