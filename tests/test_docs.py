"""Every code example in README.md and docs/*.md runs, against the fake, as written.

A fenced ``python`` or ``sh`` block runs unless an HTML comment on the line before it says
otherwise (the comment is invisible on GitHub and in the docs site):

- ``<!-- doc-test: skip (reason) -->``: not run; the reason names what covers it instead.
- ``<!-- doc-test: server -->``: a command that starts ``nebius-datasets fake-server``; it is
  started, its two ``export`` lines read, and stopped with Ctrl-C.
- ``<!-- doc-test: pytest -->``: a test module, run by pytest in a directory of its own.

A ``python`` block runs as a script in a fresh interpreter (``-X dev -W error``) with
``NEBIUS_API_KEY`` and ``NEBIUS_BASE_URL`` pointing at a fake this test starts (100 datasets,
the same ids as ``nebius-datasets fake-server``); top-level ``await`` is allowed, and a
``test_*`` coroutine function without parameters that the block defines is awaited too. An
``sh`` block runs under ``bash -euo pipefail`` in an empty directory with the same two
variables; its ``export NEBIUS_...`` lines, placeholders for what the fake prints, are dropped.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import attrs
import pytest

from nebius_datasets_async.testing import FakeDatasetsServer

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(
    r"^(?:<!-- doc-test: (?P<mark>\w+)(?P<reason>[^>]*?) -->\n)?"
    r"```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
_RUNNER = """
import ast, asyncio, inspect, pathlib, sys

path = sys.argv[1]
source = pathlib.Path(path).read_text(encoding="utf-8")
code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__"}
if code.co_flags & inspect.CO_COROUTINE:
    asyncio.run(eval(code, namespace))
else:
    exec(code, namespace)
for name, value in list(namespace.items()):
    if name.startswith("test_") and inspect.iscoroutinefunction(value):
        if not inspect.signature(value).parameters:
            asyncio.run(value())
"""


@attrs.frozen
class Block:
    path: Path
    line: int
    lang: str
    mark: str | None
    reason: str
    body: str

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            line = text.count("\n", 0, match.start("lang")) + 1
            found.append(
                Block(
                    path,
                    line,
                    match["lang"],
                    match["mark"],
                    (match["reason"] or "").strip(),
                    match["body"],
                )
            )
    return found


ALL = blocks()
RUNNABLE = [b for b in ALL if b.lang in ("python", "sh") and b.mark is None]


def test_every_code_block_is_run_or_says_why_not() -> None:
    """A python or sh block is run by one of the tests below, or is marked with a reason; a
    mark this module does not know, or a block in another language that looks runnable, fails.
    """
    assert len(RUNNABLE) >= 9
    assert sum(b.mark == "pytest" for b in ALL) >= 2
    for block in ALL:
        assert block.mark in (None, "skip", "server", "pytest"), block.id
        if block.mark == "skip":
            assert block.reason.startswith("("), f"{block.id}: say why it is not run"
            assert len(block.reason) > 10, f"{block.id}: say why it is not run"
        if block.lang not in ("python", "sh"):
            assert block.lang == "text", f"{block.id}: say ```text for output, or a language"


def environ(fake: FakeDatasetsServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBIUS_", "PYTEST_"))}
    env.update(NEBIUS_API_KEY=fake.api_key, NEBIUS_BASE_URL=fake.base_url)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


async def run(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
async def test_example_runs(block: Block, tmp_path: Path) -> None:
    """The example runs to the end against the fake, with no traceback or warning."""
    async with FakeDatasetsServer(datasets=100) as fake:
        env = environ(fake)
        if block.lang == "python":
            script = tmp_path / "example.py"
            script.write_text(block.body, encoding="utf-8")
            runner = tmp_path / "run_example.py"
            runner.write_text(_RUNNER, encoding="utf-8")
            args = [sys.executable, "-X", "dev", "-W", "error", str(runner), str(script)]
        else:
            lines = [t for t in block.body.splitlines() if not t.startswith("export NEBIUS_")]
            args = ["bash", "-euo", "pipefail", "-c", "\n".join(lines)]
        code, out = await run(*args, env=env, cwd=tmp_path)
    assert code == 0, f"{block.id} failed:\n{out}"
    for trouble in ("Traceback", "Warning", "Unclosed", "Exception ignored"):
        assert trouble not in out, f"{block.id}:\n{out}"


@pytest.mark.parametrize(
    "block",
    [b for b in ALL if b.mark == "pytest"],
    ids=[b.id for b in ALL if b.mark == "pytest"],
)
async def test_pytest_example_passes(block: Block, tmp_path: Path) -> None:
    """A test module of the docs passes under pytest with the package's plugin."""
    (tmp_path / "test_example.py").write_text(block.body, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEBIUS_", "PYTEST_"))}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"]
    code, out = await run(*args, env=env, cwd=tmp_path)
    assert code == 0, out
    tests = len(re.findall(r"^async def test_", block.body, re.MULTILINE))
    assert tests > 0, block.id
    assert re.search(rf"\b{tests} passed\b", out), out


@pytest.mark.parametrize(
    "block",
    [b for b in ALL if b.mark == "server"],
    ids=[b.id for b in ALL if b.mark == "server"],
)
async def test_fake_server_example_prints_what_the_docs_use(block: Block) -> None:
    """The command that starts the fake prints the two export lines, and the dataset ids the
    other examples use are among the ids it prints.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEBIUS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"exec {block.body.strip()}", env=env, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not printed or printed[-1] != "# serving until Ctrl-C":
                printed.append((await proc.stdout.readline()).decode().rstrip("\n"))
                assert printed[-1] or not proc.stdout.at_eof(), printed
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0
    assert re.fullmatch(r"export NEBIUS_BASE_URL=http://127\.0\.0\.1:\d+", printed[0])
    assert re.fullmatch(r"export NEBIUS_API_KEY=fake-\w+", printed[1])
    ids = {line for line in printed if re.fullmatch(r"[0-9a-f]{32}", line)}
    used = {i for b in ALL for i in re.findall(r"\b[0-9a-f]{32}\b", b.body)}
    assert used, "the examples use dataset ids of the fake"
    assert used <= ids
