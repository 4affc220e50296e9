"""A representative subset of the regime simulator's cells (``benchmarks/simulator.py``): the
client's real code against server models on virtual time, each cell judged by its target.
The whole table is a benchmark (``benchmarks/RESULTS.md``); these cells run in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path
from xml.etree import ElementTree

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
    "fixed 100/s no RA",  # a window guessed from a closed limit (was 4.1x N/R)
    "fixed 1/s no RA",  # ... and at a per-minute limit (a volley at each window's end)
    "fixed 2/s RA rest",  # a window spent as far as the last one held (was 6.7% refused)
    "per-minute, RA 60",  # 60 a minute, Retry-After 60 s (was 9.1% refused)
    "sliding 20/s headers",  # quota headers
    "fixed 5/s headers",  # a window's quota spent as it opens (was 1.2x N/R)
    "fixed 500/s headers",  # ... not spread over the time to the reset (was 40 s for 32)
    "random 429 5% RA 0",  # refusals at random are noise (was 90x slower)
    "random 429 5% no RA",
    "random 429 10% RA 0",  # a round beyond twice the noise but within chance (was 1.6x)
    "random 503 10%",  # a busy server's 503 retried through the gate (was 2.8x)
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


@pytest.mark.parametrize(
    ("name", "seed"),
    [("random 429 10% RA 0", 2), ("random 429 10% RA 1", 3), ("random 429 10% RA 1", 5)],
)
def test_random_refusals_never_collapse_the_pace(name: str, seed: int) -> None:
    """10% of requests refused at random, no limit: draws where noise rounds ran above twice
    the learned share cut the pace again and again (to 0.5/s: 480-1,250x the run without
    refusals). Refusals that go on while the law slows down keep their noise trial and the
    learned noise; a closed-limit hold in the open phase restores the open phase; a trial
    that finds no verdict in 300 answers goes on judging; a round within chance of the
    learned noise is noise (seed 2 was 25x, seed 5 8x). Still 1.4-4.4x over seeds 0-5: a
    miss of issue 16's 1.5x, stated in docs/flow-control.md.
    """
    cell = attrs.evolve(CELLS[name], seed=seed)
    result = sim.run_cell(cell)
    base = sim.baseline(cell)
    assert base is not None
    assert result.failed == 0
    assert result.wall <= 5 * base.wall, (result.wall, base.wall)


@pytest.mark.parametrize("seed", [6, 9, 10, 27])
def test_answers_spread_as_on_sockets_do_not_slow_a_bucket_after_first_contact(seed: int) -> None:
    """Round trips that vary by half either way, as on real sockets, against the socket
    sample's bucket of 20/s with ``Retry-After: 1`` (200 updates): in these draws first
    contact sees a round trip of nothing but refusals and finds the limit closed, waits the
    second, and its probe passes. The wait refilled the bucket; a measure spanning it read one
    request a second, searched up from it with care and took 1.34-1.77x N/R (13 of 40 seeds,
    as one socket run in three did). Now the probe's pass searches up fast: within the target.
    """
    limit = sim.Limit("bucket", 20, 20, retry_after=1.0)
    cell = sim.Cell("bucket 20/s RA 1 (N 200)", limit, 200, jitter=0.5, seed=seed)
    result = sim.run_cell(cell)
    assert result.failed == 0
    assert result.wall <= 1.15 * result.ideal + 2.0, result.wall


def test_jitter_spreads_round_trips_and_keeps_the_first_burst_out_of_the_refused_share() -> None:
    """A jittered cell's answers come back at varied times (not all one latency apart), the
    same draws for the same seed, and its first burst ends when the client learnt of the
    first refusal, as the socket sample counts it.
    """
    limit = sim.Limit("bucket", 20, 20, retry_after=1.0)
    cell = sim.Cell("jittered", limit, 100, jitter=0.5, seed=3)
    one, two = sim.run_cell(cell), sim.run_cell(cell)
    assert one.log == two.log
    times = sorted({round(t, 6) for t, _ in one.log[:40]})
    assert len(times) > 20  # spread, not in lockstep waves of one latency
    first = next(t for t, s in one.log if s != 200)
    assert one.first_known is not None
    assert first + 0.5 * cell.latency <= one.first_known <= first + 1.25 * cell.latency


@pytest.mark.parametrize(("name", "within"), [("rise 10->100/s", 10), ("rise 1->10/s", 30)])
def test_a_limit_that_rises_tenfold_is_found(name: str, within: int) -> None:
    """Without headers, a limit that rises tenfold is used at 80% within 10 s from 10/s, and
    within 30 s from 1/s: probing past where the limit was met grows the pace by up to 25% a
    success (it crawled at 5% a success: more than 30 s). Issue 16 asks for 10 s: missed at
    1/s (docs/flow-control.md).
    """
    cell = CELLS[name]
    result = sim.run_cell(cell)
    at, factor = cell.limit.changes[0]
    assert any(
        result.goodput(t, t + 1) >= 0.8 * cell.limit.rate * factor
        for t in range(int(at), int(at) + within + 1)
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


def _fake_result(cell: sim.Cell, wall: float, statuses: list[int]) -> sim.Result:
    """A result without running anything: one request a second with these statuses."""
    log = [(float(t), status) for t, status in enumerate(statuses)]
    ok = statuses.count(200)
    return sim.Result(cell=cell, wall=wall, log=log, succeeded=ok, failed=0, calls=[], cpu=0.0)


def test_the_heat_map_is_valid_svg_with_one_box_per_result_and_figure() -> None:
    """``--svg`` writes well-formed XML: each grid result is one box in each heat map (wall and
    refused), each other result one row of three boxes in its panel, a missed figure is drawn
    in red and a met one in green, and names are escaped.
    """
    met = sim.Cell("bucket 5/s no RA", sim.Limit("bucket", 5, 5, retry_after=None), 10)
    missed = sim.Cell("fixed 20/s headers", sim.Limit("fixed", 20, window=1.0), 40)
    drop = sim.Cell(
        "drop 10->1/s <&>", sim.Limit("bucket", 10, 10, changes=((1.0, 0.1),)), 10, target="drop"
    )
    noise = sim.Cell("random 429 5% RA 0", sim.Limit("none"), 4, noise_429=0.05, target="noise")
    judged = [
        (_fake_result(met, 2.0, [200] * 10), None),  # 1.0x N/R, nothing refused: met
        (_fake_result(missed, 9.0, [200] * 38 + [429] * 40), None),  # 4.5x N/R, 51% refused
        (_fake_result(drop, 3.0, [200] * 10), None),
        (_fake_result(noise, 1.0, [200, 429, 200, 200, 200]), _fake_result(noise, 1.0, [200] * 4)),
    ]
    root = ElementTree.fromstring(sim.heatmap_svg(judged))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    boxes = [g for g in root.iter() if g.get("data-cell") is not None]
    placed = sorted((g.get("data-cell"), g.get("data-figure")) for g in boxes)
    assert placed == sorted(
        [
            ("bucket 5/s no RA", "wall"),
            ("bucket 5/s no RA", "refused"),
            ("fixed 20/s headers", "wall"),
            ("fixed 20/s headers", "refused"),
            *(
                (name, figure)
                for name in ("drop 10->1/s <&>", "random 429 5% RA 0")
                for figure in ("wall", "refused", "target")
            ),
        ]
    )

    def fill(name: str, figure: str) -> str:
        (g,) = (g for g in boxes if (g.get("data-cell"), g.get("data-figure")) == (name, figure))
        rect = g.find("{http://www.w3.org/2000/svg}rect")
        assert rect is not None
        return rect.get("fill", "")

    def reddish(colour: str) -> bool:
        r, g = int(colour[1:3], 16), int(colour[3:5], 16)
        return r > g

    assert not reddish(fill("bucket 5/s no RA", "wall"))
    assert not reddish(fill("bucket 5/s no RA", "refused"))
    assert reddish(fill("fixed 20/s headers", "wall"))
    assert reddish(fill("fixed 20/s headers", "refused"))
    assert fill("random 429 5% RA 0", "refused") == "#eeeeee"  # not judged on it


def test_the_first_burst_holds_what_was_admitted_before_a_refusal_was_known() -> None:
    """A bucket of 1/s (a burst of 1): slow start sends two more on the burst's one success
    before the seven 429s that came with it are processed. They arrive the instant the first
    refusal is known, but their client did not know it: they are the first burst, and the
    refused share after it counts only what was sent knowing.
    """
    cells = {c.name: c for c in sim.all_cells()}
    result = sim.run_cell(cells["bucket 1/s no RA"])
    end = result.first_burst_end
    at_end = {i for i, (t, _) in enumerate(result.log) if abs(t - end) < 1e-9}
    assert at_end  # (requests did arrive at that instant)
    assert at_end <= result.unaware
    later = [s for t, s in result.log if t > end + 1e-9]
    assert result.refused_share == pytest.approx(sum(s != 200 for s in later) / len(later))


def test_latency_runs_every_cell_at_that_round_trip(tmp_path: Path) -> None:
    """``--latency`` runs each chosen cell at that round trip (its row is the cell's at that
    latency) and says so in the summary.
    """
    out = tmp_path / "table.md"
    name = "50 calls 1/s burst 10"
    sim.main(["--only", name, "--exact", "--latency", "0.05", "--out", str(out)])
    lines = out.read_text().splitlines()
    cell = next(c for c in sim.all_cells() if c.name == name)
    expected = sim.describe(sim.run_cell(attrs.evolve(cell, latency=0.05)))
    assert expected in lines
    assert expected != sim.describe(sim.run_cell(cell))  # (the latency matters here)
    assert lines[-1].endswith("of 1 cells meet their target (every cell at 50 ms round trip)")


def test_seeds_run_each_cell_with_each_draw_and_summarise_them(tmp_path: Path) -> None:
    """``--jitter``, ``--updates`` and ``--seeds`` vary the chosen cells: each seed's row is
    the cell with those settings and that seed, and the summary gives the median and spread
    over the seeds.
    """
    out = tmp_path / "table.md"
    name = "bucket 20/s RA 1"
    flags = ["--jitter", "0.5", "--updates", "60", "--seeds", "3"]
    sim.main(["--only", name, "--exact", *flags, "--out", str(out)])
    lines = out.read_text().splitlines()
    cell = next(c for c in sim.all_cells() if c.name == name)
    results = []
    for seed in range(3):
        varied = attrs.evolve(cell, name=f"{name} #{seed}", jitter=0.5, updates=60, seed=seed)
        results.append(sim.run_cell(varied))
        assert sim.describe(results[-1]) in lines
    ratios = sorted(float(f"{r.ratio:.2f}") for r in results)
    summary = next(line for line in lines if line.startswith(f"- {name}, 3 seeds:"))
    assert f"wall/(N/R) {ratios[1]:.2f} ({ratios[0]:.2f}-{ratios[2]:.2f})" in summary
