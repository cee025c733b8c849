"""Hostile bytes against the sans-I/O core: valid PDUs, mutated PDUs, PDUs in the wrong state.

The properties (issue "Hardening"):

* :func:`~dimse.pdu.decode`, :class:`~dimse.pdu.PDUReader`, the command-set decoder and the
  :class:`~dimse.dimse.MessageAssembler` raise nothing but :class:`ProtocolError`, whatever
  the bytes;
* :meth:`Connection.receive_data` never raises on peer input, in either role and in any
  state: a protocol error becomes an A-ABORT PDU (source: service provider, PS3.8 Table
  9-26) on the wire plus an :class:`~dimse.events.Aborted` event, after which nothing more
  is read; whatever the connection sends is well-formed PDUs;
* :func:`~dimse.negotiation.negotiate` answers any A-ASSOCIATE-RQ that decodes with an
  A-ASSOCIATE-AC or -RJ that encodes.

Inputs are valid PDUs (the strategies of test_pdu.py and test_dimse.py, plus realistic
ones) put through :func:`mutate`: bit flips, truncation, wrong lengths at every nesting
level (PDU, item, sub-item, PDV, command element), lengths overrunning their parent, huge
lengths, unknown PDU and item types, insertions, deletions and splices. Every check names
its input in hex when it fails. fuzz/fuzz_core.py runs the same :data:`PROPERTIES` for
minutes instead of a few hundred examples.
"""

from __future__ import annotations

import itertools
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimse import events as ev
from dimse.connection import Connection
from dimse.dimse import (
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
    MessageAssembler,
    UnknownCommand,
    decode_command,
    encode_command,
)
from dimse.errors import ProtocolError
from dimse.negotiation import (
    AcceptorPolicy,
    ProposedContext,
    build_request,
    negotiate,
)
from dimse.pdu import (
    MAX_CONTROL_PDU,
    PDU,
    PDV,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    ContextResult,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    RejectResult,
    RejectSource,
    RoleSelection,
    decode,
    encode,
)
from dimse.upper_layer import State
from test_dimse import messages
from test_pdu import any_pdu, associate_ac, associate_rq, pdvs

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
ECHO_CONTEXT, CT_CONTEXT = 1, 3

POLICY = AcceptorPolicy(
    "FUZZ_SCP",
    {VERIFICATION: frozenset({IVLE}), CT: frozenset({EVLE})},
    max_pdu=4096,
    max_async_ops=4,
    scp_role_classes=frozenset({CT}),
)
REQUEST = build_request(
    "FUZZ_SCU",
    "FUZZ_SCP",
    [ProposedContext(VERIFICATION, (IVLE,)), ProposedContext(CT, (EVLE,))],
    max_pdu=2048,
    async_ops=(4, 1),
    roles=[RoleSelection(CT, True, True)],
)

