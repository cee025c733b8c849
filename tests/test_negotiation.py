"""Association negotiation, both roles (PS3.8 §7.1, Annex D; PS3.7 Annex D.3.3)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimse.errors import ProtocolError
from dimse.negotiation import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    MAX_CONTEXTS,
    AcceptedContext,
    AcceptorPolicy,
    Association,
    ProposedContext,
    build_request,
    negotiate,
    provider_rejection,
    read_acceptance,
)
from dimse.pdu import (
    MAX_PDATA_CEILING,
    PROTOCOL_VERSION_NOT_SUPPORTED,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AsyncOperationsWindow,
    ContextResult,
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextAC,
    RejectReason,
    RejectResult,
    RejectSource,
    RoleSelection,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserIdentityType,
    decode,
    encode,
)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

POLICY = AcceptorPolicy(
    ae_title="STORE_SCP",
    syntaxes={
        VERIFICATION: frozenset({IVLE, EVLE}),
        CT: frozenset({IVLE, EVLE}),
        PATIENT_ROOT_GET: frozenset({IVLE}),
    },
    max_pdu=16384,
)


def request(*contexts: ProposedContext, **kwargs: Any) -> AAssociateRQ:
    return build_request("STORE_SCU", "STORE_SCP", contexts, **kwargs)


def over_the_wire(ac: AAssociateAC) -> AAssociateAC:
    decoded = decode(encode(ac))
    assert isinstance(decoded, AAssociateAC)
    return decoded


def accepted(
    rq: AAssociateRQ, policy: AcceptorPolicy = POLICY, **kwargs: bytes
) -> tuple[AAssociateAC, Association]:
    answer = negotiate(rq, policy, **kwargs)
    assert not isinstance(answer, AAssociateRJ), answer
    return answer


def rejected(rq: AAssociateRQ, policy: AcceptorPolicy = POLICY) -> AAssociateRJ:
    answer = negotiate(rq, policy)
    assert isinstance(answer, AAssociateRJ), answer
    return answer


ECHO = ProposedContext(VERIFICATION, (IVLE,))


# --- the request -------------------------------------------------------------------------


def test_request_uses_odd_context_ids_in_order() -> None:
    rq = request(ECHO, ProposedContext(CT, (JPEG_BASELINE, EVLE)), ProposedContext(MR, (IVLE,)))
    assert [pc.id for pc in rq.presentation_contexts] == [1, 3, 5]
    assert [pc.abstract_syntax for pc in rq.presentation_contexts] == [VERIFICATION, CT, MR]
    assert rq.presentation_contexts[1].transfer_syntaxes == (JPEG_BASELINE, EVLE)
    assert (rq.calling_ae, rq.called_ae) == ("STORE_SCU", "STORE_SCP")


def test_request_of_the_most_contexts_ends_at_id_255() -> None:
    rq = request(*[ECHO] * MAX_CONTEXTS)
    assert rq.presentation_contexts[-1].id == 255
    assert all(pc.id % 2 == 1 for pc in rq.presentation_contexts)


@pytest.mark.parametrize("count", [0, MAX_CONTEXTS + 1])
def test_request_of_no_or_too_many_contexts(count: int) -> None:
    with pytest.raises(ValueError):
        request(*[ECHO] * count)


def test_request_user_items_in_ascending_sub_item_type() -> None:
    role = RoleSelection(PATIENT_ROOT_GET, True, True)
    extra = SOPClassExtendedNegotiation(CT, b"\x01")
    identity = UserIdentityRQ(UserIdentityType.USERNAME, True, b"alice")
    rq = request(
        ECHO, max_pdu=32768, async_ops=(4, 2), roles=[role], extra_items=[extra],
        user_identity=identity,
    )  # fmt: skip
    assert rq.user_items == (
        MaximumLength(32768),
        ImplementationClassUID(IMPLEMENTATION_CLASS_UID),
        AsyncOperationsWindow(4, 2),
        role,
        ImplementationVersionName(IMPLEMENTATION_VERSION_NAME),
        extra,
        identity,
    )
    assert [type(i).TYPE for i in rq.user_items] == sorted(type(i).TYPE for i in rq.user_items)
    assert decode(encode(rq)) == rq


def test_request_without_options() -> None:
    rq = request(ECHO)
    assert rq.user_item(AsyncOperationsWindow) is None
    assert rq.user_item(UserIdentityRQ) is None
    assert rq.user_item(MaximumLength) == MaximumLength(1 << 20)


# --- presentation context results (PS3.8 Table 9-18) -----------------------------------


def test_context_results_of_the_acceptor() -> None:
    rq = request(
        ProposedContext(VERIFICATION, (JPEG_BASELINE, EVLE, IVLE)),  # 1: accepted, EVLE
        ProposedContext(CT, (JPEG_BASELINE,)),  # 3: no transfer syntax we take
        ProposedContext(MR, (IVLE,)),  # 5: an abstract syntax we do not support
    )
    ac, association = accepted(rq)
    assert ac.presentation_contexts == (
        PresentationContextAC(1, ContextResult.ACCEPTANCE, EVLE),
        PresentationContextAC(3, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED),
        PresentationContextAC(5, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
    )
    assert association.contexts == {1: AcceptedContext(1, VERIFICATION, EVLE)}
    assert [a.id for a in association.rejected] == [3, 5]


def test_the_peers_first_acceptable_transfer_syntax_is_taken() -> None:
    ac, _ = accepted(request(ProposedContext(CT, (IVLE, EVLE))))
    assert ac.presentation_contexts[0].transfer_syntax == IVLE
    ac, _ = accepted(request(ProposedContext(CT, (EVLE, IVLE))))
    assert ac.presentation_contexts[0].transfer_syntax == EVLE


def test_requestor_reads_every_result() -> None:
    """Results 0-4 as the requestor sees them: accepted contexts, and the rest kept apart."""
    rq = request(*[ProposedContext(CT, (EVLE, IVLE))] * 5)
    ac = AAssociateAC(
        "STORE_SCP",
        "STORE_SCU",
        (
            PresentationContextAC(1, ContextResult.ACCEPTANCE, IVLE),
            PresentationContextAC(3, ContextResult.USER_REJECTION),
            PresentationContextAC(5, ContextResult.NO_REASON),
            PresentationContextAC(7, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
            PresentationContextAC(9, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED),
        ),
        (MaximumLength(4096),),
    )
    association = read_acceptance(rq, over_the_wire(ac))
    assert association.contexts == {1: AcceptedContext(1, CT, IVLE)}
    assert [r.result for r in association.rejected] == [
        ContextResult.USER_REJECTION,
        ContextResult.NO_REASON,
        ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED,
        ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED,
    ]
    assert association.context_for(CT) == AcceptedContext(1, CT, IVLE)
    assert association.context_for(CT, EVLE) is None
    assert association.context_for(MR) is None


def test_acceptance_of_a_context_that_was_not_proposed() -> None:
    rq = request(ECHO)
    ac = AAssociateAC("A", "B", (PresentationContextAC(3, ContextResult.ACCEPTANCE, IVLE),))
    with pytest.raises(ProtocolError, match="unknown context ID 3"):
        read_acceptance(rq, ac)


def test_acceptance_answering_a_context_twice() -> None:
    """PS3.8 §9.3.3.2: one answer per proposed context ID."""
    rq = request(ECHO)
    answer = PresentationContextAC(1, ContextResult.ACCEPTANCE, IVLE)
    ac = AAssociateAC("A", "B", (answer, answer))
    with pytest.raises(ProtocolError, match="context ID 1 twice"):
        read_acceptance(rq, ac)


def test_acceptance_with_a_transfer_syntax_that_was_not_proposed() -> None:
    rq = request(ECHO)
    ac = AAssociateAC("A", "B", (PresentationContextAC(1, ContextResult.ACCEPTANCE, EVLE),))
    with pytest.raises(ProtocolError, match="not proposed"):
        read_acceptance(rq, ac)


# --- maximum length, per direction (PS3.8 D.1) -------------------------------------------


def test_maximum_pdu_per_direction() -> None:
    rq = request(ECHO, max_pdu=32768)
    ac, acceptor = accepted(rq)
    assert ac.user_item(MaximumLength) == MaximumLength(16384)
    assert (acceptor.max_pdu, acceptor.peer_max_pdu) == (16384, 32768)
    requestor = read_acceptance(rq, ac)
    assert (requestor.max_pdu, requestor.peer_max_pdu) == (32768, 16384)


def test_maximum_pdu_zero_means_no_limit_and_absent_means_zero() -> None:
    # Our own 0 is announced as the ceiling our reader keeps, not as "no limit".
    rq = request(ECHO, max_pdu=0)
    assert rq.user_item(MaximumLength) == MaximumLength(MAX_PDATA_CEILING)
    # A peer's 0: we may send PDUs of any length.
    items = tuple(i for i in rq.user_items if not isinstance(i, MaximumLength))
    rq = replace(rq, user_items=(MaximumLength(0), *items))
    _, acceptor = accepted(rq)
    assert acceptor.peer_max_pdu == 0
    ac = AAssociateAC("A", "B", (PresentationContextAC(1, ContextResult.ACCEPTANCE, IVLE),))
    assert read_acceptance(rq, ac).peer_max_pdu == 0


# --- asynchronous operations window (PS3.7 D.3.3.3) ----------------------------------------


@pytest.mark.parametrize(
    ("requested", "limit", "expected"),
    [(5, 16, 5), (16, 16, 16), (20, 16, 16), (0, 16, 16), (5, 0, 5), (0, 0, 0), (1, 16, 1)],
)
def test_async_window_is_the_smaller_where_0_is_unlimited(
    requested: int, limit: int, expected: int
) -> None:
    rq = request(ECHO, async_ops=(requested, 7))
    policy = AcceptorPolicy("STORE_SCP", POLICY.syntaxes, max_async_ops=limit)
    ac, acceptor = accepted(rq, policy)
    # The acceptor invokes nothing on the requestor, so the requestor performs 1.
    assert ac.user_item(AsyncOperationsWindow) == AsyncOperationsWindow(expected, 1)
    assert (acceptor.max_invoked, acceptor.max_performed) == (expected, 1)
    requestor = read_acceptance(rq, ac)
    assert (requestor.max_invoked, requestor.max_performed) == (expected, 1)


def test_without_async_window_operations_are_synchronous() -> None:
    rq = request(ECHO)
    ac, acceptor = accepted(rq)
    assert ac.user_item(AsyncOperationsWindow) is None
    assert (acceptor.max_invoked, acceptor.max_performed) == (1, 1)
    assert (read_acceptance(rq, ac).max_invoked, read_acceptance(rq, ac).max_performed) == (1, 1)


# --- SCP/SCU role selection (PS3.7 D.3.3.4) -----------------------------------------------


def test_role_selection() -> None:
    rq = request(
        ECHO,
        ProposedContext(PATIENT_ROOT_GET, (IVLE,)),
        ProposedContext(CT, (IVLE,)),
        roles=[
            RoleSelection(PATIENT_ROOT_GET, True, False),
            RoleSelection(CT, True, True),  # the SCP role of CT: not ours to give
            RoleSelection(MR, False, True),  # a class that was not proposed: no answer
        ],
    )
    policy = AcceptorPolicy("STORE_SCP", POLICY.syntaxes, scp_role_classes=frozenset({CT}))
    ac, acceptor = accepted(rq, policy)
    expected = (RoleSelection(PATIENT_ROOT_GET, True, False), RoleSelection(CT, True, True))
    assert tuple(ac.user_items_of(RoleSelection)) == expected == acceptor.roles
    assert read_acceptance(rq, ac).roles == expected


def test_scp_role_refused_unless_the_policy_offers_it() -> None:
    rq = request(ProposedContext(CT, (IVLE,)), roles=[RoleSelection(CT, False, True)])
    ac, _ = accepted(rq)
    assert ac.user_items_of(RoleSelection) == [RoleSelection(CT, False, False)]


# --- user identity (PS3.7 D.3.3.7) ---------------------------------------------------------


def test_user_identity_positive_response() -> None:
    identity = UserIdentityRQ(UserIdentityType.JWT, True, b"header.payload.signature")
    rq = request(ECHO, user_identity=identity)
    ac, acceptor = accepted(rq, identity_response=b"welcome")
    assert ac.user_item(UserIdentityAC) == UserIdentityAC(b"welcome")
    assert acceptor.user_identity == identity
    assert read_acceptance(rq, ac).user_identity == identity


def test_user_identity_without_response_requested() -> None:
    identity = UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, False, b"bob", b"secret")
    ac, acceptor = accepted(request(ECHO, user_identity=identity), identity_response=b"x")
    assert ac.user_item(UserIdentityAC) is None
    assert acceptor.user_identity == identity


# --- implementation identification ------------------------------------------------------


def test_implementation_uid_and_version_are_exchanged() -> None:
    rq = request(ECHO)
    ac, acceptor = accepted(rq)
    assert ac.user_item(ImplementationClassUID) == ImplementationClassUID(IMPLEMENTATION_CLASS_UID)
    assert acceptor.peer_implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert acceptor.peer_implementation_version_name == IMPLEMENTATION_VERSION_NAME
    requestor = read_acceptance(rq, ac)
    assert requestor.peer_implementation_class_uid == IMPLEMENTATION_CLASS_UID
    assert requestor.peer_implementation_version_name == IMPLEMENTATION_VERSION_NAME
    assert (ac.called_ae, ac.calling_ae) == (rq.called_ae, rq.calling_ae)


# --- rejections (PS3.8 Table 9-21) -----------------------------------------------------------


def _user_rj(reason: RejectReason) -> AAssociateRJ:
    return AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, reason)


def test_called_ae_not_recognized() -> None:
    rq = build_request("STORE_SCU", "SOMEONE_ELSE", [ECHO])
    assert rejected(rq) == _user_rj(RejectReason.CALLED_AE_NOT_RECOGNIZED)
    assert encode(rejected(rq)) == bytes.fromhex("03 00 00000004 00 01 01 07")


def test_called_ae_is_not_checked_when_the_policy_says_so() -> None:
    rq = build_request("STORE_SCU", "SOMEONE_ELSE", [ECHO])
    policy = AcceptorPolicy("STORE_SCP", POLICY.syntaxes, check_called_ae=False)
    ac, association = accepted(rq, policy)
    assert ac.called_ae == association.called_ae == "SOMEONE_ELSE"


def test_ae_titles_compare_without_their_padding() -> None:
    rq = build_request("  STORE_SCU ", " STORE_SCP  ", [ECHO])
    _, association = accepted(rq, AcceptorPolicy("STORE_SCP", POLICY.syntaxes))
    assert association.contexts == {1: AcceptedContext(1, VERIFICATION, IVLE)}


def test_application_context_name_not_supported() -> None:
    rq = request(ECHO)
    other = AAssociateRQ(
        rq.called_ae, "NOT-KNOWN", rq.presentation_contexts, rq.user_items, "1.2.3"
    )
    policy = AcceptorPolicy("OTHER_SCP", POLICY.syntaxes)
    # checked first: the called AE title is not ours either
    assert rejected(other, policy) == _user_rj(RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED)


def test_no_acceptable_presentation_context() -> None:
    rq = request(ProposedContext(MR, (IVLE,)), ProposedContext(CT, (JPEG_BASELINE,)))
    assert rejected(rq) == _user_rj(RejectReason.NO_REASON_GIVEN)


@pytest.mark.parametrize(
    ("version", "supported"), [(1, True), (3, True), (0xFFFF, True), (2, False), (0, False)]
)
def test_protocol_version(version: int, supported: bool) -> None:
    """Only bit 0 (version 1) is tested (PS3.8 Table 9-11); the ACSE provider rejects."""
    rq = request(ECHO)
    rq = AAssociateRQ(
        rq.called_ae,
        rq.calling_ae,
        rq.presentation_contexts,
        rq.user_items,
        protocol_version=version,
    )
    expected = (
        None
        if supported
        else AAssociateRJ(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_PROVIDER_ACSE,
            PROTOCOL_VERSION_NOT_SUPPORTED,
        )
    )
    assert provider_rejection(rq) == expected


# --- properties ---------------------------------------------------------------------------

_SYNTAXES = [IVLE, EVLE, JPEG_BASELINE, "1.2.840.10008.1.2.5"]
_CLASSES = [VERIFICATION, CT, MR, PATIENT_ROOT_GET]


@given(
    proposals=st.lists(
        st.builds(
            ProposedContext,
            st.sampled_from(_CLASSES),
            st.lists(st.sampled_from(_SYNTAXES), min_size=1, max_size=4, unique=True).map(tuple),
        ),
        min_size=1,
        max_size=10,
    ),
    supported=st.dictionaries(
        st.sampled_from(_CLASSES), st.frozensets(st.sampled_from(_SYNTAXES), min_size=1)
    ),
)
def test_negotiation_answers_every_proposal_consistently(
    proposals: list[ProposedContext], supported: dict[str, frozenset[str]]
) -> None:
    rq = request(*proposals)
    answer = negotiate(rq, AcceptorPolicy("STORE_SCP", supported))
    if isinstance(answer, AAssociateRJ):
        assert answer == _user_rj(RejectReason.NO_REASON_GIVEN)
        assert all(
            not set(p.transfer_syntaxes) & supported.get(p.abstract_syntax, frozenset())
            for p in proposals
        )
        return
    ac, acceptor = answer
    assert [a.id for a in ac.presentation_contexts] == [p.id for p in rq.presentation_contexts]
    for proposal, result in zip(rq.presentation_contexts, ac.presentation_contexts, strict=True):
        ours = supported.get(proposal.abstract_syntax)
        if ours is None:
            assert result.result is ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED
        elif not set(proposal.transfer_syntaxes) & ours:
            assert result.result is ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED
        else:
            first = next(ts for ts in proposal.transfer_syntaxes if ts in ours)
            assert result == PresentationContextAC(proposal.id, ContextResult.ACCEPTANCE, first)
    # what the requestor reads from the wire is what the acceptor agreed to
    requestor = read_acceptance(rq, over_the_wire(ac))
    assert requestor.contexts == acceptor.contexts
