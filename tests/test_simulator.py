"""A representative subset of the regime simulator's cells (``benchmarks/simulator.py``): the
client's real code against server models on virtual time, each cell judged by its target.
The whole table is a benchmark (``benchmarks/RESULTS.md``); these cells run in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import simulator as sim

CELLS = {cell.name: cell for cell in sim.all_cells()}

# Each was missed by the gate before this law (see RESULTS.md), or guards a regime it meets.
SUBSET = [
    "bucket 100/s no RA",  # token bucket, first contact and steady state
    "bucket 20/s RA 1",  # a short Retry-After waited by its request only
    "fixed 100/s RA rest",  # the rest of a window waited by everyone, once
    "fixed 10/s no RA",  # a closed window asked with a growing backoff (was missed)
    "fixed 2/s RA rest",  # a window spent as far as the last one held (was 6.7% refused)
    "per-minute, RA 60",  # 60 a minute, Retry-After 60 s (was 9.1% refused)
    "sliding 20/s headers",  # quota headers
    "fixed 5/s headers",  # a window's quota spent as it opens (was 1.2x N/R)
    "random 429 5% RA 0",  # refusals at random are noise (was 90x slower)
    "random 429 5% no RA",
    "drop 500->50/s",  # a limit that drops tenfold (was 9% refused)
    "2 clients 50/s",  # two clients share one limit (was missed)
    "give up: 2x offered, 2 s deadline",  # callers that leave hold nothing
    "service 1% random 429",  # single calls: p50 within 2x the server's, p99 < 1.5 s
]


@pytest.mark.parametrize("name", SUBSET)
def test_cell_meets_its_target(name: str) -> None:
    """The cell's target (issue 16's) holds on virtual time."""
    cell = CELLS[name]
    result = sim.run_cell(cell)
    ok, why = sim.verdict(result, sim.baseline(cell))
    assert ok, f"{name}: {why}"


@pytest.mark.parametrize(("name", "seed"), [("random 429 10% RA 0", 2), ("random 429 10% RA 1", 3)])
def test_random_refusals_never_collapse_the_pace(name: str, seed: int) -> None:
    """10% of requests refused at random, no limit: draws where noise rounds ran above twice
    the learned share cut the pace again and again (to 0.5/s: 480-1,250x the run without
    refusals). Refusals that go on while the law slows down keep their noise trial and the
    learned noise; a closed-limit hold in the open phase restores the open phase. (Still
    2-25x: a miss of issue 16's 1.5x, stated in docs/flow-control.md.)
    """
    cell = attrs.evolve(CELLS[name], seed=seed)
    result = sim.run_cell(cell)
    base = sim.baseline(cell)
    assert base is not None
    assert result.failed == 0
    assert result.wall <= 30 * base.wall, (result.wall, base.wall)


def test_a_limit_that_rises_tenfold_is_found_within_ten_seconds() -> None:
    """Without headers, a limit that rises from 10/s to 100/s is used at 80% within 10 s."""
    cell = CELLS["rise 10->100/s"]
    result = sim.run_cell(cell)
    at, factor = cell.limit.changes[0]
    assert any(
        result.goodput(t, t + 1) >= 0.8 * cell.limit.rate * factor
        for t in range(int(at), int(at) + 11)
    )


def test_the_simulator_runs_the_real_client_on_virtual_time() -> None:
    """A cell of a minute of virtual time completes with every update applied, the server
    model's log matching what the client reports.
    """
    cell = sim.Cell("bucket 5/s", sim.Limit("bucket", 5, 5), 100)
    result = sim.run_cell(cell)
    assert result.succeeded == 100
    assert result.failed == 0
    assert sum(1 for _, status in result.log if status == 200) == 100
    assert result.wall >= (100 - 5) / 5  # the limit held it: virtual time really passed