#: How many examples each property gets in the test suite (the file stays under 30 s).
SUITE = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FuzzFailure(AssertionError):
    """A property failed; the message names the input in hex (`data`: all of it)."""

    def __init__(self, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.data = data


#: Hex shown in a failure message; fuzz/fuzz_core.py writes whole inputs to a file.
SHOWN_HEX = 4096


def _hex(data: bytes) -> str:
    text = data.hex()
    return text if len(text) <= SHOWN_HEX else f"{text[:SHOWN_HEX]}... ({len(data)} bytes)"


# --- where the lengths are: every length field of an encoded PDU --------------------------


@dataclass(frozen=True, slots=True)
class LengthField:
    """A length inside a PDU: `size` bytes at `offset`, counting bytes from `start`.

    `limit` is the end of the container the counted bytes must stay in; `type_offset`
    is where the type byte of the item (or PDU) is, when it has one.
    """

    offset: int
    size: int
    byteorder: str
    start: int
    limit: int
    type_offset: int | None


def _u16_fields(data: bytes, kind: int, start: int, end: int, out: list[LengthField]) -> None:
    """The 2-byte length prefixes inside user information sub-items (PS3.7 D.3.3)."""
    offset = {0x54: start, 0x56: start, 0x57: start, 0x58: start + 2, 0x59: start}.get(kind)
    count = 3 if kind == 0x57 else 2 if kind == 0x58 else 1
    while offset is not None and count and offset + 2 <= end:
        out.append(LengthField(offset, 2, "big", offset + 2, end, None))
        offset += 2 + int.from_bytes(data[offset : offset + 2], "big")
        count -= 1


def _item_fields(data: bytes, start: int, end: int, depth: int, out: list[LengthField]) -> None:
    offset = start
    while offset + 4 <= end:
        kind = data[offset]
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        value, value_end = offset + 4, min(offset + 4 + length, end)
        out.append(LengthField(offset + 2, 2, "big", value, end, offset))
        if depth == 0 and kind in (0x20, 0x21):
            _item_fields(data, value + 4, value_end, 1, out)
        elif depth == 0 and kind == 0x50:
            _item_fields(data, value, value_end, 1, out)
        elif depth == 1:
            _u16_fields(data, kind, value, value_end, out)
        offset = value + length


def _pdv_fields(data: bytes, end: int, out: list[LengthField]) -> None:
    offset = 6
    while offset + 6 <= end:
        length = int.from_bytes(data[offset : offset + 4], "big")
        pdv_end = min(offset + 4 + length, end)
        out.append(LengthField(offset, 4, "big", offset + 4, end, None))
        if data[offset + 5] & 1:  # a command fragment: its elements' lengths too
            element = offset + 6
            while element + 8 <= pdv_end:
                out.append(LengthField(element + 4, 4, "little", element + 8, pdv_end, None))
                element += 8 + int.from_bytes(data[element + 4 : element + 8], "little")
        offset += 4 + length


def length_fields(data: bytes) -> list[LengthField]:
    """Every length field of the PDU at the start of `data`, as far as it can be walked."""
    if len(data) < 6:
        return []
    end = min(6 + int.from_bytes(data[2:6], "big"), len(data))
    out = [LengthField(2, 4, "big", 6, len(data), 0)]
    if data[0] in (0x01, 0x02):
        _item_fields(data, 6 + 68, end, 0, out)
    elif data[0] == 0x04:
        _pdv_fields(data, end, out)
    return out


# --- mutations -----------------------------------------------------------------------------

UNKNOWN_TYPES: tuple[int, ...] = (0x00, 0x08, 0x0F, 0x11, 0x22, 0x31, 0x41, 0x5A, 0x7F, 0xFF)
KNOWN_TYPES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 0x10, 0x20, 0x21, 0x30, 0x40, 0x50)
KNOWN_TYPES += tuple(range(0x51, 0x5A))  # user information sub-items
Mutation = Callable[[bytearray, random.Random], bytearray]


def _flip_bit(buf: bytearray, rng: random.Random) -> bytearray:
    if buf:
        buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
    return buf


def _set_byte(buf: bytearray, rng: random.Random) -> bytearray:
    if buf:
        buf[rng.randrange(len(buf))] = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    return buf


def _truncate(buf: bytearray, rng: random.Random) -> bytearray:
    return buf[: rng.randrange(len(buf) + 1)]


def _insert(buf: bytearray, rng: random.Random) -> bytearray:
    at = rng.randrange(len(buf) + 1)
    return buf[:at] + rng.randbytes(rng.choice((1, 2, 4, rng.randrange(64)))) + buf[at:]


def _delete(buf: bytearray, rng: random.Random) -> bytearray:
    if not buf:
        return buf
    at = rng.randrange(len(buf))
    return buf[:at] + buf[at + rng.choice((1, 2, 4, rng.randrange(1, 64))) :]


