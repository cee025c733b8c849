"""Protocol data units of the DICOM upper layer (PS3.8 §9.3), bytes <-> dataclasses.

Pure code: :func:`encode` turns a PDU into bytes, :class:`PDUReader` turns a byte
stream into PDUs. Every length is checked against its container; anything the
standard does not allow raises :class:`~dimse.errors.ProtocolError`, which the
connection answers with A-ABORT. Unknown items and sub-items are skipped
(PS3.8 §9.3.1, §D.1).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias, TypeVar

from dimse.errors import AbortReason, ProtocolError

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"  # PS3.7 Annex A.2.1

_HEADER = struct.Struct(">BxL")  # PDU type, reserved, PDU length
_ITEM = struct.Struct(">BxH")  # item type, reserved, item length
_PDV = struct.Struct(">LBB")  # PDV item length, context ID, message control header
_U16 = struct.Struct(">H")

#: The largest non-P-DATA PDU we accept: an A-ASSOCIATE-RQ with 128 contexts of
#: 64 transfer syntaxes stays far below this.
MAX_CONTROL_PDU = 1 << 20
#: The largest P-DATA-TF we accept when we announced no limit (Maximum Length 0, PS3.8
#: D.1): a 32-bit PDU length must not become a 4 GiB buffer. The CLI's -pdu allows
#: no larger configured maximum either.
MAX_PDATA_CEILING = 1 << 26
#: The least room a receive into a PDUReader gets, unless its room holds the rest
#: of the PDU being received.
MIN_RECEIVE = 1 << 16


class PDUType(enum.IntEnum):
    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


#: PDUType by its byte: PDUType(byte) runs Python code, at every PDU received.
_PDU_TYPES = {kind.value: kind for kind in PDUType}


class ContextResult(enum.IntEnum):
    """Presentation context result/reason (PS3.8 Table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class RejectResult(enum.IntEnum):
    """A-ASSOCIATE-RJ result (PS3.8 Table 9-21)."""

    PERMANENT = 1
    TRANSIENT = 2


class RejectSource(enum.IntEnum):
    """A-ASSOCIATE-RJ source (PS3.8 Table 9-21)."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class RejectReason(enum.IntEnum):
    """A-ASSOCIATE-RJ reason/diag. (PS3.8 Table 9-21); its meaning depends on the source."""

    NO_REASON_GIVEN = 1
    # source 1, service user
    APPLICATION_CONTEXT_NOT_SUPPORTED = 2
    CALLING_AE_NOT_RECOGNIZED = 3
    CALLED_AE_NOT_RECOGNIZED = 7
    # source 2, service provider (ACSE): 2 = protocol-version-not-supported
    # source 3, service provider (presentation): 1 = temporary congestion, 2 = local limit
    # exceeded; their values overlap with the source 1 names above.


# Reason values that only make sense for the provider sources.
PROTOCOL_VERSION_NOT_SUPPORTED = 2  # source 2
TEMPORARY_CONGESTION = 1  # source 3
LOCAL_LIMIT_EXCEEDED = 2  # source 3


class AbortSource(enum.IntEnum):
    """A-ABORT source (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    SERVICE_PROVIDER = 2


class UserIdentityType(enum.IntEnum):
    """User identity type (PS3.7 Table D.3-14)."""

    USERNAME = 1
    USERNAME_AND_PASSCODE = 2
    KERBEROS = 3
    SAML = 4
    JWT = 5


# --- items -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """Presentation context item of an A-ASSOCIATE-RQ (PS3.8 §9.3.2.2)."""

    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """Presentation context item of an A-ASSOCIATE-AC (PS3.8 §9.3.3.2)."""

    id: int
    result: ContextResult
    transfer_syntax: str = ""


@dataclass(frozen=True, slots=True)
class MaximumLength:
    """Maximum length received of P-DATA-TF variable fields; 0 = no limit (PS3.8 D.1)."""

    TYPE: ClassVar[int] = 0x51
    max_length: int


@dataclass(frozen=True, slots=True)
class ImplementationClassUID:
    TYPE: ClassVar[int] = 0x52
    uid: str


@dataclass(frozen=True, slots=True)
class AsyncOperationsWindow:
    """Outstanding operations invoked / performed; 0 = unlimited (PS3.7 D.3.3.3)."""

    TYPE: ClassVar[int] = 0x53
    invoked: int
    performed: int


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """SCP/SCU role selection for one SOP class (PS3.7 D.3.3.4)."""

    TYPE: ClassVar[int] = 0x54
    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class ImplementationVersionName:
    TYPE: ClassVar[int] = 0x55
    name: str


@dataclass(frozen=True, slots=True)
class SOPClassExtendedNegotiation:
    """Service-class-specific application information (PS3.7 D.3.3.5)."""

    TYPE: ClassVar[int] = 0x56
    sop_class_uid: str
    info: bytes


@dataclass(frozen=True, slots=True)
class SOPClassCommonExtendedNegotiation:
    """Service class and related general SOP classes of a SOP class (PS3.7 D.3.3.6)."""

    TYPE: ClassVar[int] = 0x57
    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserIdentityRQ:
    """User identity negotiation, request (PS3.7 D.3.3.7.1)."""

    TYPE: ClassVar[int] = 0x58
    type: UserIdentityType
    positive_response_requested: bool
    primary: bytes
    secondary: bytes = b""


@dataclass(frozen=True, slots=True)
class UserIdentityAC:
    """User identity negotiation, acceptance (PS3.7 D.3.3.7.2)."""

    TYPE: ClassVar[int] = 0x59
    server_response: bytes = b""


UserItem: TypeAlias = (
    MaximumLength
    | ImplementationClassUID
    | AsyncOperationsWindow
    | RoleSelection
    | ImplementationVersionName
    | SOPClassExtendedNegotiation
    | SOPClassCommonExtendedNegotiation
    | UserIdentityRQ
    | UserIdentityAC
)


# --- PDUs ------------------------------------------------------------------------


_T = TypeVar("_T")


class _UserItems:
    """Look-ups in the user information sub-items shared by -RQ and -AC."""

    __slots__ = ()
    user_items: tuple[UserItem, ...]

    def user_item(self, kind: type[_T]) -> _T | None:
        return next((item for item in self.user_items if isinstance(item, kind)), None)

    def user_items_of(self, kind: type[_T]) -> list[_T]:
        return [item for item in self.user_items if isinstance(item, kind)]


@dataclass(frozen=True, slots=True)
class AAssociateRQ(_UserItems):
    called_ae: str
    calling_ae: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_items: tuple[UserItem, ...] = ()
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AAssociateAC(_UserItems):
    called_ae: str
    calling_ae: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_items: tuple[UserItem, ...] = ()
    application_context: str = APPLICATION_CONTEXT
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AAssociateRJ:
    result: RejectResult
    source: RejectSource
    reason: int

    def __str__(self) -> str:
        """E.g. 'permanent, by the service user: called AE title not recognized'."""
        reason = _REJECT_REASONS[self.source].get(self.reason, f"reason {self.reason}")
        result = "permanent" if self.result is RejectResult.PERMANENT else "transient"
        return f"{result}, by the {self.source.name.lower().replace('_', ' ')}: {reason}"


#: A-ASSOCIATE-RJ reasons by source (PS3.8 Table 9-21).
_REJECT_REASONS = {
    RejectSource.SERVICE_USER: {
        1: "no reason given",
        2: "application context name not supported",
        3: "calling AE title not recognized",
        7: "called AE title not recognized",
    },
    RejectSource.SERVICE_PROVIDER_ACSE: {1: "no reason given", 2: "protocol version not supported"},
    RejectSource.SERVICE_PROVIDER_PRESENTATION: {
        1: "temporary congestion",
        2: "local limit exceeded",
    },
}


@dataclass(frozen=True, slots=True)
class PDV:
    """One presentation data value item (PS3.8 §9.3.5.1, Annex E.2)."""

    context_id: int
    is_command: bool
    is_last: bool
    data: bytes | memoryview = field(repr=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PDV):
            return NotImplemented
        return (self.context_id, self.is_command, self.is_last, bytes(self.data)) == (
            other.context_id,
            other.is_command,
            other.is_last,
            bytes(other.data),
        )

    def __hash__(self) -> int:
        return hash((self.context_id, self.is_command, self.is_last, bytes(self.data)))


@dataclass(frozen=True, slots=True)
class PDataTF:
    pdvs: tuple[PDV, ...]


@dataclass(frozen=True, slots=True)
class AReleaseRQ:
    pass


@dataclass(frozen=True, slots=True)
class AReleaseRP:
    pass


@dataclass(frozen=True, slots=True)
class AAbort:
    source: AbortSource = AbortSource.SERVICE_USER
    reason: int = 0


PDU: TypeAlias = (
    AAssociateRQ | AAssociateAC | AAssociateRJ | PDataTF | AReleaseRQ | AReleaseRP | AAbort
)

# --- encoding --------------------------------------------------------------------


def _ae(title: str) -> bytes:
    raw = title.encode("ascii")
    if not 0 < len(raw.strip()) <= 16:
        raise ValueError(f"AE title must be 1 to 16 characters: {title!r}")
    return raw.ljust(16, b" ")


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"item 0x{item_type:02X} is longer than 65535 bytes")
    return _ITEM.pack(item_type, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def _u16_prefixed(value: bytes) -> bytes:
    return _U16.pack(len(value)) + value


def _encode_user_item(item: UserItem) -> bytes:
    if isinstance(item, MaximumLength):
        value = struct.pack(">L", item.max_length)
    elif isinstance(item, ImplementationClassUID):
        value = _uid(item.uid)
    elif isinstance(item, AsyncOperationsWindow):
        value = struct.pack(">HH", item.invoked, item.performed)
    elif isinstance(item, RoleSelection):
        value = _u16_prefixed(_uid(item.sop_class_uid)) + bytes((item.scu_role, item.scp_role))
    elif isinstance(item, ImplementationVersionName):
        value = item.name.encode("ascii")
    elif isinstance(item, SOPClassExtendedNegotiation):
        value = _u16_prefixed(_uid(item.sop_class_uid)) + item.info
    elif isinstance(item, SOPClassCommonExtendedNegotiation):
        related = b"".join(_u16_prefixed(_uid(u)) for u in item.related_general_sop_classes)
        value = (
            _u16_prefixed(_uid(item.sop_class_uid))
            + _u16_prefixed(_uid(item.service_class_uid))
            + _u16_prefixed(related)
        )
        # The byte after the item type is the sub-item version, 0 (PS3.7 D.3.3.6).
    elif isinstance(item, UserIdentityRQ):
        value = (
            bytes((item.type, item.positive_response_requested))
            + _u16_prefixed(item.primary)
            + _u16_prefixed(item.secondary)
        )
    else:
        value = _u16_prefixed(item.server_response)
    return _item(item.TYPE, value)


def _encode_associate(pdu: AAssociateRQ | AAssociateAC) -> bytes:
    parts = [_item(0x10, _uid(pdu.application_context))]
    if isinstance(pdu, AAssociateRQ):
        for rq in pdu.presentation_contexts:
            sub = _item(0x30, _uid(rq.abstract_syntax)) + b"".join(
                _item(0x40, _uid(ts)) for ts in rq.transfer_syntaxes
            )
            parts.append(_item(0x20, bytes((rq.id, 0, 0, 0)) + sub))
    else:
        for ac in pdu.presentation_contexts:
            sub = _item(0x40, _uid(ac.transfer_syntax))
            parts.append(_item(0x21, bytes((ac.id, 0, ac.result, 0)) + sub))
    parts.append(_item(0x50, b"".join(_encode_user_item(i) for i in pdu.user_items)))
    fixed = (
        _U16.pack(pdu.protocol_version)
        + b"\x00\x00"
        + _ae(pdu.called_ae)
        + _ae(pdu.calling_ae)
        + bytes(32)
    )
    return fixed + b"".join(parts)


def encode(pdu: PDU) -> bytes:
    """Encode a whole PDU; P-DATA-TF on the hot path uses :func:`pdata_header`."""
    if isinstance(pdu, AAssociateRQ | AAssociateAC):
        body = _encode_associate(pdu)
        kind = PDUType.ASSOCIATE_RQ if isinstance(pdu, AAssociateRQ) else PDUType.ASSOCIATE_AC
    elif isinstance(pdu, AAssociateRJ):
        body, kind = bytes((0, pdu.result, pdu.source, pdu.reason)), PDUType.ASSOCIATE_RJ
    elif isinstance(pdu, PDataTF):
        body = b"".join(
            _PDV.pack(len(v.data) + 2, v.context_id, v.is_command | (v.is_last << 1)) + v.data
            for v in pdu.pdvs
        )
        kind = PDUType.P_DATA_TF
    elif isinstance(pdu, AReleaseRQ):
        body, kind = bytes(4), PDUType.RELEASE_RQ
    elif isinstance(pdu, AReleaseRP):
        body, kind = bytes(4), PDUType.RELEASE_RP
    else:
        body, kind = bytes((0, 0, pdu.source, pdu.reason)), PDUType.ABORT
    return _HEADER.pack(kind, len(body)) + body


def pdata_header(context_id: int, is_command: bool, is_last: bool, length: int) -> bytes:
    """PDU header + PDV header of a P-DATA-TF carrying one PDV of `length` bytes.

    Sending the header and the data as two buffers lets a large data set go to the
    socket without being copied into a PDU first.
    """
    return _HEADER.pack(PDUType.P_DATA_TF, length + 6) + _PDV.pack(
        length + 2, context_id, is_command | (is_last << 1)
    )


# --- decoding --------------------------------------------------------------------


def _text(raw: bytes | memoryview) -> str:
    """UIDs and names: trailing NUL/space padding is tolerated, as many peers send it."""
    try:
        return bytes(raw).rstrip(b"\x00 ").decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("non-ASCII characters in a UID or name") from None


def _untested_text(raw: bytes | memoryview) -> str:
    """A field the standard says not to test on receipt: read whatever bytes it holds."""
    return bytes(raw).decode("latin-1").rstrip("\x00 ")


def _items(data: memoryview, where: str) -> Iterator[tuple[int, memoryview, int]]:
    """Yield (type, value, reserved byte) of consecutive items, checking every length."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < 4:
            raise ProtocolError(f"truncated item header in {where}")
        item_type, reserved, length = struct.unpack_from(">BBH", data, offset)
        end = offset + 4 + length
        if end > len(data):
            raise ProtocolError(f"item 0x{item_type:02X} in {where} overruns its container")
        yield item_type, data[offset + 4 : end], reserved
        offset = end


def _u16_field(data: memoryview, offset: int, what: str) -> tuple[memoryview, int]:
    if offset + 2 > len(data):
        raise ProtocolError(f"truncated {what}")
    (length,) = _U16.unpack_from(data, offset)
    end = offset + 2 + length
    if end > len(data):
        raise ProtocolError(f"{what} overruns its sub-item")
    return data[offset + 2 : end], end


def _decode_user_item(kind: int, value: memoryview, version: int) -> UserItem | None:
    size = len(value)
    if kind == MaximumLength.TYPE:
        if size != 4:
            raise ProtocolError("maximum length sub-item must be 4 bytes")
        return MaximumLength(struct.unpack(">L", value)[0])
    if kind == ImplementationClassUID.TYPE:
        return ImplementationClassUID(_text(value))
    if kind == AsyncOperationsWindow.TYPE:
        if size != 4:
            raise ProtocolError("asynchronous operations window sub-item must be 4 bytes")
        return AsyncOperationsWindow(*struct.unpack(">HH", value))
    if kind == RoleSelection.TYPE:
        uid, end = _u16_field(value, 0, "role selection SOP class UID")
        if size != end + 2:
            raise ProtocolError("role selection sub-item has a wrong length")
        return RoleSelection(_text(uid), bool(value[end]), bool(value[end + 1]))
    if kind == ImplementationVersionName.TYPE:
        return ImplementationVersionName(_text(value))
    if kind == SOPClassExtendedNegotiation.TYPE:
        uid, end = _u16_field(value, 0, "extended negotiation SOP class UID")
        return SOPClassExtendedNegotiation(_text(uid), bytes(value[end:]))
    if kind == SOPClassCommonExtendedNegotiation.TYPE:
        if version != 0:
            return None  # a later sub-item version we do not know: skip it
        uid, end = _u16_field(value, 0, "common extended negotiation SOP class UID")
        service, end = _u16_field(value, end, "service class UID")
        related_field, end = _u16_field(value, end, "related general SOP classes")
        related: list[str] = []
        offset = 0
        while offset < len(related_field):
            rel, offset = _u16_field(related_field, offset, "related general SOP class UID")
            related.append(_text(rel))
        return SOPClassCommonExtendedNegotiation(_text(uid), _text(service), tuple(related))
    if kind == UserIdentityRQ.TYPE:
        if size < 2:
            raise ProtocolError("truncated user identity sub-item")
        try:
            identity_type = UserIdentityType(value[0])
        except ValueError:
            raise ProtocolError(f"unknown user identity type {value[0]}") from None
        primary, end = _u16_field(value, 2, "user identity primary field")
        secondary, end = _u16_field(value, end, "user identity secondary field")
        if end != size:
            raise ProtocolError("user identity sub-item has trailing bytes")
        return UserIdentityRQ(identity_type, bool(value[1]), bytes(primary), bytes(secondary))
    if kind == UserIdentityAC.TYPE:
        response, end = _u16_field(value, 0, "user identity server response")
        if end != size:
            raise ProtocolError("user identity sub-item has trailing bytes")
        return UserIdentityAC(bytes(response))
    return None  # unknown sub-item: skipped (PS3.8 D.1)


def _decode_associate(kind: PDUType, body: memoryview) -> AAssociateRQ | AAssociateAC:
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE PDU shorter than its fixed fields")
    (version,) = _U16.unpack_from(body, 0)
    if kind is PDUType.ASSOCIATE_RQ:
        called, calling = _text(body[4:20]), _text(body[20:36])
    else:  # reserved fields echoing the -RQ, "not tested when received" (PS3.8 Table 9-17)
        called, calling = _untested_text(body[4:20]), _untested_text(body[20:36])
    app_context: str | None = None
    rq_contexts: list[PresentationContextRQ] = []
    ac_contexts: list[PresentationContextAC] = []
    user_items: list[UserItem] = []
    seen_user_info = False
    for item_type, value, _ in _items(body[68:], "A-ASSOCIATE"):
        if item_type == 0x10:
            app_context = _text(value)
        elif item_type == 0x20 and kind is PDUType.ASSOCIATE_RQ:
            rq_contexts.append(_decode_context_rq(value))
        elif item_type == 0x21 and kind is PDUType.ASSOCIATE_AC:
            ac_contexts.append(_decode_context_ac(value))
        elif item_type == 0x50:
            seen_user_info = True
            for sub_type, sub_value, sub_version in _items(value, "user information"):
                user_item = _decode_user_item(sub_type, sub_value, sub_version)
                if user_item is not None:
                    user_items.append(user_item)
        elif item_type in (0x20, 0x21):
            raise ProtocolError(
                f"presentation context item 0x{item_type:02X} in {kind.name}",
                AbortReason.UNEXPECTED_PDU_PARAMETER,
            )
        # other item types are skipped (PS3.8 §9.3.1)
    if app_context is None:
        raise ProtocolError("A-ASSOCIATE PDU without application context item")
    if not seen_user_info:
        raise ProtocolError("A-ASSOCIATE PDU without user information item")
    if kind is PDUType.ASSOCIATE_RQ:
        if not rq_contexts:
            raise ProtocolError("A-ASSOCIATE-RQ without presentation context")
        _check_context_ids(rq_contexts)
        return AAssociateRQ(
            called, calling, tuple(rq_contexts), tuple(user_items), app_context, version
        )
    return AAssociateAC(
        called, calling, tuple(ac_contexts), tuple(user_items), app_context, version
    )


def _check_context_ids(contexts: list[PresentationContextRQ]) -> None:
    """Presentation context IDs are odd integers 1-255, unique in the request.

    PS3.8 §9.3.2.2 (and §7.1.1.13) fixes their values. An even or repeated ID is an
    invalid parameter value of the A-ASSOCIATE-RQ, answered like every other invalid
    field of a received PDU: A-ABORT, source service provider, reason 6
    invalid-PDU-parameter-value (PS3.8 Table 9-26; Evt19, Table 9-10). Rejecting just
    that context is not possible: the A-ASSOCIATE-AC answers each context by its ID
    (§9.3.3.2), so a repeated ID could not be answered unambiguously, and an even one
    could not be echoed without sending an invalid value ourselves.
    """
    seen: set[int] = set()
    for context in contexts:
        if not context.id & 1:  # a byte, so only the parity is left to check (0 is even)
            raise ProtocolError(f"presentation context ID {context.id} is not odd")
        if context.id in seen:
            raise ProtocolError(f"presentation context ID {context.id} proposed twice")
        seen.add(context.id)


def _decode_context_rq(value: memoryview) -> PresentationContextRQ:
    if len(value) < 4:
        raise ProtocolError("truncated presentation context item")
    abstract: str | None = None
    syntaxes: list[str] = []
    for sub_type, sub_value, _ in _items(value[4:], "presentation context"):
        if sub_type == 0x30:
            if abstract is not None:
                raise ProtocolError("presentation context with two abstract syntaxes")
            abstract = _text(sub_value)
        elif sub_type == 0x40:
            syntaxes.append(_text(sub_value))
    if abstract is None or not syntaxes:
        raise ProtocolError("presentation context without abstract or transfer syntax")
    return PresentationContextRQ(value[0], abstract, tuple(syntaxes))


def _decode_context_ac(value: memoryview) -> PresentationContextAC:
    if len(value) < 4:
        raise ProtocolError("truncated presentation context item")
    try:
        result = ContextResult(value[2])
    except ValueError:
        raise ProtocolError(f"unknown presentation context result {value[2]}") from None
    syntax = ""
    for sub_type, sub_value, _ in _items(value[4:], "presentation context"):
        if sub_type == 0x40:
            # Not significant, and not tested, unless the context is accepted (Table 9-18).
            accepted = result is ContextResult.ACCEPTANCE
            syntax = _text(sub_value) if accepted else _untested_text(sub_value)
    if result is ContextResult.ACCEPTANCE and not syntax:
        raise ProtocolError("accepted presentation context without transfer syntax")
    return PresentationContextAC(value[0], result, syntax)


def _decode_pdata(body: memoryview) -> PDataTF:
    pdvs: list[PDV] = []
    offset, size = 0, len(body)
    while offset < size:
        if size - offset < 6:
            raise ProtocolError("truncated PDV item header")
        length, context_id, control = _PDV.unpack_from(body, offset)
        end = offset + 4 + length
        if length < 2 or end > size:
            raise ProtocolError("PDV item length overruns its P-DATA-TF PDU")
        # Bits 2-7 of the message control header are sent as 0 and never checked by the
        # receiver (PS3.8 Annex E.2): only bits 0 (command) and 1 (last) are read.
        pdvs.append(PDV(context_id, bool(control & 1), bool(control & 2), body[offset + 6 : end]))
        offset = end
    if not pdvs:
        raise ProtocolError("P-DATA-TF without PDV item")
    return PDataTF(tuple(pdvs))


def _decode_body(kind: PDUType, body: memoryview) -> PDU:
    if kind is PDUType.P_DATA_TF:
        return _decode_pdata(body)
    if kind in (PDUType.ASSOCIATE_RQ, PDUType.ASSOCIATE_AC):
        return _decode_associate(kind, body)
    if len(body) != 4:
        raise ProtocolError(f"{kind.name} PDU must have length 4, not {len(body)}")
    if kind is PDUType.ASSOCIATE_RJ:
        try:
            return AAssociateRJ(RejectResult(body[1]), RejectSource(body[2]), body[3])
        except ValueError:
            raise ProtocolError("A-ASSOCIATE-RJ with unknown result or source") from None
    if kind is PDUType.RELEASE_RQ:
        return AReleaseRQ()
    if kind is PDUType.RELEASE_RP:
        return AReleaseRP()
    try:
        return AAbort(AbortSource(body[2]), body[3])
    except ValueError:
        # PS3.8 Table 9-26 also lists source 1 (reserved); accept it as a provider abort.
        return AAbort(AbortSource.SERVICE_PROVIDER, body[3])


def decode(data: bytes) -> PDU:
    """Decode exactly one whole PDU."""
    reader = PDUReader(max_pdata_length=0)
    reader.feed(data)
    pdu = reader.next_pdu()
    if pdu is None or reader.buffered:
        raise ProtocolError("bytes are not exactly one PDU")
    return pdu


class PDUReader:
    """Cuts a byte stream into PDUs; holds at most one PDU in memory.

    `max_pdata_length` is the Maximum Length we announced (0: no limit): a peer
    that sends a larger P-DATA-TF broke the negotiation (PS3.8 D.1). "No limit" is
    still :data:`MAX_PDATA_CEILING`, so a declared length never becomes an allocation
    we did not choose. Only our own announcement bounds what we read, never the
    peer's: its Maximum Length bounds what we send.

    Bytes arrive by :meth:`feed`, or are received straight into the buffer the PDU
    will be handed over from (:meth:`get_buffer`, :meth:`buffer_updated`: the shape
    of asyncio's BufferedProtocol), so a large P-DATA-TF is never copied.
    """

    def __init__(self, max_pdata_length: int, max_control_length: int = MAX_CONTROL_PDU):
        self.max_pdata_length = max_pdata_length
        self.max_control_length = max_control_length
        #: PDUs returned so far: the number of the next one, which the driver's timers
        #: and buffer reservations are keyed on.
        self.count = 0
        self._buffer = bytearray()  # its first _filled bytes are the stream's
        self._filled = 0
        # What arrives behind a whole PDU not yet handed over, once its buffer is
        # full: kept apart rather than in a grown copy of the PDU. uvloop reads on
        # until the driver runs (asyncio reads once per wake-up); on 1 MB PDUs the
        # copies were two per PDU and doubled a 100 MB image's time.
        self._behind = bytearray()
        self._behind_filled = 0
        self._into_behind = False  # where the room of the last get_buffer() is

    @property
    def buffered(self) -> int:
        return self._filled + self._behind_filled

    @property
    def pending(self) -> int:
        """Bytes of the PDU being buffered (header included), once its header is here.

        0 before 6 bytes have arrived. The header was checked against the limits by
        the :meth:`next_pdu` that returned None, so this never exceeds them.
        """
        if self._filled < 6:
            return 0
        return 6 + int(_HEADER.unpack_from(self._buffer)[1])

    def get_buffer(self, size: int = 0) -> memoryview:
        """Room for at least `size` more bytes, and for the rest of the PDU being
        received when its header is here and within our limits, so that it lands in
        place. Room that holds that rest is never grown: a grown buffer is a copy of
        the PDU so far."""
        self._into_behind = False
        filled = self._filled
        room = len(self._buffer) - filled
        want = max(size, MIN_RECEIVE)
        if self._behind_filled:
            return self._room_behind(want)
        if filled >= 6:
            kind_byte, length = _HEADER.unpack_from(self._buffer)
            if length <= self._limit(kind_byte):
                rest = 6 + length - filled
                if rest <= 0 and room < want:
                    return self._room_behind(want)
                if 0 < rest <= room and size <= room:
                    return memoryview(self._buffer)[filled:]
                want = max(want, rest)
        if room < want:
            grown = bytearray(filled + want)
            grown[:filled] = memoryview(self._buffer)[:filled]
            self._buffer = grown
        return memoryview(self._buffer)[filled:]

    def _room_behind(self, want: int) -> memoryview:
        behind, used = self._behind, self._behind_filled
        if len(behind) - used < want:
            self._behind = bytearray(max(used + want, 2 * max(len(behind), want)))
            self._behind[:used] = memoryview(behind)[:used]
        self._into_behind = True
        return memoryview(self._behind)[used:]

    def buffer_updated(self, nbytes: int) -> None:
        """`nbytes` were written at the start of the last :meth:`get_buffer` room."""
        if self._into_behind:
            self._behind_filled += nbytes
        else:
            self._filled += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.get_buffer(len(data))[: len(data)] = data
        self.buffer_updated(len(data))

    def _limit(self, kind_byte: int) -> int:
        if kind_byte == PDUType.P_DATA_TF:
            return self.max_pdata_length or MAX_PDATA_CEILING
        return self.max_control_length or MAX_PDATA_CEILING

    def next_pdu(self) -> PDU | None:
        """The next whole PDU, or None until more bytes arrive."""
        buffer, filled = self._buffer, self._filled
        if filled < 6:
            return None
        kind_byte, length = _HEADER.unpack_from(buffer)
        kind = _PDU_TYPES.get(kind_byte)
        if kind is None:
            # 0x14-0x17 begin TLS records (RFC 8446 §5.1): TLS on one side only.
            hint = " (a TLS record: TLS on one side only?)" if 0x14 <= kind_byte <= 0x17 else ""
            raise ProtocolError(
                f"unknown PDU type 0x{kind_byte:02X}{hint}", AbortReason.UNRECOGNIZED_PDU
            )
        limit = self._limit(kind_byte)
        if length > limit:
            raise ProtocolError(f"{kind.name} PDU of {length} bytes exceeds the limit of {limit}")
        end = 6 + length
        if filled < end:
            return None
        self.count += 1
        rest = filled - end
        if self._behind_filled:
            # The PDU is handed over in place; what follows it starts the next buffer,
            # sized to it: grown for the next PDU only when reading on (with a budget,
            # after that PDU is reserved).
            self._buffer = bytearray(memoryview(buffer)[end:filled])
            self._buffer += memoryview(self._behind)[: self._behind_filled]
            self._filled = len(self._buffer)
            self._behind, self._behind_filled = bytearray(), 0
            body = memoryview(buffer)[6:end]
        elif rest <= length:
            # Hand the PDU over in place and keep a copy of the shorter rest: a large
            # P-DATA-TF is then never copied (the buffer is not resized while viewed).
            self._buffer = bytearray(memoryview(buffer)[end:filled])
            self._filled = rest
            body = memoryview(buffer)[6:end]
        else:
            with memoryview(buffer) as view:
                body = memoryview(view[6:end].tobytes())
            del buffer[:end]
            self._filled = rest
        return _decode_body(kind, body)


class BufferBudget:
    """A server-wide count of bytes reserved for PDUs being buffered; no I/O, no clock.

    Each association holds at most one partial PDU, so memory per association is
    bounded by the largest PDU we accept; this bounds the sum over associations. A
    reservation that does not fit is refused (the caller stops reading and asks
    again once something is released), except when nothing at all is reserved: a
    PDU larger than the whole budget then goes through alone, so an association can
    always proceed and no set of waiting associations can deadlock.
    """

    __slots__ = ("limit", "peak", "reserved")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a buffer budget must be at least 1 byte, not {limit}")
        self.limit = limit
        self.reserved = 0
        self.peak = 0  # the most ever reserved at once

    def try_reserve(self, size: int) -> bool:
        """Reserve `size` bytes if they fit (or nothing else is reserved)."""
        reserved = self.reserved + size
        if reserved > self.limit and self.reserved:
            return False
        self.reserved = reserved
        if reserved > self.peak:
            self.peak = reserved
        return True

    def release(self, size: int) -> None:
        self.reserved -= size
