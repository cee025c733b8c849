"""Two sans-I/O Connections, requestor and acceptor, wired back to back in memory."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dimse import events as ev
from dimse.connection import Connection, PartialPDU
from dimse.dimse import CEchoRQ, CEchoRSP, CStoreRQ, CStoreRSP, encode_command
from dimse.errors import AbortReason, LocalProtocolError
from dimse.negotiation import AcceptorPolicy, ProposedContext, build_request, negotiate
from dimse.pdu import (
    MAX_PDATA_CEILING,
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
    MaximumLength,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    PresentationContextRQ,
    RejectReason,
    RejectResult,
    RejectSource,
    encode,
)
from dimse.upper_layer import State

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"

POLICY = AcceptorPolicy(
    "STORE_SCP", {VERIFICATION: frozenset({IVLE}), CT: frozenset({EVLE})}, max_pdu=1024
)
CONTEXTS = [ProposedContext(VERIFICATION, (IVLE,)), ProposedContext(CT, (EVLE,))]
ECHO_CONTEXT, CT_CONTEXT = 1, 3


def make_request() -> AAssociateRQ:
    return build_request("STORE_SCU", "STORE_SCP", CONTEXTS, max_pdu=4096)


def answer(acceptor: Connection, policy: AcceptorPolicy = POLICY) -> None:
    """The acceptor's user answers the A-ASSOCIATE indication as `policy` says."""
    assert acceptor.request is not None
    result = negotiate(acceptor.request, policy)
    if isinstance(result, AAssociateRJ):
        acceptor.reject(result)
    else:
        acceptor.accept(*result)


def state(connection: Connection) -> State:
    """The current state (read through a call: type checkers would narrow the attribute)."""
    return connection.state


def wire(connection: Connection) -> bytes:
    return b"".join(bytes(b) for b in connection.data_to_send())


def pdus(data: bytes) -> list[PDU]:
    reader = PDUReader(0)
    reader.feed(data)
    out = []
    while (pdu := reader.next_pdu()) is not None:
        out.append(pdu)
    assert reader.buffered == 0
    return out


def deliver(source: Connection, target: Connection, chunk: int = 0) -> list[ev.Event]:
    """Move what `source` has to send into `target` (in chunks of `chunk` bytes if set)."""
    data = wire(source)
    assert data, "nothing to deliver"
    size = chunk or len(data)
    events: list[ev.Event] = []
    for offset in range(0, len(data), size):
        events += target.receive_data(data[offset : offset + size])
    return events


def connect(rq: AAssociateRQ | None = None) -> tuple[Connection, Connection]:
    """A requestor in Sta5 and an acceptor in Sta3 that has just seen the request."""
    rq = rq or make_request()
    requestor, acceptor = Connection(rq), Connection()
    assert requestor.connection_made() == []
    assert state(requestor) is State.STA5
    assert acceptor.connection_made() == []
    assert state(acceptor) is State.STA2 and acceptor.artim_running
    assert deliver(requestor, acceptor) == [ev.AssociationRequested(rq)]
    assert state(acceptor) is State.STA3 and not acceptor.artim_running
    return requestor, acceptor


def associate(rq: AAssociateRQ | None = None) -> tuple[Connection, Connection]:
    requestor, acceptor = connect(rq)
    answer(acceptor)
    assert state(acceptor) is State.STA6
    events = deliver(acceptor, requestor)
    assert len(events) == 1 and isinstance(events[0], ev.AssociationAccepted)
    assert state(requestor) is State.STA6
    return requestor, acceptor


def aborts(events: list[ev.Event]) -> list[tuple[AbortSource, int]]:
    return [(e.source, e.reason) for e in events if isinstance(e, ev.Aborted)]


# --- establishment -------------------------------------------------------------------------


def test_association_accepted() -> None:
    requestor, acceptor = associate()
    assert requestor.established and acceptor.established
    assert not requestor.artim_running and not acceptor.artim_running
    assert requestor.association is not None and acceptor.association is not None
    assert requestor.association.contexts == acceptor.association.contexts
    assert set(requestor.association.contexts) == {ECHO_CONTEXT, CT_CONTEXT}
    assert requestor.association.peer_max_pdu == 1024
    assert acceptor.association.peer_max_pdu == 4096