def _duplicate(buf: bytearray, rng: random.Random) -> bytearray:
    if not buf:
        return buf
    a, b = sorted(rng.randrange(len(buf) + 1) for _ in range(2))
    at = rng.randrange(len(buf) + 1)
    return buf[:at] + buf[a:b] + buf[at:]


def _bad_length(buf: bytearray, rng: random.Random) -> bytearray:
    fields = length_fields(bytes(buf))
    if not fields:
        return _flip_bit(buf, rng)
    field = rng.choice(fields)
    current = int.from_bytes(buf[field.offset : field.offset + field.size], field.byteorder)  # type: ignore[arg-type]
    room = field.limit - field.start  # what fits in the parent
    top = (1 << (8 * field.size)) - 1
    value = rng.choice(
        (
            0,
            1,
            2,
            current - 1,
            current + 1,
            current + 2,
            room + rng.randrange(1, 9),  # overruns the parent by a few bytes
            room * 2,
            top,
            top - 1,
            rng.randrange(top + 1),
        )
    )
    packed = (value % (top + 1)).to_bytes(field.size, field.byteorder)  # type: ignore[arg-type]
    buf[field.offset : field.offset + field.size] = packed
    return buf


def _bad_type(buf: bytearray, rng: random.Random) -> bytearray:
    typed = [f.type_offset for f in length_fields(bytes(buf)) if f.type_offset is not None]
    if not typed:
        return _set_byte(buf, rng)
    buf[rng.choice(typed)] = rng.choice(UNKNOWN_TYPES + KNOWN_TYPES)
    return buf


def _huge_length(buf: bytearray, rng: random.Random) -> bytearray:
    if len(buf) < 6:
        return buf + bytes(6 - len(buf))
    value = rng.choice((0xFFFFFFFF, MAX_CONTROL_PDU + 1, 0x7FFFFFFF, 1 << 24))
    buf[2:6] = value.to_bytes(4, "big")
    return buf


MUTATIONS: tuple[Mutation, ...] = (
    _flip_bit,
    _set_byte,
    _truncate,
    _insert,
    _delete,
    _duplicate,
    _bad_length,
    _bad_length,  # the most productive one: twice the weight
    _bad_type,
    _huge_length,
)


def mutate(data: bytes, rng: random.Random, rounds: int) -> bytes:
    """`data` after `rounds` random mutations."""
    buf = bytearray(data)
    for _ in range(rounds):
        buf = rng.choice(MUTATIONS)(buf, rng)
    return bytes(buf)


# --- realistic PDUs: what a peer of a real association sends ------------------------------


def pdata(context_id: int, is_command: bool, is_last: bool, data: bytes) -> bytes:
    return encode(PDataTF((PDV(context_id, is_command, is_last, data),)))


def acceptance() -> AAssociateAC:
    answer = negotiate(REQUEST, POLICY)
    assert not isinstance(answer, AAssociateRJ)
    return answer[0]


STORE_RQ = CStoreRQ(7, CT, "1.2.3.4.5")
REALISTIC: tuple[bytes, ...] = (
    encode(REQUEST),
    encode(acceptance()),
    encode(AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 1)),
    pdata(ECHO_CONTEXT, True, True, encode_command(CEchoRQ(1))),
    pdata(ECHO_CONTEXT, True, True, encode_command(CEchoRSP(1, 0))),
    pdata(CT_CONTEXT, True, True, encode_command(STORE_RQ)),
    pdata(CT_CONTEXT, False, False, b"\x08\x00\x16\x00\x02\x00\x00\x001."),
    pdata(CT_CONTEXT, False, True, b"\x08\x00\x18\x00\x04\x00\x00\x001.2."),
    pdata(CT_CONTEXT, True, True, encode_command(CStoreRSP(7, 0, CT, "1.2.3.4.5"))),
    pdata(ECHO_CONTEXT, True, True, encode_command(UnknownCommand(0x0020, message_id=3))),
    encode(AReleaseRQ()),
    encode(AReleaseRP()),
    encode(AAbort(AbortSource.SERVICE_USER, 0)),
    encode(AAbort(AbortSource.SERVICE_PROVIDER, 2)),
)

