"""`dimse serve --workers N`: several processes share the port and the archive."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from conftest import Processes, dimse_command, free_port, run, stored_files
from dimse.sender import Client, Kind
from test_sender import _generated


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_two_processes_serve_one_archive(processes: Processes, tmp_path: Path) -> None:
    port, out = free_port(), tmp_path / "archive"
    server = processes.server(
        dimse_command("serve", port, "-od", out, "--bind", "127.0.0.1", "--workers", 2), port
    )
    deadline = time.monotonic() + 15
    while not (workers := _children(server.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 1
    files = _generated(tmp_path / "src", 48)
    client = Client("127.0.0.1", port, called_ae="DIMSE", associations=6, async_ops=4)
    for path in files:
        client.add_request(path)
    results = asyncio.run(client.send())
    assert [r.kind for r in results] == [Kind.SUCCESS] * len(files)
    assert len(stored_files(out)) == len(files)
    check = run(dimse_command("index", "check", "-od", out))
    assert check.returncode == 0 and f"{len(files)} indexed" in check.stdout

    server.send_signal(signal.SIGTERM)
    assert server.wait(30) == 0
    for worker in workers:  # the worker was told to stop and did
        assert not Path(f"/proc/{worker}").exists() or _zombie(worker)
    assert list((out / ".incoming").iterdir()) == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True