def test_association_rejected_by_the_acceptor() -> None:
    requestor, acceptor = connect(build_request("STORE_SCU", "SOMEONE_ELSE", CONTEXTS))
    answer(acceptor, AcceptorPolicy("STORE_SCP", POLICY.syntaxes))
    rj = AAssociateRJ(
        RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.CALLED_AE_NOT_RECOGNIZED
    )
    assert state(acceptor) is State.STA13 and acceptor.artim_running
    assert deliver(acceptor, requestor) == [ev.AssociationRejected(rj), ev.ConnectionClosed()]
    assert state(requestor) is State.STA1 and requestor.closing
    # The requestor closes the connection; if it does not, ARTIM does.
    assert acceptor.artim_expired() == [ev.ConnectionClosed()]
    assert state(acceptor) is State.STA1 and acceptor.closing


def test_protocol_version_rejected_by_the_provider() -> None:
    """AE-6: an A-ASSOCIATE-RQ not acceptable to the provider is rejected without the user."""
    rq = make_request()
    rq = AAssociateRQ(rq.called_ae, rq.calling_ae, rq.presentation_contexts, rq.user_items,
                      protocol_version=2)  # fmt: skip
    requestor, acceptor = Connection(rq), Connection()
    requestor.connection_made()
    acceptor.connection_made()
    assert deliver(requestor, acceptor) == []  # no A-ASSOCIATE indication
    assert state(acceptor) is State.STA13 and acceptor.artim_running
    rj = AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_PROVIDER_ACSE, 2)
    assert deliver(acceptor, requestor) == [ev.AssociationRejected(rj), ev.ConnectionClosed()]