command_pdus = st.one_of(
    st.builds(
        pdata,
        st.sampled_from((ECHO_CONTEXT, CT_CONTEXT, 5)),
        st.just(True),
        st.booleans(),
        messages.map(encode_command),
    ),
    st.builds(
        pdata,
        st.sampled_from((ECHO_CONTEXT, CT_CONTEXT)),
        st.booleans(),
        st.booleans(),
        st.binary(max_size=96),
    ),
)
valid_pdu_bytes: st.SearchStrategy[bytes] = st.one_of(
    st.sampled_from(REALISTIC),
    any_pdu.map(encode),
    associate_rq.map(encode),
    associate_ac.map(encode),
    command_pdus,
)
fuzzed_pdu_bytes: st.SearchStrategy[bytes] = st.one_of(
    valid_pdu_bytes,
    st.builds(mutate, valid_pdu_bytes, st.randoms(use_true_random=False), st.integers(1, 4)),
    st.binary(max_size=200),
)


# --- the checks: each raises FuzzFailure naming its input in hex -------------------------


def _fail(what: str, data: bytes | Sequence[bytes], error: BaseException | None = None) -> NoReturn:
    whole = data if isinstance(data, bytes) else b"".join(data)
    shown = _hex(data) if isinstance(data, bytes) else " | ".join(_hex(d) for d in data)
    raise FuzzFailure(f"{what}; input (hex): {shown}", whole) from error


def check_decode(data: bytes) -> None:
    """decode() returns a PDU or raises ProtocolError; a PDU it returns encodes again."""
    try:
        pdu = decode(data)
    except ProtocolError:
        return
    except Exception as error:
        _fail(f"decode raised {type(error).__name__}: {error}", data, error)
    if isinstance(pdu, AAssociateRQ | AAssociateAC):
        return  # may hold what we never send (blank AE titles...): negotiation is checked
    try:
        again = decode(encode(pdu))
    except Exception as error:
        _fail(f"re-encoding a decoded {type(pdu).__name__} failed: {error}", data, error)
    if again != pdu:
        _fail(f"{pdu!r} does not survive encode/decode", data)


def check_reader(stream: bytes, cuts: Sequence[int], limit: int) -> None:
    """PDUReader yields PDUs or raises ProtocolError, whatever the chunking; it stops there."""
    reader = PDUReader(limit)
    edges = [0, *sorted(cuts), len(stream)]
    try:
        for a, b in itertools.pairwise(edges):
            reader.feed(stream[a:b])
            while reader.next_pdu() is not None:
                pass
    except ProtocolError:
        return
    except Exception as error:
        _fail(f"PDUReader raised {type(error).__name__}: {error}", stream, error)
    if reader.buffered > len(stream):
        _fail("PDUReader holds more than it was fed", stream)


def check_command(data: bytes) -> None:
    try:
        message, _ = decode_command(data)
    except ProtocolError:
        return
    except Exception as error:
        _fail(f"decode_command raised {type(error).__name__}: {error}", data, error)
    if isinstance(message, UnknownCommand):
        return
    try:
        again = decode_command(encode_command(message))[0]
    except Exception as error:
        _fail(f"re-encoding decoded {message!r} failed: {error}", data, error)
    if again != message:
        _fail(f"{message!r} does not survive encode/decode", data)


def check_assembler(fragments: Sequence[PDV]) -> None:
    assembler = MessageAssembler()
    for pdv in fragments:
        try:
            assembler.feed(pdv)
        except ProtocolError:
            return
        except Exception as error:
            raw = [encode(PDataTF((p,))) for p in fragments]
            _fail(f"MessageAssembler raised {type(error).__name__}: {error}", raw, error)


