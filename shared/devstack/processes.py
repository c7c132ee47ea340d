from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

_PR_SET_PDEATHSIG = 1


def spawn(
    command: list[str], *, on_parent_death: int = signal.SIGTERM, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """`subprocess.Popen` in a session of its own (a Ctrl-C in the terminal reaches the
    launcher only, which stops its children in order), that the kernel signals with
    `on_parent_death` if the launcher dies without stopping it (SIGKILL, a crash): nothing
    it started outlives it. Linux only; the signal is tied to the thread that spawns, so
    it is asked for from the main thread only (a worker thread may end before the child)."""
    if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
        kwargs["preexec_fn"] = _die_with_parent(on_parent_death)
    return subprocess.Popen(command, start_new_session=True, **kwargs)


def _die_with_parent(sig: int):  # type: ignore[no-untyped-def]
    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to signal this process when its parent dies (Linux)."""
    if sys.platform == "linux":
        _die_with_parent(sig)()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class PortBusy(RuntimeError):
    """A port the stack needs is taken: said in one line, with the setting that moves it."""

    def __init__(self, port: int, what: str, setting: str) -> None:
        super().__init__(
            f"port {port} ({what}) is in use: stop what listens there, or set {setting} to "
            "a free port"
        )


def ensure_free(port: int, what: str, setting: str, host: str = "127.0.0.1") -> None:
    if port_in_use(host, port):
        raise PortBusy(port, what, setting)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(host: str, port: int, *, timeout: float, process=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before listening on {port}"
            )
        if port_in_use(host, port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def stop_process(process: subprocess.Popen | None, sig: int, *, timeout: float) -> None:
    """Send `sig` and wait up to `timeout` seconds, then kill."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