def test_acceptance_answering_an_unproposed_context_is_aborted() -> None:
    requestor, _ = connect()
    bad = AAssociateAC(
        "STORE_SCP", "STORE_SCU", (PresentationContextAC(9, ContextResult.ACCEPTANCE, IVLE),)
    )
    events = requestor.receive_data(encode(bad))
    assert aborts(events) == [
        (AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    ]
    assert state(requestor) is State.STA13 and requestor.artim_running
    assert pdus(wire(requestor)) == [
        AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    ]


def _request_with_context_ids(*context_ids: int) -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification under each of `context_ids` (encode()
    writes any byte it is given: a hostile peer's request)."""
    contexts = tuple(PresentationContextRQ(i, VERIFICATION, (IVLE,)) for i in context_ids)
    return encode(AAssociateRQ("STORE_SCP", "STORE_SCU", contexts))


@pytest.mark.parametrize("context_ids", [(2,), (1, 4), (3, 3)], ids=["2", "1-4", "3-3"])
def test_request_with_an_even_or_repeated_context_id_is_aborted(
    context_ids: tuple[int, ...],
) -> None:
    """PS3.8 §9.3.2.2: IDs are odd and unique; an invalid PDU in Sta2 (Evt19) is answered
    with AA-1 (Table 9-10): A-ABORT, source 2 service provider, reason 6
    invalid-PDU-parameter-value (Table 9-26); no A-ASSOCIATE indication."""
    acceptor = Connection()
    acceptor.connection_made()
    events = acceptor.receive_data(_request_with_context_ids(*context_ids))
    assert aborts(events) == [
        (AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    ]
    assert not any(isinstance(e, ev.AssociationRequested) for e in events)
    assert wire(acceptor) == bytes.fromhex("07 00 00000004 00 00 02 06")
    assert state(acceptor) is State.STA13 and acceptor.artim_running


def test_request_with_odd_unique_context_ids_is_indicated() -> None:
    acceptor = Connection()
    acceptor.connection_made()
    events = acceptor.receive_data(_request_with_context_ids(255, 1))
    assert len(events) == 1 and isinstance(events[0], ev.AssociationRequested)


# --- data transfer -------------------------------------------------------------------------


def test_c_echo() -> None:
    requestor, acceptor = associate()
    requestor.send_message(ECHO_CONTEXT, CEchoRQ(1))
    assert deliver(requestor, acceptor) == [ev.CommandReceived(ECHO_CONTEXT, CEchoRQ(1), False)]
    acceptor.send_message(ECHO_CONTEXT, CEchoRSP(1, 0x0000))
    assert deliver(acceptor, requestor) == [
        ev.CommandReceived(ECHO_CONTEXT, CEchoRSP(1, 0x0000), False)
    ]
    assert requestor.established and acceptor.established


def test_c_store_streams_its_data_set_in_fragments() -> None:
    requestor, acceptor = associate()
    data = bytes(range(256)) * 40  # 10 240 bytes
    store = CStoreRQ(7, CT, "1.2.3.4.5")
    requestor.send_message(CT_CONTEXT, store)
    requestor.send_data(CT_CONTEXT, data[:3000], last=False)  # as read from a file
    requestor.send_data(CT_CONTEXT, data[3000:], last=True)
    sent = wire(requestor)
    # Every P-DATA-TF respects the acceptor's maximum length (PS3.8 D.1)
    for pdu in pdus(sent):
        assert isinstance(pdu, PDataTF)
        assert 4 + 2 + len(pdu.pdvs[0].data) <= 1024
    events: list[ev.Event] = []
    for offset in range(0, len(sent), 500):  # the bytes arrive in arbitrary pieces
        events += acceptor.receive_data(sent[offset : offset + 500])
    assert events[0] == ev.CommandReceived(CT_CONTEXT, store, True)
    fragments = events[1:]
    assert all(isinstance(e, ev.DataReceived) for e in fragments)
    assert len(fragments) >= len(data) // 1018
    sizes = [len(e.data) for e in fragments if isinstance(e, ev.DataReceived)]
    assert max(sizes) <= 1018 < len(data)  # fragments, never the whole data set
    assert [e.last for e in fragments if isinstance(e, ev.DataReceived)] == [False] * (
        len(fragments) - 1
    ) + [True]
    assert b"".join(bytes(e.data) for e in fragments if isinstance(e, ev.DataReceived)) == data
    acceptor.send_message(CT_CONTEXT, CStoreRSP(7, 0x0000, CT, "1.2.3.4.5"))
    assert deliver(acceptor, requestor) == [
        ev.CommandReceived(CT_CONTEXT, CStoreRSP(7, 0x0000, CT, "1.2.3.4.5"), False)
    ]


def test_command_set_fragmented_by_a_small_maximum() -> None:
    small = AcceptorPolicy("STORE_SCP", POLICY.syntaxes, max_pdu=32)
    requestor, acceptor = connect()
    answer(acceptor, small)
    deliver(acceptor, requestor)
    store = CStoreRQ(1, CT, "1.2.3")
    requestor.send_message(CT_CONTEXT, store)
    requestor.send_data(CT_CONTEXT, b"0123456789" * 10, last=True)
    sent = wire(requestor)
    assert len(pdus(sent)) > len(encode_command(store)) // 26
    events = acceptor.receive_data(sent)
    assert events[0] == ev.CommandReceived(CT_CONTEXT, store, True)
    assert len(events) == 1 + 4  # 100 bytes in PDVs of 26


def test_several_pdus_in_one_read() -> None:
    requestor, acceptor = associate()
    requestor.send_message(ECHO_CONTEXT, CEchoRQ(1))
    requestor.send_message(ECHO_CONTEXT, CEchoRQ(2))
    requestor.release()
    assert deliver(requestor, acceptor) == [
        ev.CommandReceived(ECHO_CONTEXT, CEchoRQ(1), False),
        ev.CommandReceived(ECHO_CONTEXT, CEchoRQ(2), False),
        ev.ReleaseRequested(),
    ]


# --- release ---------------------------------------------------------------------------------


def test_release() -> None:
    requestor, acceptor = associate()
    requestor.release()
    assert state(requestor) is State.STA7
    assert deliver(requestor, acceptor) == [ev.ReleaseRequested()]
    assert state(acceptor) is State.STA8
    acceptor.send_message(ECHO_CONTEXT, CEchoRSP(1, 0))  # AR-7: data may still go out
    acceptor.accept_release()
    assert state(acceptor) is State.STA13 and acceptor.artim_running
    assert deliver(acceptor, requestor) == [
        ev.CommandReceived(ECHO_CONTEXT, CEchoRSP(1, 0), False),  # AR-6
        ev.ReleaseConfirmed(),
        ev.ConnectionClosed(),
    ]
    assert state(requestor) is State.STA1 and requestor.closing
    assert acceptor.receive_data(b"") == [ev.ConnectionClosed()]  # the requestor closed
    assert state(acceptor) is State.STA1 and acceptor.closing and not acceptor.artim_running


def test_release_collision_acceptor_answers_first() -> None:
    requestor, acceptor = associate()
    requestor.release()
    acceptor.release()
    assert deliver(requestor, acceptor) == [ev.ReleaseRequested()]
    assert deliver(acceptor, requestor) == [ev.ReleaseRequested()]
    assert (state(requestor), state(acceptor)) == (State.STA9, State.STA10)
    acceptor.accept_release()  # deferred: the acceptor waits for the requestor's RP
    assert acceptor.data_to_send() == [] and state(acceptor) is State.STA10
    requestor.accept_release()
    assert state(requestor) is State.STA11
    assert deliver(requestor, acceptor) == [ev.ReleaseConfirmed()]
    assert state(acceptor) is State.STA13 and acceptor.artim_running
    assert deliver(acceptor, requestor) == [ev.ReleaseConfirmed(), ev.ConnectionClosed()]
    assert state(requestor) is State.STA1
    assert acceptor.receive_data(b"") == [ev.ConnectionClosed()]


def test_release_collision_requestor_answers_first() -> None:
    requestor, acceptor = associate()
    requestor.release()
    acceptor.release()
    deliver(requestor, acceptor)
    deliver(acceptor, requestor)
    requestor.accept_release()
    assert deliver(requestor, acceptor) == [ev.ReleaseConfirmed()]
    assert state(acceptor) is State.STA12
    acceptor.accept_release()
    assert pdus(wire(acceptor)) == [AReleaseRP()]
    assert state(acceptor) is State.STA13


# --- aborts ----------------------------------------------------------------------------------


def test_user_abort() -> None:
    requestor, acceptor = associate()
    requestor.abort()
    assert state(requestor) is State.STA13 and requestor.artim_running
    assert deliver(requestor, acceptor) == [
        ev.Aborted(AbortSource.SERVICE_USER, 0),
        ev.ConnectionClosed(),
    ]
    assert state(acceptor) is State.STA1 and acceptor.closing
    requestor.abort()  # already aborted: nothing more
    assert requestor.data_to_send() == []
    assert requestor.artim_expired() == [ev.ConnectionClosed()]
    assert requestor.closing


def test_abort_while_awaiting_the_answer() -> None:
    requestor, _ = connect()
    requestor.abort()
    assert pdus(wire(requestor)) == [AAbort(AbortSource.SERVICE_USER, 0)]
    assert state(requestor) is State.STA13


def test_garbage_is_answered_with_a_provider_abort() -> None:
    requestor, acceptor = associate()
    events = acceptor.receive_data(b"\xffGARBAGE GARBAGE")
    assert aborts(events) == [(AbortSource.SERVICE_PROVIDER, AbortReason.UNRECOGNIZED_PDU)]
    assert isinstance(events[0], ev.Aborted) and events[0].local_error
    assert state(acceptor) is State.STA13 and acceptor.artim_running
    sent = wire(acceptor)
    assert pdus(sent) == [AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.UNRECOGNIZED_PDU)]
    # the peer learns why
    assert requestor.receive_data(sent) == [
        ev.Aborted(AbortSource.SERVICE_PROVIDER, AbortReason.UNRECOGNIZED_PDU),
        ev.ConnectionClosed(),
    ]
    # and if the peer never closes the connection, ARTIM ends it
    assert acceptor.artim_expired() == [ev.ConnectionClosed()]
    assert acceptor.closing


def test_garbage_before_the_request() -> None:
    acceptor = Connection()
    acceptor.connection_made()
    events = acceptor.receive_data(b"\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    assert aborts(events) == [(AbortSource.SERVICE_PROVIDER, AbortReason.UNRECOGNIZED_PDU)]
    assert pdus(wire(acceptor)) == [
        AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.UNRECOGNIZED_PDU)
    ]
    assert state(acceptor) is State.STA13


def test_garbage_after_our_abort_gets_another_abort_only() -> None:
    requestor, acceptor = associate()
    acceptor.abort()
    wire(acceptor)
    assert acceptor.receive_data(b"\xee\x00\x00\x00\x00\x00") == []  # AA-7
    assert pdus(wire(acceptor)) == [
        AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.UNRECOGNIZED_PDU)
    ]
    requestor.send_message(ECHO_CONTEXT, CEchoRQ(1))
    assert deliver(requestor, acceptor) == []  # AA-6: ignored
    assert acceptor.data_to_send() == [] and state(acceptor) is State.STA13


def test_malformed_pdu_is_an_invalid_parameter_abort() -> None:
    requestor, _ = connect()
    events = requestor.receive_data(bytes.fromhex("03 00 00000005 00 01 01 01 00"))
    assert aborts(events) == [
        (AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    ]
    assert state(requestor) is State.STA13


@pytest.mark.parametrize(
    "pdu",
    [
        AReleaseRP(),
        make_request(),
        AAssociateRJ(RejectResult.TRANSIENT, RejectSource.SERVICE_USER, 1),
    ],
    ids=lambda pdu: type(pdu).__name__,
)
def test_unexpected_pdu_in_sta6(pdu: PDU) -> None:
    _, acceptor = associate()
    events = acceptor.receive_data(encode(pdu))
    assert aborts(events) == [(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)]
    assert pdus(wire(acceptor)) == [
        AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)
    ]
    assert state(acceptor) is State.STA13


def test_data_set_before_its_command_is_aborted() -> None:
    _, acceptor = associate()
    stray = PDataTF((PDV(CT_CONTEXT, False, True, b"pixels"),))
    events = acceptor.receive_data(encode(stray))
    assert aborts(events) == [(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)]
    assert state(acceptor) is State.STA13


def test_events_before_a_violation_are_kept() -> None:
    _, acceptor = associate()
    command = PDV(ECHO_CONTEXT, True, True, encode_command(CEchoRQ(1)))
    stray = PDV(ECHO_CONTEXT, False, True, b"x")
    events = acceptor.receive_data(encode(PDataTF((command, stray))))
    assert events[0] == ev.CommandReceived(ECHO_CONTEXT, CEchoRQ(1), False)
    assert aborts(events[1:]) == [(AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU)]


@pytest.mark.parametrize("context_id", [5, 2, 255])
def test_pdv_on_a_context_that_was_not_accepted_is_aborted(context_id: int) -> None:
    _, acceptor = associate()
    pdv = PDV(context_id, True, True, encode_command(CEchoRQ(1)))
    events = acceptor.receive_data(encode(PDataTF((pdv,))))
    assert aborts(events) == [
        (AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    ]
    assert not any(isinstance(e, ev.CommandReceived) for e in events)


def test_p_data_tf_over_the_negotiated_maximum_is_aborted() -> None:
    _, acceptor = associate()
    too_big = PDataTF((PDV(CT_CONTEXT, False, False, bytes(1024 - 6 + 1)),))
    events = acceptor.receive_data(encode(too_big)[:6])  # the header is enough
    assert aborts(events) == [
        (AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    ]


def test_requestor_announcing_no_limit_does_not_lift_ours() -> None:
    """A peer's Maximum Length 0 bounds what we send (nothing), never what we accept:
    that is our own announcement (PS3.8 D.1), here 1024."""
    rq = build_request("STORE_SCU", "STORE_SCP", CONTEXTS)
    others = tuple(item for item in rq.user_items if not isinstance(item, MaximumLength))
    rq = replace(rq, user_items=(MaximumLength(0), *others))  # not what we would announce
    _, acceptor = associate(rq)
    assert acceptor.association is not None and acceptor.association.peer_max_pdu == 0
    events = acceptor.receive_data(bytes.fromhex("04 00 ffffffff 00000002 03 00"))
    assert aborts(events) == [
        (AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    ]
    # and what we send to it is still fragmented at a size of our own
    _, acceptor = associate(rq)
    acceptor.send_data(CT_CONTEXT, bytes(9 << 20), last=True)
    lengths = [int.from_bytes(bytes(b[2:6]), "big") for b in acceptor.data_to_send()[::2]]
    assert lengths == [(4 << 20) + 6, (4 << 20) + 6, (1 << 20) + 6]


def test_our_own_no_limit_still_stops_at_the_ceiling() -> None:
    """We announced 0 (no limit): a 4 GiB P-DATA-TF is still refused from its header,
    reason 6 (Table 9-26), not buffered."""
    policy = AcceptorPolicy(POLICY.ae_title, POLICY.syntaxes, max_pdu=0)
    requestor, acceptor = connect()
    answer(acceptor, policy)
    deliver(acceptor, requestor)
    header = b"\x04\x00" + (MAX_PDATA_CEILING + 1).to_bytes(4, "big")
    events = acceptor.receive_data(header + bytes(10))
    assert aborts(events) == [
        (AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)
    ]
    assert acceptor.partial_pdu is None


def test_a_partial_pdu_is_reported_to_the_driver() -> None:
    """The driver times a PDU from its first byte and reserves its size: the core says
    which PDU is partly here (its number changes with each PDU) and, once the header is
    here, how large it is."""
    requestor, acceptor = associate()
    assert acceptor.partial_pdu is None
    requestor.send_message(ECHO_CONTEXT, CEchoRQ(1))
    data = wire(requestor)
    acceptor.receive_data(data[:3])
    first = acceptor.partial_pdu
    assert first is not None and first.size == 0  # no header yet
    acceptor.receive_data(data[3:10])
    assert acceptor.partial_pdu == PartialPDU(first.number, len(data))
    requestor.send_message(ECHO_CONTEXT, CEchoRQ(2))
    acceptor.receive_data(data[10:] + wire(requestor)[:1])  # the first ends, the next starts
    second = acceptor.partial_pdu
    assert second is not None and second.number == first.number + 1
    acceptor.abort()
    assert acceptor.partial_pdu is not None  # Sta13: the peer's bytes are still read
    acceptor.artim_expired()
    assert acceptor.partial_pdu is None  # closed


# --- ARTIM and the end of the transport connection -------------------------------------------


def test_artim_expiry_before_any_request() -> None:
    acceptor = Connection()
    acceptor.connection_made()
    assert acceptor.artim_running
    assert acceptor.artim_expired() == [ev.ConnectionClosed()]
    assert state(acceptor) is State.STA1 and acceptor.closing and not acceptor.artim_running
    assert acceptor.data_to_send() == []


def test_artim_expiry_is_ignored_when_it_is_not_running() -> None:
    requestor, acceptor = associate()
    assert acceptor.artim_expired() == [] and requestor.artim_expired() == []
    assert acceptor.established


def test_peer_closing_an_established_association() -> None:
    requestor, _ = associate()
    events = requestor.receive_data(b"")
    assert aborts(events) == [(AbortSource.SERVICE_PROVIDER, 0)]
    assert events[-1] == ev.ConnectionClosed()
    assert state(requestor) is State.STA1 and requestor.closing


def test_peer_closing_before_its_request() -> None:
    acceptor = Connection()
    acceptor.connection_made()
    assert acceptor.receive_data(b"") == [ev.ConnectionClosed()]  # AA-5
    assert state(acceptor) is State.STA1


def test_peer_closing_while_we_await_the_answer() -> None:
    requestor, _ = connect()
    events = requestor.receive_data(b"")
    assert aborts(events) == [(AbortSource.SERVICE_PROVIDER, 0)]
    assert state(requestor) is State.STA1


def test_nothing_happens_once_closed() -> None:
    requestor, acceptor = associate()
    requestor.abort()
    deliver(requestor, acceptor)
    assert state(acceptor) is State.STA1
    assert acceptor.receive_data(b"") == []
    assert acceptor.receive_data(encode(AReleaseRQ())) == []
    assert acceptor.artim_expired() == []
    acceptor.abort()
    assert acceptor.data_to_send() == []


# --- our caller's mistakes ------------------------------------------------------------------


def test_local_protocol_errors() -> None:
    requestor, acceptor = connect()
    with pytest.raises(LocalProtocolError):
        requestor.send_message(ECHO_CONTEXT, CEchoRQ(1))  # no association yet
    with pytest.raises(LocalProtocolError):
        requestor.release()  # Sta5
    assert acceptor.request is not None
    accepted = negotiate(acceptor.request, POLICY)
    assert not isinstance(accepted, AAssociateRJ)
    acceptor.accept(*accepted)
    deliver(acceptor, requestor)
    with pytest.raises(LocalProtocolError):
        requestor.send_message(5, CEchoRQ(1))  # a context that was not accepted
    with pytest.raises(LocalProtocolError):
        requestor.send_data(5, b"data", last=True)
    with pytest.raises(LocalProtocolError):
        acceptor.accept(*accepted)  # Sta6
    with pytest.raises(LocalProtocolError):
        acceptor.accept_release()  # no release was asked for
    assert requestor.established and acceptor.established