def check_negotiation(data: bytes) -> None:
    """An A-ASSOCIATE-RQ that decodes gets an answer that encodes, from any policy."""
    try:
        rq = decode(data)
    except ProtocolError:
        return
    if not isinstance(rq, AAssociateRQ):
        return
    for policy in (POLICY, AcceptorPolicy("FUZZ_SCP", POLICY.syntaxes, check_called_ae=False)):
        try:
            answer = negotiate(rq, policy, identity_response=b"ok")
            encode(answer if isinstance(answer, AAssociateRJ) else answer[0])
        except Exception as error:
            _fail(f"negotiate/encode raised {type(error).__name__}: {error}", data, error)


# --- a Connection driven in several states ---------------------------------------------------

#: Ways to bring a connection into a state before the hostile bytes arrive.
ACCEPTOR_SETUPS = ("sta2", "sta3", "sta6", "sta7", "sta8", "sta13-aborted", "sta13-rejected")
REQUESTOR_SETUPS = ("sta5", "sta6", "sta7", "sta8", "sta13-aborted")


def _out(connection: Connection) -> bytes:
    return b"".join(bytes(b) for b in connection.data_to_send())


def setup_connection(requestor: bool, setup: str) -> Connection:
    """A connection in the state `setup` names, its output so far discarded."""
    if requestor:
        connection = Connection(REQUEST)
        connection.connection_made()
        if setup != "sta5":
            connection.receive_data(encode(acceptance()))
    else:
        connection = Connection()
        connection.connection_made()
        if setup not in ("sta2",):
            connection.receive_data(encode(REQUEST))
        if setup == "sta13-rejected":
            connection.reject(AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 1))
        elif setup not in ("sta2", "sta3"):
            answer = negotiate(REQUEST, POLICY)
            assert not isinstance(answer, AAssociateRJ)
            connection.accept(*answer)
    if setup == "sta7":
        connection.release()
    elif setup == "sta8":
        connection.receive_data(encode(AReleaseRQ()))
    elif setup == "sta13-aborted":
        connection.abort()
    _out(connection)
    expected = State[setup.split("-")[0].upper()]
    assert connection.state is expected, (setup, connection.state)
    return connection


def drive(connection: Connection, events: list[ev.Event]) -> None:
    """Answer indications as the server does: even when an abort in the same read overtook
    them (the answer is then a no-op); a response only while the association is up."""
    for event in events:
        if isinstance(event, ev.AssociationRequested):
            answer = negotiate(event.request, POLICY)
            if isinstance(answer, AAssociateRJ):
                connection.reject(answer)
            else:
                connection.accept(*answer)
        elif isinstance(event, ev.ReleaseRequested):
            connection.accept_release()
        elif (
            isinstance(event, ev.CommandReceived)
            and isinstance(event.message, CEchoRQ)
            and connection.state in (State.STA6, State.STA8)
        ):
            connection.send_message(event.context_id, CEchoRSP(event.message.message_id, 0))


@dataclass(frozen=True, slots=True)
class Scenario:
    """A connection brought to `setup`, then fed `chunks` (b"" = the peer closes)."""

    requestor: bool
    setup: str
    chunks: tuple[bytes, ...]
    answer: bool  # whether indications are answered (as a server would) between chunks

    def describe(self) -> str:
        role = "requestor" if self.requestor else "acceptor"
        chunks = " | ".join(_hex(c) or "<EOF>" for c in self.chunks)
        return f"{role} in {self.setup}, answering={self.answer}, chunks (hex): {chunks}"

    def fail(self, what: str, error: BaseException | None = None) -> NoReturn:
        raise FuzzFailure(f"{what}; {self.describe()}", b"".join(self.chunks)) from error


def _check_sent(scenario: Scenario, sent: bytes) -> list[PDU]:
    """What the connection sent must be whole, well-formed PDUs."""
    reader = PDUReader(0)
    reader.feed(sent)
    out: list[PDU] = []
    try:
        while (pdu := reader.next_pdu()) is not None:
            out.append(pdu)
    except ProtocolError as error:
        scenario.fail(f"sent malformed bytes {sent.hex()}", error)
    if reader.buffered:
        scenario.fail(f"sent a partial PDU {sent.hex()}")
    return out


