"""scripts/servers.sh starts and stops servers by name and says which ones it started, so the test command and the
servers fixture stop only what they started (a server already running, another session's, keeps running)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests_support import SERVERS_SH, start_servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_start_reports_only_the_servers_it_started_and_stop_takes_names(tmp_path: Path) -> None:
    env = {**os.environ, "DL_DRIVER_SERVERS_DIR": str(tmp_path / "servers"), "DL_DRIVER_MOTO_PORT": str(free_port())}

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(SERVERS_SH), "status", "moto"], capture_output=True, text=True, env=env, check=False)

    try:
        assert start_servers("moto", env=env) == ["moto"]
        assert status().returncode == 0, status().stdout
        assert start_servers("moto", env=env) == [], "a running server is not reported as started (nor stopped later)"
    finally:
        subprocess.run([str(SERVERS_SH), "stop", "moto"], check=True, env=env, capture_output=True, timeout=120)
    assert status().returncode == 3 and "stopped" in status().stdout
    bad = subprocess.run([str(SERVERS_SH), "stop", "mongo"], capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 1 and "unknown server 'mongo'" in bad.stderr
