"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

DL_DRIVER = shutil.which("dl-driver") or str(Path(sys.executable).with_name("dl-driver"))
SERVERS_SH = Path(__file__).resolve().parent.parent / "scripts" / "servers.sh"


def mpirun(n: int) -> list[str]:
    """Open MPI's launcher for n ranks on this host (as root: --allow-run-as-root; past the cores: --oversubscribe)."""
    found = shutil.which("mpirun")
    assert found, "mpirun is missing: the test command installs Open MPI (openmpi-bin)"
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [found, "-np", str(n), "--oversubscribe", *root]


def start_servers(*names: str, env: dict[str, str] | None = None) -> list[str]:
    """Runs `servers.sh start [NAME...]`; returns the servers this call started (not those already running)."""
    out = subprocess.run([str(SERVERS_SH), "start", *names], check=True, capture_output=True, text=True, timeout=600, env=env)
    return [line.split(":", 1)[0] for line in out.stdout.splitlines() if ": starting on " in line]


def numpy_shapes(record_length: float, stdev: float, files: int) -> list[tuple[int, int]]:
    """DLIO's per-file sample shapes, computed with numpy itself (the reference our generator must match)."""
    np.random.seed(10)
    dim = int(math.sqrt(record_length))
    draws = np.random.normal(dim, stdev / 2 / math.sqrt(record_length), 2 * files)
    dims = [max(1, int(d)) for d in draws]
    return [(dims[2 * i], dims[2 * i + 1]) for i in range(files)]


def npy_shape(path: Path) -> tuple[int, ...]:
    """The shape in an .npy header, after checking the file holds exactly that many uint8 elements."""
    with path.open("rb") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
        data_start = f.tell()
    assert path.stat().st_size == data_start + int(np.prod(shape)) * dtype.itemsize, f"{path.name} is truncated"
    return shape


class FilesCreated:
    """Counts the files that appear in some folders while it is open, from the kernel's inotify events: each time a
    file is renamed into place (dl-driver writes every local file under a hidden name and renames it when complete),
    it counts once. A file written in place would not count: a test on it fails instead of passing."""

    IN_MOVED_TO = 0x80

    def __init__(self, *folders: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.names: list[str] = []
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            if self._libc.inotify_add_watch(self._fd, os.fsencode(folder), self.IN_MOVED_TO) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")

    def collect(self) -> list[str]:
        """The names written so far (hidden temporary files left out), in order."""
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except BlockingIOError:  # EAGAIN: no more events queued
                break
            offset = 0
            while offset < len(data):
                _, mask, _, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if name and mask & self.IN_MOVED_TO:
                    self.names.append(name)
        return self.names

    def close(self) -> None:
        os.close(self._fd)


class FaultyLink:
    """A TCP relay on 127.0.0.1 in front of a real server that spoils the first connections it accepts, as a
    throttling server or a broken network would: the first ``throttle`` are answered ``503 Slow Down`` (S3's
    throttling reply) once their request head has arrived, the next ``reset`` are reset by a TCP RST; every later one
    is relayed to the server unchanged; with ``hold``, no reply reaches a client before that event is set. ``spoiled``
    counts what it did."""

    _BODY = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
    SLOW_DOWN = (
        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
        + _BODY
    )

    def __init__(self, target: str, throttle: int, reset: int, hold: threading.Event | None = None) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._plan = ["throttle"] * throttle + ["reset"] * reset
        self._hold = hold
        self.relaying = threading.Event()  # set once a connection is relayed to the server
        self.spoiled = {"throttle": 0, "reset": 0}
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = threading.Event()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(conn)
            fault = self._plan.pop(0) if self._plan else None
            if fault == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                self.spoiled["reset"] += 1
            elif fault == "throttle":
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                conn.sendall(self.SLOW_DOWN)
                conn.close()
                self.spoiled["throttle"] += 1
            else:
                upstream = socket.create_connection(self._target)
                self._sockets.append(upstream)
                self.relaying.set()
                for a, b, hold in ((conn, upstream, None), (upstream, conn, self._hold)):
                    t = threading.Thread(target=self._pump, args=(a, b, hold), daemon=True)
                    t.start()
                    self._threads.append(t)

    @staticmethod
    def _shut(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)

    @classmethod
    def _pump(cls, source: socket.socket, sink: socket.socket, hold: threading.Event | None) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(1 << 20):
                if hold is not None:
                    hold.wait()
                sink.sendall(chunk)
        cls._shut(source)
        cls._shut(sink)

    def close(self) -> None:
        """Stops accepting, ends every relayed connection and waits for the relay's threads."""
        self._closed.set()
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (closing alone does not, on Linux)
        self._accepting.join()
        self._listener.close()
        for s in self._sockets:
            self._shut(s)
        for t in self._threads:
            t.join()
        for s in self._sockets:
            s.close()
