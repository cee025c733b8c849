"""What the asyncio client and server share: the socket side of a Connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass

from dimse.connection import Connection

READ_SIZE = 1 << 18
#: asyncio's StreamReader stops reading the socket at twice this: what a slow consumer
#: leaves unread stays in the kernel's buffers, not in our memory.
STREAM_LIMIT = 1 << 17

log = logging.getLogger("dimse.transport")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None waits forever.

    `connect`: TCP connection set-up. `acse`: waiting for the A-ASSOCIATE answer,
    and the ARTIM timer (PS3.8 §9.1.5). `dimse`: waiting for a response to a
    request. `idle`: an established association on which nothing arrives, and a peer
    that reads nothing of what we send.
    """

    connect: float | None = 30.0
    acse: float | None = 30.0
    dimse: float | None = 60.0
    idle: float | None = 300.0


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    """Nagle + delayed ACK would hold every small response ~40-200 ms."""
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


DEFAULT_TIMEOUTS = Timeouts()


class Link:
    """A Connection bound to a stream: flushes its output and closes when told to."""

    def __init__(
        self,
        connection: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeouts: Timeouts,
    ) -> None:
        self.connection = connection
        self.reader = reader
        self.writer = writer
        self.timeouts = timeouts
        set_nodelay(writer)
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._artim: tuple[int, float] | None = None  # (which start, deadline) of ARTIM
        self._dropped = False  # we dropped a peer that read nothing: read no more either

    def flush(self) -> None:
        """Hand what the connection wants to send to the socket; close if it is done."""
        data = self.connection.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.writelines(data)
        if self.connection.closing and not self.writer.is_closing():
            self.writer.close()

    async def drain(self) -> None:
        self.flush()
        if not self.writer.is_closing():
            # A lost connection is reported by the read side, as Evt17.
            with contextlib.suppress(ConnectionError):
                try:
                    # asyncio.timeout, not wait_for: no task, no extra turn of the loop
                    # per drain, in which more input would pile up in the reader.
                    async with asyncio.timeout(self.timeouts.idle):
                        await self.writer.drain()
                except TimeoutError:
                    # The peer reads nothing: what we send piles up, and a close would
                    # wait for it forever. Drop the connection; the read side sees Evt17.
                    log.warning(
                        "%s: nothing written for %s s; dropped", self.peer, self.timeouts.idle
                    )
                    self._dropped = True
                    self.writer.transport.abort()

    async def read(self) -> bytes:
        """The next bytes from the peer; b"" at end of stream or reset.

        The wait is what is left of ARTIM while the timer runs, counted from its start
        and not from the last bytes received, so a peer that drips a PDU byte by byte
        cannot hold the connection (PS3.8 §9.1.5); else the idle timeout. TimeoutError
        when it runs out: the sans-I/O core keeps no clock of its own.
        """
        if self._dropped:
            return b""  # what the peer sent before we dropped it is not read
        timeout = self.timeouts.idle
        if self.connection.artim_running:
            timeout = self.timeouts.acse
            if timeout is not None:
                now, started = time.monotonic(), self.connection.artim_starts
                if self._artim is None or self._artim[0] != started:
                    self._artim = (started, now + timeout)
                timeout = max(self._artim[1] - now, 0.0)
        try:
            async with asyncio.timeout(timeout):  # no task per read, unlike wait_for
                return await self.reader.read(READ_SIZE)
        except ConnectionError:
            return b""

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        try:
            with contextlib.suppress(ConnectionError, OSError):  # already gone
                # A close waits until all is written: bounded, for a peer that reads nothing.
                await asyncio.wait_for(self.writer.wait_closed(), self.timeouts.acse)
        except TimeoutError:
            self.writer.transport.abort()
