"""One DICOM association as a sans-I/O object: bytes in, events and bytes out.

The driver (see :mod:`dimse.transport`) owns the socket and the clock. It feeds
received bytes to :meth:`Connection.receive_data`, acts on the returned events,
calls the primitives (accept, send_message, release, ...) and writes whatever
:meth:`Connection.data_to_send` returns. It closes the socket when
:attr:`Connection.closing` is set, and honours :attr:`Connection.artim_running`
by calling :meth:`Connection.artim_expired` after its ARTIM timeout.
:attr:`Connection.partial_pdu` tells it that a PDU has started to arrive, so it
can time that PDU and account for the memory it will take.

Every (state, event) pair goes through :func:`dimse.upper_layer.lookup`, so the
behaviour is exactly PS3.8 Table 9-10.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from dimse import events as ev
from dimse.dimse import Message, MessageAssembler, encode_command, fragments
from dimse.errors import AbortReason, LocalProtocolError, ProtocolError
from dimse.negotiation import DEFAULT_MAX_PDU, Association, provider_rejection, read_acceptance
from dimse.pdu import (
    MIN_RECEIVE,
    PDU,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    MaximumLength,
    PDataTF,
    PDUReader,
    encode,
)
from dimse.upper_layer import Action, Event, State, lookup, next_state

_EVENT_OF_PDU: dict[type, Event] = {
    AAssociateAC: Event.EVT3,
    AAssociateRJ: Event.EVT4,
    AAssociateRQ: Event.EVT6,
    PDataTF: Event.EVT10,
    AReleaseRQ: Event.EVT12,
    AReleaseRP: Event.EVT13,
    AAbort: Event.EVT16,
}

#: PDV size used when the peer announced no maximum length.
UNLIMITED_PDV = 4 << 20

Buffer = bytes | memoryview


_CLOSED = frozenset({State.STA1})


class PartialPDU(NamedTuple):
    """A PDU that has started to arrive: its number in the stream, its whole size.

    `size` (header included) is 0 until the 6-byte header is here.
    """

    number: int
    size: int


_LOCAL_PRIMITIVES = frozenset({Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14})


class Connection:
    """The upper layer of one association plus DIMSE message assembly.

    Pass the A-ASSOCIATE-RQ to act as association-requestor, nothing to accept one.
    """

    def __init__(self, request: AAssociateRQ | None = None) -> None:
        self.request = request
        self.requestor = request is not None
        self.state = State.STA1
        self.association: Association | None = None
        #: How many times ARTIM was started (or restarted): the driver's timer runs from
        #: a start, not from the last bytes received.
        self.artim_starts = 0
        self._artim_running = False
        self.closing = False
        self._outgoing: list[Buffer] = []
        self._events: list[ev.Event] = []
        self._reader = PDUReader(DEFAULT_MAX_PDU)
        self._unreadable = False
        self._scratch = bytearray(MIN_RECEIVE)  # receives what is dropped unread
        self._assembler = MessageAssembler()
        self._release_deferred = False
        self._pdu: PDU | None = None
        self._error: ProtocolError | None = None
        self._max_pdv = UNLIMITED_PDV

    # --- what the driver reads ----------------------------------------------------

    def data_to_send(self) -> list[Buffer]:
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def established(self) -> bool:
        return self.state is State.STA6

    @property
    def artim_running(self) -> bool:
        return self._artim_running

    @artim_running.setter
    def artim_running(self, running: bool) -> None:
        if running:  # "start (or restart if already started) ARTIM" (PS3.8 Tables 9-6..9-9)
            self.artim_starts += 1
        self._artim_running = running

    @property
    def partial_pdu(self) -> PartialPDU | None:
        """The PDU of which some bytes are buffered but not all, if any.

        The core keeps no clock: the driver times a PDU from its first byte (its
        number changes when the next one starts) and reserves its size.
        """
        reader = self._reader
        buffered, size = reader.buffered, reader.pending
        if not buffered or 0 < size <= buffered or self._unreadable or self.state in _CLOSED:
            return None  # nothing, or a whole PDU that next_events() will read
        return PartialPDU(reader.count, size)

    # --- transport indications ----------------------------------------------------

    def connection_made(self) -> list[ev.Event]:
        """The transport connection is open (Evt1 + Evt2 for a requestor, Evt5 else)."""
        if self.requestor:
            self._run(Event.EVT1)
            return self._run(Event.EVT2)
        return self._run(Event.EVT5)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ev.Event]:
        """Bytes from the peer; empty means the peer closed the connection (Evt17)."""
        if not data:
            return self.next_events() + self.transport_closed()
        if self._reading:
            self._reader.feed(data)
        return self.next_events()

    # The asyncio.BufferedProtocol shape, for drivers that receive in place: bytes go
    # into get_buffer()'s room, buffer_updated() counts them, next_events() reads them.

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go: the PDU reader's own buffer, or a scratch
        area whose bytes are dropped when nothing more may be read."""
        if self._reading:
            return self._reader.get_buffer()
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._reading:
            self._reader.buffer_updated(nbytes)

    @property
    def _reading(self) -> bool:
        # Transport gone (PS3.8 §9.2), or the stream lost its framing after an
        # invalid PDU: nothing after it can be read as PDUs, so nothing is.
        return self.state not in (State.STA1, State.STA4) and not self._unreadable

    @property
    def backlog(self) -> int:
        """Bytes received beyond the PDU being received (a driver behind on
        next_events()); a driver stops receiving while there are too many."""
        reader = self._reader
        return max(reader.buffered - reader.pending, 0) if self._reading else 0

    def next_events(self) -> list[ev.Event]:
        """The events of every whole PDU received so far."""
        events: list[ev.Event] = []
        # _run() may close the connection, or abort it for a PDU with invalid content:
        # either way nothing after that PDU is read, even when more was received.
        while self.state not in _CLOSED and not self._unreadable:
            try:
                pdu = self._reader.next_pdu()
                if pdu is None:
                    break
                events += self._run(_EVENT_OF_PDU[type(pdu)], pdu)
            except ProtocolError as error:
                self._unreadable = True
                events += self._run(Event.EVT19, error=error)
                break
        return events

    def transport_closed(self) -> list[ev.Event]:
        """The peer closed the transport connection (Evt17)."""
        return self._run(Event.EVT17) if self.state is not State.STA1 else []

    def artim_expired(self) -> list[ev.Event]:
        """The driver's ARTIM timer ran out (Evt18)."""
        return self._run(Event.EVT18) if self.artim_running else []

    # --- local primitives -----------------------------------------------------------

    def accept(self, ac: AAssociateAC, association: Association) -> None:
        """A-ASSOCIATE response (accept), Evt7."""
        self.association = association
        self._run(Event.EVT7, ac)

    def reject(self, rj: AAssociateRJ) -> None:
        """A-ASSOCIATE response (reject), Evt8."""
        self._run(Event.EVT8, rj)

    def send_message(self, context_id: int, message: Message) -> None:
        """Send a DIMSE command set (P-DATA request, Evt9)."""
        self._check_context(context_id)
        data = encode_command(message)
        self._run(Event.EVT9, payload=list(fragments(context_id, True, data, self._max_pdv, True)))

    def send_data(self, context_id: int, data: Buffer, last: bool) -> None:
        """Send (part of) a data set; `last` marks its final fragment (Evt9)."""
        self._check_context(context_id)
        buffers = list(fragments(context_id, False, data, self._max_pdv, last))
        self._run(Event.EVT9, payload=buffers)

    def release(self) -> None:
        """A-RELEASE request, Evt11."""
        self._run(Event.EVT11)

    def accept_release(self) -> None:
        """A-RELEASE response, Evt14; in a collision it waits for the peer's answer."""
        if self.state is State.STA10:
            self._release_deferred = True  # answered once the peer's RP arrives (Sta12)
            return
        self._run(Event.EVT14)

    def abort(self) -> None:
        """A-ABORT request, Evt15; a no-op when the association is already gone."""
        if self.state not in (State.STA1, State.STA13):
            self._run(Event.EVT15)

    # --- the machine ----------------------------------------------------------------

    def _check_context(self, context_id: int) -> None:
        if self.association is None or context_id not in self.association.contexts:
            raise LocalProtocolError(f"presentation context {context_id} was not accepted")

    def _run(
        self,
        event: Event,
        pdu: PDU | None = None,
        *,
        payload: list[Buffer] | None = None,
        error: ProtocolError | None = None,
    ) -> list[ev.Event]:
        action = lookup(self.state, event)
        if action is None:
            if event in _LOCAL_PRIMITIVES and not self._gone:
                raise LocalProtocolError(f"{event.value} is not allowed in {self.state.name}")
            # A received PDU with no action, or an answer to an indication that was
            # overtaken by an abort in the same read (the caller gets both at once).
            return []
        self._pdu, self._error = pdu, error
        acceptable = True
        try:
            if action is Action.AE_6:
                acceptable = self._ae_6()
            else:
                _ACTIONS[action](self, payload)
        except ProtocolError as failure:
            # The PDU was well formed but its content is not (a DIMSE command set,
            # an A-ASSOCIATE-AC that answers what was not asked): Evt19 from here.
            self._unreadable = True
            return self._drain() + self._run(Event.EVT19, error=failure)
        before = self.state
        self.state = next_state(action, requestor=self.requestor, acceptable=acceptable)
        if self.state is State.STA1 and before is not State.STA1:
            self.artim_running = False
            self.closing = True
            self._events.append(ev.ConnectionClosed())
        if self.state is State.STA12 and self._release_deferred:
            self._release_deferred = False
            return self._drain() + self._run(Event.EVT14)
        return self._drain()

    @property
    def _gone(self) -> bool:
        """Aborted or closed: a primitive answering an earlier indication is moot."""
        return self.state is State.STA13 or (self.state is State.STA1 and self.closing)

    def _drain(self) -> list[ev.Event]:
        out, self._events = self._events, []
        return out

    def _send(self, pdu: PDU) -> None:
        self._outgoing.append(encode(pdu))

    def _emit(self, event: ev.Event) -> None:
        self._events.append(event)

    # Actions of PS3.8 Tables 9-6 to 9-9; each gets the payload of a P-DATA request.

    def _nothing(self, _: list[Buffer] | None) -> None:
        pass

    def _ae_2(self, _: list[Buffer] | None) -> None:
        assert self.request is not None
        announced = self.request.user_item(MaximumLength)
        self._reader.max_pdata_length = announced.max_length if announced else 0
        self._send(self.request)

    def _ae_3(self, _: list[Buffer] | None) -> None:
        assert isinstance(self._pdu, AAssociateAC) and self.request is not None
        self.association = read_acceptance(self.request, self._pdu)
        self._set_peer_max(self.association.peer_max_pdu)
        self._emit(ev.AssociationAccepted(self.association))

    def _ae_4(self, _: list[Buffer] | None) -> None:
        assert isinstance(self._pdu, AAssociateRJ)
        self._emit(ev.AssociationRejected(self._pdu))

    def _start_artim(self, _: list[Buffer] | None) -> None:
        self.artim_running = True

    def _ae_6(self) -> bool:
        assert isinstance(self._pdu, AAssociateRQ)
        self.artim_running = False
        self.request = self._pdu
        rejection = provider_rejection(self._pdu)
        if rejection is not None:
            self._send(rejection)
            self.artim_running = True
            return False
        self._emit(ev.AssociationRequested(self._pdu))
        return True

    def _ae_7(self, _: list[Buffer] | None) -> None:
        assert isinstance(self._pdu, AAssociateAC) and self.association is not None
        self._reader.max_pdata_length = self.association.max_pdu
        self._set_peer_max(self.association.peer_max_pdu)
        self._send(self._pdu)
        self._emit(ev.AssociationAccepted(self.association))

    def _ae_8(self, _: list[Buffer] | None) -> None:
        assert isinstance(self._pdu, AAssociateRJ)
        self._send(self._pdu)
        self.artim_running = True

    def _send_pdata(self, payload: list[Buffer] | None) -> None:
        assert payload is not None
        self._outgoing += payload

    def _indicate_pdata(self, _: list[Buffer] | None) -> None:
        assert isinstance(self._pdu, PDataTF) and self.association is not None
        for pdv in self._pdu.pdvs:
            if pdv.context_id not in self.association.contexts:
                # A PDV must use a presentation context accepted at negotiation
                # (PS3.8 §9.3.5.1, §7.1.1.14); anything else is aborted, not indicated.
                raise ProtocolError(
                    f"PDV on presentation context {pdv.context_id}, which was not accepted"
                )
            event = self._assembler.feed(pdv)
            if event is not None:
                self._emit(event)

    def _ar_1(self, _: list[Buffer] | None) -> None:
        self._send(AReleaseRQ())

    def _indicate_release(self, _: list[Buffer] | None) -> None:
        self._emit(ev.ReleaseRequested())

    def _confirm_release(self, _: list[Buffer] | None) -> None:
        self._emit(ev.ReleaseConfirmed())

    def _ar_4(self, _: list[Buffer] | None) -> None:
        self._send(AReleaseRP())
        self.artim_running = True

    def _stop_artim(self, _: list[Buffer] | None) -> None:
        self.artim_running = False

    def _ar_9(self, _: list[Buffer] | None) -> None:
        self._send(AReleaseRP())

    def _aa_1(self, _: list[Buffer] | None) -> None:
        if self._error is not None or self._pdu is not None:
            # Reached from a PDU received in Sta2: the provider aborts, not a user.
            self._abort_for_peer_error()
        else:
            self._send(AAbort(AbortSource.SERVICE_USER, 0))
        self.artim_running = True

    def _aa_3(self, _: list[Buffer] | None) -> None:
        assert isinstance(self._pdu, AAbort)
        self._emit(ev.Aborted(self._pdu.source, self._pdu.reason))

    def _aa_2(self, _: list[Buffer] | None) -> None:
        if isinstance(self._pdu, AAbort) and self.state is State.STA2:
            self._emit(ev.Aborted(self._pdu.source, self._pdu.reason))
        self.artim_running = False

    def _aa_4(self, _: list[Buffer] | None) -> None:
        self._emit(
            ev.Aborted(AbortSource.SERVICE_PROVIDER, 0, "transport connection closed by peer")
        )

    def _aa_7(self, _: list[Buffer] | None) -> None:
        self._send(AAbort(AbortSource.SERVICE_PROVIDER, self._reason()))

    def _aa_8(self, _: list[Buffer] | None) -> None:
        self._abort_for_peer_error()
        self.artim_running = True

    def _reason(self) -> int:
        if self._error is not None:
            return self._error.reason
        return AbortReason.UNEXPECTED_PDU

    def _abort_for_peer_error(self) -> None:
        reason = self._reason()
        text = str(self._error) if self._error else f"unexpected {type(self._pdu).__name__}"
        self._send(AAbort(AbortSource.SERVICE_PROVIDER, reason))
        self._emit(ev.Aborted(AbortSource.SERVICE_PROVIDER, reason, text))

    def _set_peer_max(self, peer_max_pdu: int) -> None:
        # A PDV adds 6 bytes (item length, context ID, control header) to its data.
        self._max_pdv = max(peer_max_pdu - 6, 1) if peer_max_pdu else UNLIMITED_PDV


