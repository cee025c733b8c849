"""Association negotiation (PS3.8 §7.1, Annex D; PS3.7 Annex D.3.3), both roles.

Pure functions over PDUs: the requestor builds an A-ASSOCIATE-RQ from what it
wants to send and reads the A-ASSOCIATE-AC into an :class:`Association`; the
acceptor answers an A-ASSOCIATE-RQ from its :class:`AcceptorPolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dimse.errors import ProtocolError
from dimse.pdu import (
    APPLICATION_CONTEXT,
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
    PresentationContextRQ,
    RejectReason,
    RejectResult,
    RejectSource,
    RoleSelection,
    UserIdentityAC,
    UserIdentityRQ,
    UserItem,
)
from dimse.sop_classes import is_uid

# A UID under pydicom's root, derived once with
# pydicom.uid.generate_uid(entropy_srcs=["dimse", "implementation class uid"]).
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.11395968651420325791802745075053095804"
IMPLEMENTATION_VERSION_NAME = "DIMSE_0.1.0"

DEFAULT_MAX_PDU = 1 << 20  # what we offer to receive; dcmtk's default is 16 KiB
#: Outstanding operations an SCP lets a requestor invoke (PS3.7 §D.3.3.3). C-STOREs
#: in flight let the archive file them in larger rounds: on the benchmark's 40 KB
#: images, 8 -> 16 -> 32 gave ~300 -> ~440 -> ~620 images/s; once the rounds' own
#: costs shrank, 32 -> 64 gave +23% (--sync file) and +30% (filesystem). 64 -> 128
#: gave no clear gain then; once the event loop's header scan shrank (dimse.shapes),
#: it gave 4-16% less wall time with --sync file in six interleaved A/B series of
#: 8-12 runs (rounds of ~50 images instead of ~30), ~2% with --sync filesystem.
#: 128 -> 256 gave nothing while the archive held at most 8 MB of data sets (its
#: window no longer fitted); with room for it, 3-7% less wall time in four A/B
#: series of 8-10 (rounds of ~100: each round's index look-up, commit and folder
#: fsyncs are shared by twice as many images).
MAX_ASYNC_OPS = 256
MAX_CONTEXTS = 128  # odd IDs 1..255 (PS3.8 §9.3.2.2)


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """An abstract syntax and the transfer syntaxes we can send it in, preferred first."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]

    def __post_init__(self) -> None:
        """ValueError here, not when the A-ASSOCIATE-RQ is encoded on the wire."""
        for uid in (self.abstract_syntax, *self.transfer_syntaxes):
            if not is_uid(uid):
                raise ValueError(f"not a UID (PS3.5 §9.1): {uid!r}")


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class Association:
    """What both sides agreed on; the same shape for requestor and acceptor.

    `max_invoked`/`max_performed` are the requestor's asynchronous operations window
    (1/1 when not negotiated: synchronous), 0 meaning unlimited (PS3.7 D.3.3.3).
    `peer_max_pdu` bounds what we send, 0 meaning no limit.
    """

    calling_ae: str
    called_ae: str
    contexts: Mapping[int, AcceptedContext]
    peer_max_pdu: int
    max_pdu: int
    max_invoked: int = 1
    max_performed: int = 1
    peer_implementation_class_uid: str = ""
    peer_implementation_version_name: str = ""
    roles: tuple[RoleSelection, ...] = ()
    user_identity: UserIdentityRQ | None = None
    rejected: tuple[PresentationContextAC, ...] = field(default=())

    def context_for(
        self, abstract_syntax: str, transfer_syntax: str | None = None
    ) -> AcceptedContext | None:
        """An accepted context for this abstract (and transfer) syntax, if any."""
        for context in self.contexts.values():
            if context.abstract_syntax == abstract_syntax and transfer_syntax in (
                None,
                context.transfer_syntax,
            ):
                return context
        return None


def _min_window(requested: int, limit: int) -> int:
    """The smaller of two window sizes where 0 means unlimited."""
    if requested == 0:
        return limit
    if limit == 0:
        return requested
    return min(requested, limit)


# --- requestor -------------------------------------------------------------------


