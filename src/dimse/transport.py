"""What the asyncio client and server share: the socket side of a Connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from dimse import events as ev
from dimse.connection import Connection
from dimse.pdu import BufferBudget

#: A Stream stops reading the socket while this much waits unread: what a slow
#: consumer leaves stays in the kernel's buffers, not in our memory.
STREAM_LIMIT = 1 << 17

log = logging.getLogger("dimse.transport")


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed, unless DIMSE_EVENT_LOOP=asyncio; None
    for asyncio's own.

    The pipeline is CPU-bound on two cores: with uvloop on both sides, 1000 small
    C-STOREs took ~20 % less CPU per process and 5-8 % less wall time (three
    interleaved A/B series of 8-14 transfers).
    """
    choice = os.environ.get("DIMSE_EVENT_LOOP", "uvloop")
    if choice == "asyncio":
        return None
    if choice != "uvloop":
        raise ValueError(f"DIMSE_EVENT_LOOP={choice}: expected uvloop or asyncio")
    try:
        import uvloop
    except ImportError:  # not built for this platform (Windows): asyncio's loop
        return None
    return uvloop.new_event_loop


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None waits forever.

    `connect`: TCP connection set-up. `acse`: waiting for the A-ASSOCIATE answer,
    and the ARTIM timer (PS3.8 §9.1.5). `dimse`: waiting for a response to a
    request. `idle`: an established association on which no whole PDU arrives (a
    PDU that has started must be complete within it, counted from its first byte),
    and a peer that reads nothing of what we send.
    """

    connect: float | None = 30.0
    acse: float | None = 30.0
    dimse: float | None = 60.0
    idle: float | None = 300.0


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Nagle + delayed ACK would hold every small response ~40-200 ms."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Stream(asyncio.BufferedProtocol):
    """A socket as an asyncio protocol that receives straight into the Connection's
    PDU buffer (:meth:`Connection.get_buffer`), the one each PDU is handed over from.

    In place of asyncio's StreamReader/StreamWriter, which copied every received
    byte three times (into the reader's buffer, out of it, into our PDU reader) and
    grew buffers by reallocation: on 100 MB images that was half of the receiving
    event loop's time here. The driver parses what arrived with
    :meth:`Connection.next_events` after :meth:`wait`.
    """

    def __init__(
        self, connection: Connection, on_connected: Callable[[Stream], object] | None = None
    ) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        # Called once connected: a client's TLS after its handshake, never when it fails;
        # a server makes its TLS transports itself (Server._accept_tls).
        self._on_connected = on_connected
        #: Asked after each receive: True stops reading until the next wait().
        self.gate: Callable[[], bool] | None = None
        self._fresh = False  # bytes arrived since the last wait()
        self._eof = False
        self._waiting: asyncio.Future[None] | None = None  # wait() waits for bytes
        self._draining: asyncio.Future[None] | None = None  # drain() waits for room
        self._writable = True
        self._closed = asyncio.get_running_loop().create_future()

    # --- asyncio's side -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports implement
        # asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(transport)
        # Now, not when a task gets round to it: over TLS, bytes that came with the
        # handshake are received right after this call, and a Connection that has
        # not started (Sta1) drops what it receives.
        self.connection.connection_made()
        if self._on_connected is not None:
            self._on_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        # The hint is only a recommendation (asyncio's -1, uvloop's 256 KB): the PDU
        # being received says how much room is useful.
        return self.connection.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.connection.buffer_updated(nbytes)
        self._fresh = True
        if self.transport is not None and (
            # What waits beyond the PDU being received stays in the kernel's buffers.
            self.connection.backlog >= STREAM_LIMIT or (self.gate is not None and self.gate())
        ):
            self.transport.pause_reading()
        self._wake(self._waiting)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(self._waiting)
        return False  # close our side too: a DICOM peer that stops sending is done

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake(self._waiting)
        self._wake(self._draining)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writable = False

    def resume_writing(self) -> None:
        self._writable = True
        self._wake(self._draining)

    @property
    def writable(self) -> bool:
        """The transport holds less than its high-water mark unsent."""
        return self._writable

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- ours -----------------------------------------------------------------------

    async def wait(self) -> bool:
        """Until bytes arrive (True) or the stream ends (False); reading resumes."""
        while not self._fresh and not self._eof:
            self._waiting = asyncio.get_running_loop().create_future()
            try:
                await self._waiting
            finally:
                self._waiting = None
        fresh, self._fresh = self._fresh, False
        if self.transport is not None and not self._eof:
            self.transport.resume_reading()  # a no-op unless it was paused
        return fresh

    def writelines(self, data: list[bytes | memoryview]) -> None:
        assert self.transport is not None
        self.transport.writelines(data)

    async def drain(self) -> None:
        """Wait while the transport holds more than its high-water mark unsent."""
        while not self._writable and not self._closed.done():
            self._draining = asyncio.get_running_loop().create_future()
            try:
                await self._draining
            finally:
                self._draining = None

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)


DEFAULT_TIMEOUTS = Timeouts()

#: Bytes of partially received PDUs all associations may hold together: 256
#: associations each in the middle of a 1 MiB PDU (our default maximum).
DEFAULT_MAX_BUFFERED = 256 << 20


class ReadBudget:
    """The asyncio side of a :class:`~dimse.pdu.BufferBudget`: waiting for room, in turn.

    Shared by every association of a server (one event loop: no locks). Waiters are
    served first come, first served, so a large PDU is not starved by small ones.
    """

    def __init__(self, limit: int) -> None:
        self.ledger = BufferBudget(limit)
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Associations that stopped reading until the budget has room."""
        return len(self._waiters)

    def try_reserve(self, size: int) -> bool:
        """Reserve `size` bytes if they fit now and nobody waits before us."""
        return not self._waiters and self.ledger.try_reserve(size)

    async def reserve(self, size: int) -> None:
        """Reserve `size` bytes, waiting while they do not fit (cancel to give up)."""
        if self.try_reserve(size):
            return
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # granted in the same turn as the cancellation
            else:
                self._waiters.remove(entry)
                self._grant()  # the next in line may fit where this one did not
            raise

    def release(self, size: int) -> None:
        self.ledger.release(size)
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.ledger.try_reserve(self._waiters[0][0]):
            _, waiter = self._waiters.popleft()
            waiter.set_result(None)


class Link:
    """A Connection bound to a stream: flushes its output and closes when told to."""

    def __init__(
        self, stream: Stream, timeouts: Timeouts, budget: ReadBudget | None = None
    ) -> None:
        self.connection = stream.connection
        self.stream = stream
        self.timeouts = timeouts
        self.budget = budget
        assert stream.transport is not None
        if budget is not None:
            stream.gate = self._must_reserve  # stop receiving a PDU before it is reserved
        peer = stream.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._artim: tuple[int, float] | None = None  # (which start, deadline) of ARTIM
        self._pdu: tuple[int, float] | None = None  # (which PDU, deadline) of a partial PDU
        self._arrived = time.monotonic()  # when the last bytes came
        self._held: tuple[int, int] | None = None  # (which PDU, bytes) reserved in budget
        #: Why the last read timed out: "artim", "pdu" (a PDU not complete in time),
        #: "budget" (no room in the budget for it in that time) or "idle".
        self.expired = ""
        self._dropped = False  # we dropped a peer that read nothing: read no more either
        self._flushing = False  # a flush_soon() is scheduled

    def flush(self) -> None:
        """Hand what the connection wants to send to the socket; close if it is done."""
        data = self.connection.data_to_send()
        if data and not self.stream.is_closing():
            self.stream.writelines(data)
        if self.connection.closing and not self.stream.is_closing():
            self.stream.close()

    def flush_soon(self) -> None:
        """flush() once this turn of the event loop is over, so that what several
        tasks send in one turn (the responses of one filing round) leaves in one
        system call rather than one each."""
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flushing = False
        self.flush()

    async def drain(self) -> None:
        self.flush()
        await self.writable()

    async def writable(self) -> None:
        """Until the transport holds less than its high-water mark unsent."""
        if self.stream.writable:
            return  # the usual case: no timer to arm
        if not self.stream.is_closing():
            # A lost connection is reported by the read side, as Evt17.
            with contextlib.suppress(ConnectionError):
                try:
                    # asyncio.timeout, not wait_for: no task, no extra turn of the loop
                    # per drain, in which more input would pile up in the reader.
                    async with asyncio.timeout(self.timeouts.idle):
                        await self.stream.drain()
                except TimeoutError:
                    # The peer reads nothing: what we send piles up, and a close would
                    # wait for it forever. Drop the connection; the read side sees Evt17.
                    log.warning(
                        "%s: nothing written for %s s; dropped", self.peer, self.timeouts.idle
                    )
                    self._dropped = True
                    self.stream.abort()

    async def receive(self) -> list[ev.Event]:
        """The events of the PDUs that arrive next; at the end of the stream, Evt17's.

        The wait is what is left of ARTIM while the timer runs, counted from its start
        and not from the last bytes received, so a peer that drips a PDU byte by byte
        cannot hold the connection (PS3.8 §9.1.5). Otherwise a PDU that has started
        must be complete within the idle timeout from its first byte, for the same
        reason; between PDUs the idle timeout runs from now. TimeoutError when the wait
        runs out (:attr:`expired` says which): the sans-I/O core keeps no clock.

        With a budget, a PDU whose header is here is reserved in full before reading
        on; while it does not fit, nothing is read (the bytes wait in the kernel). Only
        once an association exists: before, the request is bounded by its own limit
        (MAX_CONTROL_PDU) and ARTIM, and reserving what a 6-byte header declares would
        let peers nobody admitted block the budget for everyone.
        """
        connection = self.connection
        if self._dropped:  # what the peer sent before we dropped it is not read
            return connection.transport_closed()
        self.consumed()
        events = connection.next_events()  # whole PDUs that came while we were busy
        if events:
            self._arrived = time.monotonic()
            return events
        partial = connection.partial_pdu
        now = time.monotonic()
        if connection.artim_running:
            self.expired, timeout = "artim", self.timeouts.acse
            if timeout is not None:
                started = connection.artim_starts
                if self._artim is None or self._artim[0] != started:
                    self._artim = (started, now + timeout)
                timeout = max(self._artim[1] - now, 0.0)
        elif partial is not None:
            self.expired, timeout = "pdu", self.timeouts.idle
            if timeout is not None:
                if self._pdu is None or self._pdu[0] != partial.number:
                    self._pdu = (partial.number, self._arrived + timeout)
                timeout = max(self._pdu[1] - now, 0.0)
        else:
            self.expired, timeout = "idle", self.timeouts.idle
        async with asyncio.timeout(timeout):  # no task per read, unlike wait_for
            if self._must_reserve():
                assert partial is not None
                await self._reserve(partial.number, partial.size)
            more = await self.stream.wait()
        self._arrived = time.monotonic()
        events = connection.next_events()
        return events if more else events + connection.transport_closed()

    def _must_reserve(self) -> bool:
        """A PDU has started whose size is not reserved in the budget yet, and the
        budget cannot take it at once. When it can, it is reserved here: stopping and
        resuming the socket for every PDU halved the rate of 16 KB PDUs (storescu's)."""
        if self.budget is None or self.connection.association is None:
            return False
        partial = self.connection.partial_pdu
        if partial is None or partial.size == 0 or self._held is not None:
            return False
        if self.budget.try_reserve(partial.size):
            self._held = (partial.number, partial.size)
            return False
        return True

    async def _reserve(self, number: int, size: int) -> None:
        """Hold `size` bytes of the budget for PDU `number` before reading more of it."""
        if self._held is not None:
            return  # reserved by an earlier read of this PDU
        assert self.budget is not None
        timer = self.expired
        self.expired = "budget" if timer == "pdu" else timer
        await self.budget.reserve(size)
        self.expired = timer
        self._held = (number, size)

    def consumed(self) -> None:
        """Release the budget held for a PDU that is now whole and has been acted on.

        Called before each read; a driver may call it as soon as it has acted on a
        read's events. Nothing happens while that PDU is still partial.
        """
        held = self._held
        if held is not None:
            partial = self.connection.partial_pdu
            if partial is None or partial.number != held[0]:
                self._release()

    def _release(self) -> None:
        if self._held is not None:
            size, self._held = self._held[1], None
            assert self.budget is not None
            self.budget.release(size)

    async def close(self) -> None:
        self._release()
        if not self.stream.is_closing():
            self.stream.close()
        try:
            # A close waits until all is written: bounded, for a peer that reads nothing.
            async with asyncio.timeout(self.timeouts.acse):
                await self.stream.wait_closed()
        except TimeoutError:
            self.stream.abort()