def check_connection(scenario: Scenario) -> None:
    connection = setup_connection(scenario.requestor, scenario.setup)
    aborted_for_error = False
    for chunk in scenario.chunks:
        try:
            events = connection.receive_data(chunk)
        except Exception as error:
            scenario.fail(f"receive_data raised {type(error).__name__}: {error}", error)
        sent = _check_sent(scenario, _out(connection))
        if aborted_for_error and [e for e in events if not isinstance(e, ev.ConnectionClosed)]:
            scenario.fail(f"events {events} after our abort")
        # Our own aborts for the peer's errors (EOF is reported as an Aborted event too).
        ours = [e for e in events if isinstance(e, ev.Aborted) and e.local_error and chunk]
        if ours:
            aborted_for_error = True
            after = events[events.index(ours[0]) + 1 :]
            if len(ours) > 1 or [e for e in after if not isinstance(e, ev.ConnectionClosed)]:
                scenario.fail(f"events {after} after our abort")
            abort = AAbort(AbortSource.SERVICE_PROVIDER, ours[0].reason)
            if abort not in sent:
                scenario.fail(f"{ours[0]} without {abort} on the wire (sent {sent})")
            if connection.state not in (State.STA13, State.STA1):
                scenario.fail(f"{connection.state} after {ours[0]}")
        if scenario.answer:
            try:
                drive(connection, events)
            except Exception as error:
                scenario.fail(f"answering {events} raised {type(error).__name__}: {error}", error)
            _check_sent(scenario, _out(connection))
    # ARTIM may run out at any time: that, too, must be quiet.
    connection.artim_expired()
    _check_sent(scenario, _out(connection))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    requestor = draw(st.booleans())
    setup = draw(st.sampled_from(REQUESTOR_SETUPS if requestor else ACCEPTOR_SETUPS))
    pieces = draw(st.lists(fuzzed_pdu_bytes, min_size=1, max_size=5))
    stream = b"".join(pieces)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    edges = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(edges) if b > a]
    if draw(st.booleans()):
        chunks.append(b"")  # and then the peer closes the connection
    return Scenario(requestor, setup, tuple(chunks), draw(st.booleans()))


@st.composite
def reader_inputs(draw: st.DrawFn) -> tuple[bytes, list[int], int]:
    stream = b"".join(draw(st.lists(fuzzed_pdu_bytes, min_size=1, max_size=4)))
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=6))
    return stream, cuts, draw(st.sampled_from((0, 64, 4096)))


command_sets: st.SearchStrategy[bytes] = st.one_of(
    messages.map(encode_command),
    st.builds(
        mutate,
        messages.map(lambda m: pdata(1, True, True, encode_command(m))),
        st.randoms(use_true_random=False),
        st.integers(1, 4),
    ).map(lambda pdu: pdu[12:]),  # the command set inside the mutated P-DATA-TF
    st.lists(
        st.tuples(
            st.sampled_from((0x0000, 0x0002, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900,
                             0x0901, 0x0902, 0x1000, 0x1030, 0x1031, 0x5555)),
            st.binary(max_size=12),
        ),
        max_size=8,
    ).map(lambda elements: b"".join(struct.pack("<HHL", 0, t, len(v)) + v for t, v in elements)),
    st.binary(max_size=120),
)  # fmt: skip

fragment_lists: st.SearchStrategy[list[PDV]] = st.lists(
    st.one_of(
        pdvs,
        st.builds(PDV, st.sampled_from((1, 3)), st.just(True), st.booleans(), command_sets),
    ),
    max_size=6,
)

