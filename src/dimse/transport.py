"""What the asyncio client and server share: the socket side of a Connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from dimse.connection import Connection

READ_SIZE = 1 << 20


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None waits forever.

    `connect`: TCP connection set-up. `acse`: waiting for the A-ASSOCIATE answer,
    and the ARTIM timer (PS3.8 §9.1.5). `dimse`: waiting for a response to a
    request. `idle`: an established association on which nothing arrives.
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
                await self.writer.drain()

    async def read(self) -> bytes:
        """The next bytes from the peer; b"" at end of stream, reset or ARTIM expiry.

        The wait is the ARTIM timeout while the timer runs, else the idle timeout:
        the sans-I/O core keeps no clock of its own.
        """
        timeout = self.timeouts.acse if self.connection.artim_running else self.timeouts.idle
        try:
            return await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
        except ConnectionError:
            return b""

    async def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):  # already gone
            await self.writer.wait_closed()
