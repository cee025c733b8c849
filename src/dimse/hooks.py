"""Commands run on reception, like storescp's --exec-on-reception / --exec-on-eostudy.

Placeholders, as in dcmtk: `#p` the stored file (or the study's folder), `#f` its
name, `#a` the calling AE title, `#c` the called AE title, `#r` the peer's address,
and `#s` the Study Instance UID. They are substituted after the command line is
split, so a path with spaces stays one argument. The command runs in the
background: the archive never waits for it before answering.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from dimse.server import Peer
from dimse.storage import StoredHook, StoredInstance, StudyHook

log = logging.getLogger("dimse.hooks")

_PLACEHOLDER = re.compile("#[pfacrs]")


def expand(template: str, values: Mapping[str, str]) -> list[str]:
    """Split a command line and substitute the placeholders in each argument, in one
    pass: a value is never read for placeholders (an AE title may hold "#s")."""
    return [
        _PLACEHOLDER.sub(lambda found: values.get(found[0], ""), argument)
        for argument in shlex.split(template)
    ]


class CommandRunner:
    """Starts commands without blocking, keeps them referenced, logs their failures."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()

    def start(self, arguments: list[str]) -> None:
        task = asyncio.create_task(self._run(arguments))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, arguments: list[str]) -> None:
        try:
            process = await asyncio.create_subprocess_exec(*arguments)
        except OSError as error:
            log.error("cannot run %s: %s", arguments[0], error)
            return
        code = await process.wait()
        if code:
            log.warning("%s exited with status %d", shlex.join(arguments), code)

    async def wait(self) -> None:
        """Let running commands finish (at shutdown)."""
        if self._running:
            await asyncio.wait(set(self._running))


def _peer_values(peer: Peer) -> dict[str, str]:
    return {
        "#a": peer.calling_ae.strip(),
        "#c": peer.called_ae.strip(),
        "#r": peer.address.rsplit(":", 1)[0],
    }


def on_reception(template: str, runner: CommandRunner) -> StoredHook:
    async def hook(stored: StoredInstance) -> None:
        values = _peer_values(stored.peer)
        values |= {
            "#p": str(stored.path),
            "#f": stored.path.name,
            "#s": stored.instance.study_uid,
        }
        runner.start(expand(template, values))

    return hook


def on_study(template: str, runner: CommandRunner) -> StudyHook:
    async def hook(study_uid: str, folder: Path, peer: Peer) -> None:
        values = _peer_values(peer) | {"#p": str(folder), "#f": folder.name, "#s": study_uid}
        runner.start(expand(template, values))

    return hook