#: name -> (strategy of one input, check); run here and by fuzz/fuzz_core.py.
PROPERTIES: dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], None]]] = {
    "decode": (fuzzed_pdu_bytes, check_decode),
    "reader": (reader_inputs(), lambda args: check_reader(*args)),
    "command": (command_sets, check_command),
    "assembler": (fragment_lists, check_assembler),
    "negotiation": (
        st.one_of(
            associate_rq.map(encode),
            st.builds(
                mutate,
                st.just(encode(REQUEST)),
                st.randoms(use_true_random=False),
                st.integers(1, 3),
            ),
        ),
        check_negotiation,
    ),
    "connection": (scenarios(), check_connection),
}


# --- the suite -------------------------------------------------------------------------------


@SUITE
@given(fuzzed_pdu_bytes)
def test_decode_raises_only_protocol_errors(data: bytes) -> None:
    check_decode(data)


@SUITE
@given(reader_inputs())
def test_reader_raises_only_protocol_errors(args: tuple[bytes, list[int], int]) -> None:
    check_reader(*args)


@SUITE
@given(command_sets)
def test_command_set_decoding_raises_only_protocol_errors(data: bytes) -> None:
    check_command(data)


@SUITE
@given(fragment_lists)
def test_message_assembler_raises_only_protocol_errors(fragments: list[PDV]) -> None:
    check_assembler(fragments)


@SUITE
@given(PROPERTIES["negotiation"][0])
def test_negotiation_answers_every_decodable_request(data: bytes) -> None:
    check_negotiation(data)


@settings(SUITE, max_examples=250)
@given(scenarios())
def test_connection_never_raises_on_peer_input(scenario: Scenario) -> None:
    check_connection(scenario)


# --- the mutation engine itself, and the cases found by fuzzing ------------------------------


def test_length_fields_find_every_level() -> None:
    fields = length_fields(encode(REQUEST))
    # PDU, application context, 2 contexts with 2 sub-items each, user info + its sub-items
    assert len([f for f in fields if f.type_offset is not None]) >= 1 + 1 + 2 * 3 + 1 + 5
    pdu = pdata(1, True, True, encode_command(CEchoRQ(1)))
    little = [f for f in length_fields(pdu) if f.byteorder == "little"]
    assert len(little) == 5  # group length, SOP class, command field, message ID, type


@pytest.mark.parametrize("seed", range(20))
def test_every_mutation_keeps_the_core_typed(seed: int) -> None:
    rng = random.Random(seed)
    for base in REALISTIC:
        for mutation in MUTATIONS:
            check_decode(bytes(mutation(bytearray(base), rng)))


@pytest.mark.parametrize("setup", ACCEPTOR_SETUPS)
@pytest.mark.parametrize("data", REALISTIC, ids=lambda d: f"pdu-{d[0]:02x}-{len(d)}")
def test_every_valid_pdu_in_every_acceptor_state(setup: str, data: bytes) -> None:
    check_connection(Scenario(False, setup, (data, data, b""), answer=True))


@pytest.mark.parametrize("setup", REQUESTOR_SETUPS)
@pytest.mark.parametrize("data", REALISTIC, ids=lambda d: f"pdu-{d[0]:02x}-{len(d)}")
def test_every_valid_pdu_in_every_requestor_state(setup: str, data: bytes) -> None:
    check_connection(Scenario(True, setup, (data, data, b""), answer=True))


def test_p_data_before_association_is_a_provider_abort() -> None:
    acceptor = setup_connection(False, "sta2")
    events = acceptor.receive_data(pdata(1, True, True, encode_command(CEchoRQ(1))))
    assert [type(e) for e in events] == [ev.Aborted]
    assert decode(_out(acceptor)) == AAbort(AbortSource.SERVICE_PROVIDER, 2)  # unexpected PDU
    assert acceptor.state is State.STA13


def test_associate_ac_to_an_acceptor_is_a_provider_abort() -> None:
    acceptor = setup_connection(False, "sta6")
    events = acceptor.receive_data(encode(acceptance()))
    assert [type(e) for e in events] == [ev.Aborted]
    assert decode(_out(acceptor)) == AAbort(AbortSource.SERVICE_PROVIDER, 2)