_Handler = Callable[[Connection, list[Buffer] | None], None]

_ACTIONS: dict[Action, _Handler] = {
    Action.AE_1: Connection._nothing,
    Action.AE_2: Connection._ae_2,
    Action.AE_3: Connection._ae_3,
    Action.AE_4: Connection._ae_4,
    Action.AE_5: Connection._start_artim,
    Action.AE_7: Connection._ae_7,
    Action.AE_8: Connection._ae_8,
    Action.DT_1: Connection._send_pdata,
    Action.DT_2: Connection._indicate_pdata,
    Action.AR_1: Connection._ar_1,
    Action.AR_2: Connection._indicate_release,
    Action.AR_3: Connection._confirm_release,
    Action.AR_4: Connection._ar_4,
    Action.AR_5: Connection._stop_artim,
    Action.AR_6: Connection._indicate_pdata,
    Action.AR_7: Connection._send_pdata,
    Action.AR_8: Connection._indicate_release,
    Action.AR_9: Connection._ar_9,
    Action.AR_10: Connection._confirm_release,
    Action.AA_1: Connection._aa_1,
    Action.AA_2: Connection._aa_2,
    Action.AA_3: Connection._aa_3,
    Action.AA_4: Connection._aa_4,
    Action.AA_5: Connection._stop_artim,
    Action.AA_6: Connection._nothing,
    Action.AA_7: Connection._aa_7,
    Action.AA_8: Connection._aa_8,
}