def build_request(
    calling_ae: str,
    called_ae: str,
    contexts: Sequence[ProposedContext],
    *,
    max_pdu: int = DEFAULT_MAX_PDU,
    async_ops: tuple[int, int] | None = None,
    roles: Sequence[RoleSelection] = (),
    user_identity: UserIdentityRQ | None = None,
    extra_items: Sequence[UserItem] = (),
) -> AAssociateRQ:
    """An A-ASSOCIATE-RQ proposing `contexts` with odd IDs 1, 3, 5, ..."""
    if not contexts:
        raise ValueError("propose at least one presentation context")
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"at most {MAX_CONTEXTS} presentation contexts, not {len(contexts)}")
    proposed = tuple(
        PresentationContextRQ(2 * index + 1, c.abstract_syntax, c.transfer_syntaxes)
        for index, c in enumerate(contexts)
    )
    items: list[UserItem] = [
        MaximumLength(announced_max_length(max_pdu)),
        ImplementationClassUID(IMPLEMENTATION_CLASS_UID),
    ]
    if async_ops is not None:
        items.append(AsyncOperationsWindow(*async_ops))
    items.extend(roles)
    items.append(ImplementationVersionName(IMPLEMENTATION_VERSION_NAME))
    items.extend(extra_items)
    if user_identity is not None:
        items.append(user_identity)
    return AAssociateRQ(called_ae, calling_ae, proposed, tuple(items))


def read_acceptance(rq: AAssociateRQ, ac: AAssociateAC) -> Association:
    """The association the requestor got, checking the answer against the proposal."""
    proposed = {pc.id: pc for pc in rq.presentation_contexts}
    accepted: dict[int, AcceptedContext] = {}
    rejected: list[PresentationContextAC] = []
    answered: set[int] = set()
    for answer in ac.presentation_contexts:
        mine = proposed.get(answer.id)
        if mine is None:
            raise ProtocolError(f"A-ASSOCIATE-AC answers unknown context ID {answer.id}")
        # One answer per proposed context (PS3.8 §9.3.3.2, §7.1.1.13): a second one for
        # the same ID would leave its result ambiguous.
        if answer.id in answered:
            raise ProtocolError(f"A-ASSOCIATE-AC answers context ID {answer.id} twice")
        answered.add(answer.id)
        if answer.result is not ContextResult.ACCEPTANCE:
            rejected.append(answer)
        elif answer.transfer_syntax not in mine.transfer_syntaxes:
            raise ProtocolError(
                f"context {answer.id} accepted with transfer syntax "
                f"{answer.transfer_syntax} that was not proposed"
            )
        else:
            accepted[answer.id] = AcceptedContext(
                answer.id, mine.abstract_syntax, answer.transfer_syntax
            )
    window = ac.user_item(AsyncOperationsWindow)
    max_length = ac.user_item(MaximumLength)
    return Association(
        calling_ae=rq.calling_ae,
        called_ae=rq.called_ae,
        contexts=accepted,
        peer_max_pdu=max_length.max_length if max_length else 0,
        max_pdu=_announced_max_pdu(rq),
        max_invoked=window.invoked if window else 1,
        max_performed=window.performed if window else 1,
        peer_implementation_class_uid=_implementation_uid(ac),
        peer_implementation_version_name=_implementation_version(ac),
        roles=tuple(ac.user_items_of(RoleSelection)),
        user_identity=rq.user_item(UserIdentityRQ),
        rejected=tuple(rejected),
    )


def announced_max_length(max_pdu: int) -> int:
    """What we announce for our `max_pdu`: our 0 ("no limit") is in fact the ceiling
    our PDU reader keeps (MAX_PDATA_CEILING). Announcing 0 would let a peer send one
    larger P-DATA-TF, which we would then have to abort (PS3.8 D.1)."""
    return max_pdu or MAX_PDATA_CEILING


def _announced_max_pdu(pdu: AAssociateRQ | AAssociateAC) -> int:
    item = pdu.user_item(MaximumLength)
    return item.max_length if item else 0


def _implementation_uid(pdu: AAssociateRQ | AAssociateAC) -> str:
    item = pdu.user_item(ImplementationClassUID)
    return item.uid if item else ""


def _implementation_version(pdu: AAssociateRQ | AAssociateAC) -> str:
    item = pdu.user_item(ImplementationVersionName)
    return item.name if item else ""


# --- acceptor --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcceptorPolicy:
    """What an SCP accepts.

    `syntaxes` maps each supported abstract syntax to the transfer syntaxes accepted
    for it; of those the peer proposes, the peer's first is taken, which lets a
    sender keep its files' own encoding. `max_async_ops` caps how many operations
    the requestor may have outstanding (0: unlimited).
    """

    ae_title: str
    syntaxes: Mapping[str, frozenset[str]]
    check_called_ae: bool = True
    max_pdu: int = DEFAULT_MAX_PDU
    max_async_ops: int = MAX_ASYNC_OPS
    scp_role_classes: frozenset[str] = frozenset()  # SOP classes we can be SCU of (C-GET)