def test_nothing_is_read_after_a_command_set_error_in_the_same_chunk() -> None:
    """Found writing this harness: a well-formed PDU with a broken command set aborted,
    yet the PDUs after it in the same read were still acted on (a second A-ABORT for an
    A-ASSOCIATE-RQ, AA-7), while the same PDUs in the next read were not."""
    acceptor = setup_connection(False, "sta6")
    broken = pdata(ECHO_CONTEXT, True, True, b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x00")
    events = acceptor.receive_data(broken + encode(REQUEST) + encode(AAbort()))
    assert [type(e) for e in events] == [ev.Aborted]
    assert [decode(_out(acceptor))] == [AAbort(AbortSource.SERVICE_PROVIDER, 6)]
    assert acceptor.state is State.STA13


def test_blank_calling_ae_title_is_rejected_not_a_crash() -> None:
    """Found writing this harness: 16 spaces decode as "" and the A-ASSOCIATE-AC echoing it
    could not be encoded. PS3.8 Table 9-11: an AE title of 16 spaces shall not be used."""
    data = bytearray(encode(REQUEST))
    data[6 + 20 : 6 + 36] = b" " * 16
    check_negotiation(bytes(data))
    answer = negotiate(decode(bytes(data)), POLICY)  # type: ignore[arg-type]
    assert answer == AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 3)


def test_role_selections_cannot_overflow_the_acceptance() -> None:
    """Found writing this harness: every role selection sub-item was echoed, duplicates too,
    so a request whose user information item was full of them got an A-ASSOCIATE-AC whose
    user information item was over 65535 bytes: unencodable, its item length has 2 bytes
    (PS3.8 §9.3.3.3). PS3.7 D.3.3.4: one role selection per SOP class."""
    roles = tuple(RoleSelection(CT, True, True) for _ in range(0xFFFF // 33))  # 33 bytes each
    rq = AAssociateRQ("FUZZ_SCP", "FUZZ_SCU", REQUEST.presentation_contexts, roles)
    check_negotiation(encode(rq))
    answer = negotiate(rq, POLICY)
    assert not isinstance(answer, AAssociateRJ)
    assert answer[0].user_items_of(RoleSelection) == [RoleSelection(CT, True, True)]


def test_answering_after_the_association_was_aborted_is_a_no_op() -> None:
    """A valid A-ASSOCIATE-RQ and garbage in one read: the A-ASSOCIATE indication and the
    abort come out together, and the answer to the indication must not raise."""
    acceptor = setup_connection(False, "sta2")
    events = acceptor.receive_data(encode(REQUEST) + b"\xff garbage")
    assert [type(e) for e in events] == [ev.AssociationRequested, ev.Aborted]
    answer = negotiate(REQUEST, POLICY)
    assert not isinstance(answer, AAssociateRJ)
    acceptor.accept(*answer)  # Sta13: the association is gone, nothing to answer
    acceptor.reject(AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, 1))
    assert decode(_out(acceptor)) == AAbort(AbortSource.SERVICE_PROVIDER, 1)
    assert acceptor.state is State.STA13
    released = setup_connection(False, "sta6")
    events = released.receive_data(encode(AReleaseRQ()) + b"\xff garbage")
    assert [type(e) for e in events] == [ev.ReleaseRequested, ev.Aborted]
    released.accept_release()
    released.send_message(ECHO_CONTEXT, CEchoRSP(1, 0))
    assert decode(_out(released)) == AAbort(AbortSource.SERVICE_PROVIDER, 1)


def test_accepted_context_result_survives() -> None:
    """A sanity check of the realistic acceptance the fuzzer mutates."""
    ac = acceptance()
    assert [pc.result for pc in ac.presentation_contexts] == [ContextResult.ACCEPTANCE] * 2
    assert all(isinstance(pc, PresentationContextAC) for pc in ac.presentation_contexts)
