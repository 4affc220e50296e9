"""Smoke test of the benchmark harness: it runs at tiny sizes and writes every row.

It asserts only that the harness works and reports every scenario and contender, never a
timing: speed is measured in benchmarks/, not in tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_harness_produces_every_row(tmp_path: Path) -> None:
    """`run.py --tiny` completes and its table has a row per scenario and contender."""
    out = tmp_path / "RESULTS.md"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--out", str(out)],
        check=True, capture_output=True, timeout=240,
    )  # fmt: skip
    text = out.read_text()
    rows = {
        ("1. Client overhead", "ours"), ("1. Client overhead", "aiohttp"),
        ("1. Client overhead", "httpx"), ("2. Latency-bound", "ours"),
        ("2. Latency-bound", "aiohttp"), ("3a. Memory", "ours"), ("3a. Memory", "gather"),
        ("3b. Memory", "ours"), ("3b. Memory", "gather"), ("4. Rate-limited", "ours"),
        ("4. Rate-limited", "openai_style"), ("5. Outage", "ours"),
        ("5. Outage", "openai_style"), ("6. Token bucket 500/s", "ours"),
        ("7. Service", "service"), ("7. One bulk run", "mixed"),
        ("7. Two bulk runs", "two_bulk"),
        ("8. Fixed window", "ours"), ("9. Fleet of 2", "fleet"),
    }  # fmt: skip
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    for title, contender in rows:
        assert any(line.startswith(f"| {title}") and f"| {contender} |" in line for line in lines)
    for figure in ("Client overhead:", "Latency-bound:", "Memory growth", "Rate-limited:",
                   "Outage:", "msgspec", "pydantic v2", "ours (json + cattrs)",
                   "The gate's targets", "x N/R", "A fleet sharing one key"):  # fmt: skip
        assert figure in text