def provider_rejection(rq: AAssociateRQ) -> AAssociateRJ | None:
    """The service provider's own check at AE-6 (PS3.8 §9.2.3): protocol version."""
    if not rq.protocol_version & 1:
        return AAssociateRJ(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_PROVIDER_ACSE,
            PROTOCOL_VERSION_NOT_SUPPORTED,
        )
    return None


def _user_reject(reason: RejectReason) -> AAssociateRJ:
    return AAssociateRJ(RejectResult.PERMANENT, RejectSource.SERVICE_USER, reason)


def negotiate(
    rq: AAssociateRQ, policy: AcceptorPolicy, *, identity_response: bytes | None = None
) -> tuple[AAssociateAC, Association] | AAssociateRJ:
    """Answer an A-ASSOCIATE-RQ: an acceptance and what it agrees to, or a rejection.

    `identity_response` is sent back when the requestor asked for a positive user
    identity response (PS3.7 D.3.3.7.2); the identity is verified by the caller.
    """
    if rq.application_context != APPLICATION_CONTEXT:
        return _user_reject(RejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED)
    # An AE title of 16 spaces "shall not be used" (PS3.8 Table 9-11); it decodes as "",
    # which no A-ASSOCIATE-AC could echo back.
    if not rq.calling_ae.strip():
        return _user_reject(RejectReason.CALLING_AE_NOT_RECOGNIZED)
    if not rq.called_ae.strip():
        return _user_reject(RejectReason.CALLED_AE_NOT_RECOGNIZED)
    if policy.check_called_ae and rq.called_ae.strip() != policy.ae_title.strip():
        return _user_reject(RejectReason.CALLED_AE_NOT_RECOGNIZED)

    answers: list[PresentationContextAC] = []
    accepted: dict[int, AcceptedContext] = {}
    for pc in rq.presentation_contexts:
        supported = policy.syntaxes.get(pc.abstract_syntax)
        if supported is None:
            answers.append(
                PresentationContextAC(pc.id, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED)
            )
            continue
        chosen = next((ts for ts in pc.transfer_syntaxes if ts in supported), None)
        if chosen is None:
            answers.append(
                PresentationContextAC(pc.id, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED)
            )
            continue
        answers.append(PresentationContextAC(pc.id, ContextResult.ACCEPTANCE, chosen))
        accepted[pc.id] = AcceptedContext(pc.id, pc.abstract_syntax, chosen)
    if not accepted:
        # No reason code names this case; dcmtk answers the same way.
        return _user_reject(RejectReason.NO_REASON_GIVEN)

    items: list[UserItem] = [
        MaximumLength(announced_max_length(policy.max_pdu)),
        ImplementationClassUID(IMPLEMENTATION_CLASS_UID),
    ]
    invoked, performed = 1, 1
    window = rq.user_item(AsyncOperationsWindow)
    if window is not None:
        # Both values are the requestor's: how many operations it may invoke on us,
        # and how many it performs for us; we invoke none, so 1 (PS3.7 D.3.3.3).
        invoked, performed = _min_window(window.invoked, policy.max_async_ops), 1
        items.append(AsyncOperationsWindow(invoked, performed))
    # One answer per SOP class (PS3.7 D.3.3.4), and only for classes we accepted: echoing
    # every sub-item of the request could overflow our user information item (65535 bytes).
    accepted_classes = {context.abstract_syntax for context in accepted.values()}
    answered: dict[str, RoleSelection] = {}
    for item in rq.user_items_of(RoleSelection):
        if item.sop_class_uid in accepted_classes and item.sop_class_uid not in answered:
            answered[item.sop_class_uid] = RoleSelection(
                item.sop_class_uid,
                item.scu_role,
                item.scp_role and item.sop_class_uid in policy.scp_role_classes,
            )
    roles = tuple(answered.values())
    items.extend(roles)
    items.append(ImplementationVersionName(IMPLEMENTATION_VERSION_NAME))
    identity = rq.user_item(UserIdentityRQ)
    if identity is not None and identity.positive_response_requested:
        items.append(UserIdentityAC(identity_response or b""))
    ac = AAssociateAC(rq.called_ae, rq.calling_ae, tuple(answers), tuple(items))
    association = Association(
        calling_ae=rq.calling_ae,
        called_ae=rq.called_ae,
        contexts=accepted,
        peer_max_pdu=_announced_max_pdu(rq),
        max_pdu=policy.max_pdu,
        max_invoked=invoked,
        max_performed=performed,
        peer_implementation_class_uid=_implementation_uid(rq),
        peer_implementation_version_name=_implementation_version(rq),
        roles=roles,
        user_identity=identity,
        rejected=tuple(a for a in answers if a.result is not ContextResult.ACCEPTANCE),
    )
    return ac, association
