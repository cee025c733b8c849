"""The PDU codec (PS3.8 §9.3) against byte strings written by hand from the standard's tables.

Every hex literal below was written from PS3.8 Tables 9-11 to 9-26 and PS3.7 Annex D.3.3
(user information sub-items), not produced by the code under test: decoding it must give
the expected dataclass, and encoding that dataclass must give the same bytes back.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimse.errors import AbortReason, ProtocolError
from dimse.pdu import (
    APPLICATION_CONTEXT,
    LOCAL_LIMIT_EXCEEDED,
    MAX_PDATA_CEILING,
    PDU,
    PDV,
    PROTOCOL_VERSION_NOT_SUPPORTED,
    AAbort,
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AbortSource,
    AReleaseRP,
    AReleaseRQ,
    AsyncOperationsWindow,
    BufferBudget,
    ContextResult,
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PDataTF,
    PDUReader,
    PresentationContextAC,
    PresentationContextRQ,
    RejectReason,
    RejectResult,
    RejectSource,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityAC,
    UserIdentityRQ,
    UserIdentityType,
    UserItem,
    decode,
    encode,
    pdata_header,
)

# --- strategies: valid values of every field ----------------------------------------

# AE titles and names: ISO 646 G0 without backslash; trailing spaces are padding.
_G0 = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\")
ae_titles = st.text(_G0, min_size=1, max_size=16).map(str.strip).filter(bool)
names = st.text(_G0, min_size=1, max_size=16).map(str.rstrip).filter(bool)
uids = st.lists(st.integers(0, 10**7).map(str), min_size=2, max_size=8).map(".".join)  # <= 64
u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)
odd_ids = st.integers(0, 127).map(lambda i: 2 * i + 1)

rq_contexts = st.builds(
    PresentationContextRQ, odd_ids, uids, st.lists(uids, min_size=1, max_size=3).map(tuple)
)
ac_contexts = st.one_of(
    st.builds(PresentationContextAC, odd_ids, st.just(ContextResult.ACCEPTANCE), uids),
    st.builds(
        PresentationContextAC,
        odd_ids,
        st.sampled_from([r for r in ContextResult if r is not ContextResult.ACCEPTANCE]),
        st.one_of(st.just(""), uids),
    ),
)
user_item = st.one_of(
    st.builds(MaximumLength, st.integers(0, 2**32 - 1)),
    st.builds(ImplementationClassUID, uids),
    st.builds(AsyncOperationsWindow, u16, u16),
    st.builds(RoleSelection, uids, st.booleans(), st.booleans()),
    st.builds(ImplementationVersionName, names),
    st.builds(SOPClassExtendedNegotiation, uids, st.binary(max_size=40)),
    st.builds(SOPClassCommonExtendedNegotiation, uids, uids, st.lists(uids, max_size=3).map(tuple)),
    st.builds(
        UserIdentityRQ,
        st.sampled_from(UserIdentityType),
        st.booleans(),
        st.binary(max_size=40),
        st.binary(max_size=40),
    ),
    st.builds(UserIdentityAC, st.binary(max_size=40)),
)
user_items = st.lists(user_item, max_size=6).map(tuple)
associate_rq = st.builds(
    AAssociateRQ,
    ae_titles,
    ae_titles,
    st.lists(rq_contexts, min_size=1, max_size=3, unique_by=lambda c: c.id).map(tuple),
    user_items,
    st.one_of(st.just(APPLICATION_CONTEXT), uids),
    u16,
)
associate_ac = st.builds(
    AAssociateAC,
    ae_titles,
    ae_titles,
    st.lists(ac_contexts, max_size=3, unique_by=lambda c: c.id).map(tuple),
    user_items,
    st.one_of(st.just(APPLICATION_CONTEXT), uids),
    u16,
)
pdvs = st.builds(PDV, odd_ids, st.booleans(), st.booleans(), st.binary(max_size=64))
any_pdu: st.SearchStrategy[PDU] = st.one_of(
    associate_rq,
    associate_ac,
    st.builds(AAssociateRJ, st.sampled_from(RejectResult), st.sampled_from(RejectSource), u8),
    st.builds(PDataTF, st.lists(pdvs, min_size=1, max_size=4).map(tuple)),
    st.sampled_from([AReleaseRQ(), AReleaseRP()]),
    st.builds(AAbort, st.sampled_from(AbortSource), u8),
)

# Hand-written hex: whitespace and "# comments" are ignored.


def hexbytes(text: str) -> bytes:
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


def reject(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    return caught.value


# Fixed fields shared by the A-ASSOCIATE-RQ/-AC below (PS3.8 Table 9-11, bytes 7-74).
FIXED = """
    0001 0000                           # protocol version 1, reserved
    414e592d534350 202020202020202020   # called AE "ANY-SCP", space padded to 16
    4543484f534355 202020202020202020   # calling AE "ECHOSCU"
    0000000000000000 0000000000000000 0000000000000000 0000000000000000  # reserved, 32 bytes
"""
APP_CONTEXT_ITEM = "10 00 0015 312e322e3834302e31303030382e332e312e312e31"  # 1.2.840.10008.3.1.1.1
VERIFICATION_CONTEXT_ITEM = """
    20 00 002e 01 00 00 00                              # presentation context 1
      30 00 0011 312e322e3834302e31303030382e312e31     #   abstract 1.2.840.10008.1.1
      40 00 0011 312e322e3834302e31303030382e312e32     #   transfer 1.2.840.10008.1.2
"""
VERIFICATION_RQ = PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",))

# A whole A-ASSOCIATE-RQ (PS3.8 §9.3.2): a C-ECHO proposal as echoscu would send it.
ASSOCIATE_RQ_BYTES = hexbytes(
    f"""
    01 00 000000b0      # A-ASSOCIATE-RQ, 176 bytes follow
    {FIXED}
    {APP_CONTEXT_ITEM}
    {VERIFICATION_CONTEXT_ITEM}
    50 00 001d                                  # user information
      51 00 0004 00004000                       #   maximum length 16384
      52 00 0007 312e322e332e34                 #   implementation class UID 1.2.3.4
      55 00 0006 544553545f31                   #   implementation version name TEST_1
    """
)
ASSOCIATE_RQ = AAssociateRQ(
    called_ae="ANY-SCP",
    calling_ae="ECHOSCU",
    presentation_contexts=(VERIFICATION_RQ,),
    user_items=(
        MaximumLength(16384),
        ImplementationClassUID("1.2.3.4"),
        ImplementationVersionName("TEST_1"),
    ),
    application_context=APPLICATION_CONTEXT,
    protocol_version=1,
)

# A whole A-ASSOCIATE-AC (PS3.8 §9.3.3): context 1 accepted, context 3 refused.
ASSOCIATE_AC_BYTES = hexbytes(
    f"""
    02 00 0000009d      # A-ASSOCIATE-AC, 157 bytes follow
    {FIXED}
    {APP_CONTEXT_ITEM}
    21 00 0019 01 00 00 00                          # context 1, result 0 (acceptance)
      40 00 0011 312e322e3834302e31303030382e312e32 #   transfer 1.2.840.10008.1.2
    21 00 0008 03 00 03 00                          # context 3, result 3 (abstract syntax)
      40 00 0000                                    #   empty transfer syntax sub-item
    50 00 0013
      51 00 0004 00010000                           #   maximum length 65536
      52 00 0007 312e322e332e34
    """
)
ASSOCIATE_AC = AAssociateAC(
    called_ae="ANY-SCP",
    calling_ae="ECHOSCU",
    presentation_contexts=(
        PresentationContextAC(1, ContextResult.ACCEPTANCE, "1.2.840.10008.1.2"),
        PresentationContextAC(3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
    ),
    user_items=(MaximumLength(65536), ImplementationClassUID("1.2.3.4")),
)


def associate_rq_with(items_hex: str, kind: str = "01") -> bytes:
    """An A-ASSOCIATE-RQ (or -AC, kind 02) whose variable field is `items_hex`."""
    body = hexbytes(FIXED) + hexbytes(items_hex)
    return bytes.fromhex(kind) + b"\x00" + len(body).to_bytes(4, "big") + body


def rq_with_user_data(sub_items_hex: str) -> bytes:
    user_data = hexbytes(sub_items_hex)
    user_info = b"\x50\x00" + len(user_data).to_bytes(2, "big") + user_data
    return associate_rq_with(APP_CONTEXT_ITEM + VERIFICATION_CONTEXT_ITEM + user_info.hex())


# --- known-good bytes: each PDU type ------------------------------------------------


KNOWN_PDUS: list[tuple[str, bytes, PDU]] = [
    ("associate-rq", ASSOCIATE_RQ_BYTES, ASSOCIATE_RQ),
    ("associate-ac", ASSOCIATE_AC_BYTES, ASSOCIATE_AC),
    (
        "associate-rj permanent/user/no-reason",
        hexbytes("03 00 00000004 00 01 01 01"),
        AAssociateRJ(
            RejectResult.PERMANENT, RejectSource.SERVICE_USER, RejectReason.NO_REASON_GIVEN
        ),
    ),
    (
        "associate-rj permanent/user/called-ae",
        hexbytes("03 00 00000004 00 01 01 07"),
        AAssociateRJ(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            RejectReason.CALLED_AE_NOT_RECOGNIZED,
        ),
    ),
    (
        "associate-rj permanent/acse/protocol-version",
        hexbytes("03 00 00000004 00 01 02 02"),
        AAssociateRJ(
            RejectResult.PERMANENT,
            RejectSource.SERVICE_PROVIDER_ACSE,
            PROTOCOL_VERSION_NOT_SUPPORTED,
        ),
    ),
    (
        "associate-rj transient/presentation/local-limit",
        hexbytes("03 00 00000004 00 02 03 02"),
        AAssociateRJ(
            RejectResult.TRANSIENT,
            RejectSource.SERVICE_PROVIDER_PRESENTATION,
            LOCAL_LIMIT_EXCEEDED,
        ),
    ),
    (
        "p-data-tf, two PDVs",
        hexbytes(
            """
            04 00 00000012                  # P-DATA-TF, 18 bytes follow
            00000006 01 03 01020304         # PDV: context 1, command + last, 4 bytes
            00000004 01 00 aabb             # PDV: context 1, data, not last, 2 bytes
            """
        ),
        PDataTF(
            (
                PDV(1, is_command=True, is_last=True, data=b"\x01\x02\x03\x04"),
                PDV(1, is_command=False, is_last=False, data=b"\xaa\xbb"),
            )
        ),
    ),
    ("release-rq", hexbytes("05 00 00000004 00000000"), AReleaseRQ()),
    ("release-rp", hexbytes("06 00 00000004 00000000"), AReleaseRP()),
    ("abort by user", hexbytes("07 00 00000004 00 00 00 00"), AAbort(AbortSource.SERVICE_USER, 0)),
    (
        "abort by provider, invalid parameter value",
        hexbytes("07 00 00000004 00 00 02 06"),
        AAbort(AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE),
    ),
]


@pytest.mark.parametrize(
    ("data", "expected"), [k[1:] for k in KNOWN_PDUS], ids=[k[0] for k in KNOWN_PDUS]
)
def test_known_pdu_decodes_and_encodes_back(data: bytes, expected: PDU) -> None:
    assert decode(data) == expected
    assert encode(expected) == data


def test_hand_written_lengths_are_consistent() -> None:
    """The PDU-length field of every hand-written PDU counts the bytes after it."""
    for _, data, _ in KNOWN_PDUS:
        assert int.from_bytes(data[2:6], "big") == len(data) - 6


def test_associate_rq_fields() -> None:
    rq = decode(ASSOCIATE_RQ_BYTES)
    assert isinstance(rq, AAssociateRQ)
    assert rq.user_item(MaximumLength) == MaximumLength(16384)
    assert rq.user_item(AsyncOperationsWindow) is None
    assert rq.user_items_of(ImplementationVersionName) == [ImplementationVersionName("TEST_1")]


@pytest.mark.parametrize(
    ("control", "is_command", "is_last"),
    [(0x00, False, False), (0x01, True, False), (0x02, False, True), (0x03, True, True)],
)
def test_message_control_header_bits(control: int, is_command: bool, is_last: bool) -> None:
    """PS3.8 Annex E.2: bit 0 command (1) / data set (0), bit 1 last fragment."""
    data = hexbytes(f"04 00 00000007 00000003 05 {control:02x} 7f")
    pdu = PDataTF((PDV(5, is_command, is_last, b"\x7f"),))
    assert decode(data) == pdu
    assert encode(pdu) == data


def test_message_control_header_reserved_bits_are_not_checked() -> None:
    """PS3.8 Annex E.2: bits 2-7 are set to 0 by the sender and never checked by the receiver."""
    data = hexbytes("04 00 00000007 00000003 05 fe 7f")
    assert decode(data) == PDataTF((PDV(5, is_command=False, is_last=True, data=b"\x7f"),))
    assert encode(decode(data))[11] == 0x02


def test_pdata_header_matches_encode() -> None:
    pdu = PDataTF((PDV(7, True, False, b"abcde"),))
    assert pdata_header(7, True, False, 5) + b"abcde" == encode(pdu)


# --- known-good bytes: each user information sub-item ------------------------------


SUB_ITEMS: list[tuple[str, str, UserItem]] = [
    ("maximum length", "51 00 0004 00004000", MaximumLength(16384)),
    ("maximum length 0 (unlimited)", "51 00 0004 00000000", MaximumLength(0)),
    ("implementation class UID", "52 00 0007 312e322e332e34", ImplementationClassUID("1.2.3.4")),
    ("async operations window", "53 00 0004 0005 0001", AsyncOperationsWindow(5, 1)),
    (
        "SCP/SCU role selection",
        "54 00 0009 0005 312e322e33 00 01",  # UID length, UID 1.2.3, SCU role 0, SCP role 1
        RoleSelection("1.2.3", scu_role=False, scp_role=True),
    ),
    ("implementation version name", "55 00 0006 544553545f31", ImplementationVersionName("TEST_1")),
    (
        "SOP class extended negotiation",
        "56 00 000b 0005 312e322e33 01000100",  # UID length, UID, application information
        SOPClassExtendedNegotiation("1.2.3", b"\x01\x00\x01\x00"),
    ),
    (
        "SOP class common extended negotiation",
        """57 00 001a                 # sub-item version 0 in the reserved byte
           0005 312e322e33            # SOP class UID 1.2.3
           0003 312e34                # service class UID 1.4
           000c                       # related general SOP class identification, 12 bytes
             0005 312e322e35          #   1.2.5
             0003 312e36              #   1.6
        """,
        SOPClassCommonExtendedNegotiation("1.2.3", "1.4", ("1.2.5", "1.6")),
    ),
    (
        "SOP class common extended negotiation, no related classes",
        "57 00 000e 0005 312e322e33 0003 312e34 0000",
        SOPClassCommonExtendedNegotiation("1.2.3", "1.4", ()),
    ),
    (
        "user identity RQ, username and passcode",
        "58 00 000e 02 01 0004 75736572 0004 70617373",  # type 2, response requested
        UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, True, b"user", b"pass"),
    ),
    (
        "user identity RQ, username",
        "58 00 000a 01 00 0004 75736572 0000",
        UserIdentityRQ(UserIdentityType.USERNAME, False, b"user", b""),
    ),
    ("user identity AC", "59 00 0007 0005 746f6b656e", UserIdentityAC(b"token")),
    ("user identity AC, empty response", "59 00 0002 0000", UserIdentityAC(b"")),
]


@pytest.mark.parametrize(
    ("sub_item_hex", "expected"), [s[1:] for s in SUB_ITEMS], ids=[s[0] for s in SUB_ITEMS]
)
def test_known_sub_item_decodes_and_encodes_back(sub_item_hex: str, expected: UserItem) -> None:
    data = rq_with_user_data(sub_item_hex)
    rq = decode(data)
    assert isinstance(rq, AAssociateRQ)
    assert rq.user_items == (expected,)
    assert encode(rq) == data


def test_all_sub_items_in_one_user_information_item() -> None:
    data = rq_with_user_data("".join(hex_ for _, hex_, _ in SUB_ITEMS))
    rq = decode(data)
    assert isinstance(rq, AAssociateRQ)
    assert rq.user_items == tuple(item for _, _, item in SUB_ITEMS)
    assert encode(rq) == data


def test_user_items_of_an_associate_ac() -> None:
    body = (
        APP_CONTEXT_ITEM
        + "21 00 0019 01 00 00 00 40 00 0011 312e322e3834302e31303030382e312e32"
        + "50 00 0017 51 00 0004 00001000 53 00 0004 0003 0001 59 00 0003 0001 ff"
    )
    data = associate_rq_with(body, kind="02")
    ac = decode(data)
    assert isinstance(ac, AAssociateAC)
    assert ac.user_items == (
        MaximumLength(4096),
        AsyncOperationsWindow(3, 1),
        UserIdentityAC(b"\xff"),
    )
    assert encode(ac) == data


# --- reserved fields: sent as 0, not tested on receipt ---------------------------------


def test_reserved_fields_of_associate_rq_are_not_tested() -> None:
    data = bytearray(ASSOCIATE_RQ_BYTES)
    data[1] = 0xFF  # PDU byte 2
    data[8:10] = b"\xab\xcd"  # bytes 9-10
    data[42:74] = b"\x55" * 32  # bytes 43-74
    data[75] = 0x99  # reserved byte of the application context item
    assert decode(bytes(data)) == ASSOCIATE_RQ


def test_reserved_fields_of_fixed_length_pdus_are_not_tested() -> None:
    assert decode(hexbytes("03 ff 00000004 ee 02 01 03")) == AAssociateRJ(
        RejectResult.TRANSIENT, RejectSource.SERVICE_USER, RejectReason.CALLING_AE_NOT_RECOGNIZED
    )
    assert decode(hexbytes("05 01 00000004 deadbeef")) == AReleaseRQ()
    assert decode(hexbytes("06 01 00000004 deadbeef")) == AReleaseRP()
    assert decode(hexbytes("07 01 00000004 12 34 00 00")) == AAbort(AbortSource.SERVICE_USER, 0)


def test_associate_ac_echoed_ae_titles_are_not_tested() -> None:
    """In an -AC, bytes 11-42 echo the -RQ but 'shall not be tested when received'."""
    data = bytearray(ASSOCIATE_AC_BYTES)
    data[10:26] = b"\xff" * 16
    data[26:42] = b" " * 16
    ac = decode(bytes(data))
    assert isinstance(ac, AAssociateAC)
    assert ac.calling_ae == ""
    assert ac.presentation_contexts == ASSOCIATE_AC.presentation_contexts


def test_rejected_context_transfer_syntax_is_not_tested() -> None:
    """Table 9-18: when the result is not acceptance the transfer syntax is not significant."""
    body = APP_CONTEXT_ITEM + "21 00 000a 01 00 04 00 40 00 0002 ff00" + "50 00 0000"
    ac = decode(associate_rq_with(body, kind="02"))
    assert isinstance(ac, AAssociateAC)
    assert ac.presentation_contexts[0].result is ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED


def test_abort_reserved_source_is_read_as_provider() -> None:
    """Table 9-26 lists source 1 as reserved; it is taken as a provider abort."""
    assert decode(hexbytes("07 00 00000004 00 00 01 02")) == AAbort(
        AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU
    )


def test_uid_padding_is_tolerated() -> None:
    padded = APP_CONTEXT_ITEM.replace("0015", "0016") + "00"
    data = associate_rq_with(padded + VERIFICATION_CONTEXT_ITEM + "50 00 0000")
    rq = decode(data)
    assert isinstance(rq, AAssociateRQ)
    assert rq.application_context == APPLICATION_CONTEXT


# --- unknown items: skipped (PS3.8 §9.3.1, Annex D; PS3.7 D.3.3) ---------------------


def test_unknown_item_in_associate_rq_is_skipped() -> None:
    items = APP_CONTEXT_ITEM + VERIFICATION_CONTEXT_ITEM + "60 00 0003 010203" + "50 00 0000"
    rq = decode(associate_rq_with(items))
    assert isinstance(rq, AAssociateRQ)
    assert rq.presentation_contexts == (VERIFICATION_RQ,)
    assert rq.user_items == ()


def test_unknown_sub_item_in_presentation_context_is_skipped() -> None:
    context = """
        20 00 0034 01 00 00 00
          30 00 0011 312e322e3834302e31303030382e312e31
          3f 00 0002 abcd
          40 00 0011 312e322e3834302e31303030382e312e32
    """
    rq = decode(associate_rq_with(APP_CONTEXT_ITEM + context + "50 00 0000"))
    assert isinstance(rq, AAssociateRQ)
    assert rq.presentation_contexts == (VERIFICATION_RQ,)


def test_unknown_user_sub_items_are_skipped() -> None:
    rq = decode(rq_with_user_data("51 00 0004 00004000 5a 00 0002 0102 70 00 0000 ff 00 0001 00"))
    assert isinstance(rq, AAssociateRQ)
    assert rq.user_items == (MaximumLength(16384),)


def test_common_extended_negotiation_of_unknown_version_is_skipped() -> None:
    rq = decode(rq_with_user_data("57 01 0004 00 00 00 00"))
    assert isinstance(rq, AAssociateRQ)
    assert rq.user_items == ()


def test_presentation_context_items_of_the_other_pdu_are_rejected() -> None:
    ac_item_in_rq = APP_CONTEXT_ITEM + VERIFICATION_CONTEXT_ITEM + "21 00 0004 01 00 00 00"
    error = reject(associate_rq_with(ac_item_in_rq + "50 00 0000"))
    assert error.reason is AbortReason.UNEXPECTED_PDU_PARAMETER
    rq_item_in_ac = APP_CONTEXT_ITEM + VERIFICATION_CONTEXT_ITEM + "50 00 0000"
    error = reject(associate_rq_with(rq_item_in_ac, kind="02"))
    assert error.reason is AbortReason.UNEXPECTED_PDU_PARAMETER


# --- malformed PDUs -----------------------------------------------------------------


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0x50, 0xFF])
def test_unknown_pdu_type_is_unrecognized_pdu(pdu_type: int) -> None:
    error = reject(bytes((pdu_type,)) + hexbytes("00 00000004 00000000"))
    assert error.reason is AbortReason.UNRECOGNIZED_PDU


@pytest.mark.parametrize("record", [0x14, 0x15, 0x16, 0x17])
def test_a_tls_record_is_named_as_such(record: int) -> None:
    """A TLS client on a plain port (ClientHello, 0x16), or a plain client hearing a
    TLS server's alert (0x15): the message says what the bytes probably are."""
    reader = PDUReader(0)
    reader.feed(bytes((record,)) + bytes.fromhex("0301020001000200fe0303"))
    with pytest.raises(ProtocolError, match="a TLS record") as caught:
        reader.next_pdu()
    assert caught.value.reason is AbortReason.UNRECOGNIZED_PDU
    reader = PDUReader(0)
    reader.feed(b"\x08" + bytes(9))
    with pytest.raises(ProtocolError) as caught:
        reader.next_pdu()
    assert "TLS" not in str(caught.value)


def test_unknown_pdu_type_is_rejected_from_its_header_alone() -> None:
    reader = PDUReader(0)
    reader.feed(b"\x09\x00\xff\xff\xff\xff")
    with pytest.raises(ProtocolError) as caught:
        reader.next_pdu()
    assert caught.value.reason is AbortReason.UNRECOGNIZED_PDU


@pytest.mark.parametrize(("_", "data", "__"), KNOWN_PDUS, ids=[k[0] for k in KNOWN_PDUS])
def test_truncated_pdu(_: str, data: bytes, __: PDU) -> None:
    assert (
        reject(data[:-1]).reason is AbortReason.INVALID_PDU_PARAMETER_VALUE
    )  # decode() wants exactly one PDU
    reader = PDUReader(0)
    reader.feed(data[:-1])
    assert reader.next_pdu() is None  # a stream reader waits for the rest
    reader.feed(data[-1:])
    assert reader.next_pdu() is not None


def test_bytes_after_a_pdu_are_not_one_pdu() -> None:
    error = reject(hexbytes("05 00 00000004 00000000 06"))
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("associate-rj of length 5", "03 00 00000005 00 01 01 01 00"),
        ("associate-rj of length 3", "03 00 00000003 00 01 01"),
        ("release-rq of length 0", "05 00 00000000"),
        ("release-rp of length 8", "06 00 00000008 0000000000000000"),
        ("abort of length 2", "07 00 00000002 0000"),
    ],
)
def test_fixed_length_pdu_with_wrong_length(name: str, data: str) -> None:
    assert reject(hexbytes(data)).reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


@pytest.mark.parametrize(
    "data",
    ["03 00 00000004 00 00 01 01", "03 00 00000004 00 03 01 01", "03 00 00000004 00 01 04 01"],
)
def test_associate_rj_with_unknown_result_or_source(data: str) -> None:
    assert reject(hexbytes(data)).reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_associate_rq_shorter_than_its_fixed_fields() -> None:
    error = reject(ASSOCIATE_RQ_BYTES[:6].replace(b"\xb0", b"\x40") + ASSOCIATE_RQ_BYTES[6:70])
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_item_length_overrunning_the_pdu() -> None:
    overrun = APP_CONTEXT_ITEM.replace("0015", "0100")  # says 256 bytes, has 21
    error = reject(associate_rq_with(overrun + VERIFICATION_CONTEXT_ITEM + "50 00 0000"))
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_item_header_truncated_by_the_pdu_end() -> None:
    items = APP_CONTEXT_ITEM + VERIFICATION_CONTEXT_ITEM + "50 00 0000" + "60 00"
    error = reject(associate_rq_with(items))
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_sub_item_overrunning_its_item() -> None:
    error = reject(rq_with_user_data("51 00 0008 00004000"))  # 8 announced, 4 there
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE
    context = "20 00 0019 01 00 00 00 30 00 0020 312e322e3834302e31303030382e312e31"
    error = reject(associate_rq_with(APP_CONTEXT_ITEM + context + "50 00 0000"))
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


@pytest.mark.parametrize(
    ("name", "sub_items"),
    [
        ("maximum length of 2 bytes", "51 00 0002 4000"),
        ("maximum length of 5 bytes", "51 00 0005 0000400000"),
        ("async window of 3 bytes", "53 00 0003 000100"),
        ("async window of 0 bytes", "53 00 0000"),
        ("role selection without roles", "54 00 0007 0005 312e322e33"),
        ("role selection with an extra byte", "54 00 000a 0005 312e322e33 00 01 00"),
        ("role selection UID overrun", "54 00 0004 0009 312e"),
        ("role selection of 0 bytes", "54 00 0000"),
        ("extended negotiation UID overrun", "56 00 0003 0005 31"),
        ("common extended negotiation truncated", "57 00 0007 0005 312e322e33"),
        ("common extended related UID overrun", "57 00 000b 0001 31 0001 32 0003 0009 31"),
        ("user identity of 1 byte", "58 00 0001 01"),
        ("user identity of unknown type", "58 00 0006 09 00 0000 0000"),
        ("user identity without secondary field", "58 00 0006 01 00 0002 6162"),
        ("user identity with trailing bytes", "58 00 0007 01 00 0000 0000 00"),
        ("user identity AC with trailing bytes", "59 00 0003 0000 00"),
        ("user identity AC of 0 bytes", "59 00 0000"),
    ],
)
def test_malformed_user_sub_item(name: str, sub_items: str) -> None:
    error = reject(rq_with_user_data(sub_items))
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


@pytest.mark.parametrize(
    ("name", "items"),
    [
        ("no application context", VERIFICATION_CONTEXT_ITEM + "50 00 0000"),
        ("no presentation context", APP_CONTEXT_ITEM + "50 00 0000"),
        ("no user information", APP_CONTEXT_ITEM + VERIFICATION_CONTEXT_ITEM),
        (
            "context without transfer syntax",
            APP_CONTEXT_ITEM
            + "20 00 0019 01 00 00 00 30 00 0011 312e322e3834302e31303030382e312e31"
            + "50 00 0000",
        ),
        (
            "context without abstract syntax",
            APP_CONTEXT_ITEM
            + "20 00 0019 01 00 00 00 40 00 0011 312e322e3834302e31303030382e312e32"
            + "50 00 0000",
        ),
        (
            "context with two abstract syntaxes",
            APP_CONTEXT_ITEM
            + "20 00 0016 01 00 00 00 30 00 0003 312e32 30 00 0003 312e33 40 00 0002 3132"
            + "50 00 0000",
        ),
        ("context item of 3 bytes", APP_CONTEXT_ITEM + "20 00 0003 01 00 00" + "50 00 0000"),
        (
            "non-ASCII abstract syntax",
            APP_CONTEXT_ITEM + "20 00 000e 01 00 00 00 30 00 0001 ff 40 00 0001 31" + "50 00 0000",
        ),
    ],
)
def test_malformed_associate_rq(name: str, items: str) -> None:
    error = reject(associate_rq_with(items))
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


def _context_item(context_id: int) -> str:
    """VERIFICATION_CONTEXT_ITEM with another presentation context ID."""
    return VERIFICATION_CONTEXT_ITEM.replace("01 00 00 00", f"{context_id:02x} 00 00 00", 1)


@pytest.mark.parametrize(
    ("name", "context_ids"),
    [("even ID 2", [2]), ("ID 0", [0]), ("even ID 254", [1, 254]), ("ID 1 twice", [1, 3, 1])],
)
def test_invalid_presentation_context_ids_are_an_invalid_parameter(
    name: str, context_ids: list[int]
) -> None:
    """PS3.8 §9.3.2.2: odd integers 1-255, unique in the A-ASSOCIATE-RQ (§7.1.1.13);
    anything else is reason 6, invalid-PDU-parameter-value (Table 9-26)."""
    contexts = "".join(_context_item(i) for i in context_ids)
    error = reject(associate_rq_with(APP_CONTEXT_ITEM + contexts + "50 00 0000"))
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE
    assert "presentation context ID" in str(error)


def test_presentation_context_ids_1_to_255_odd_and_unique_are_read() -> None:
    contexts = "".join(_context_item(i) for i in (255, 1, 127))
    pdu = decode(associate_rq_with(APP_CONTEXT_ITEM + contexts + "50 00 0000"))
    assert isinstance(pdu, AAssociateRQ)
    assert [pc.id for pc in pdu.presentation_contexts] == [255, 1, 127]


@pytest.mark.parametrize(
    ("name", "context"),
    [
        ("unknown result 5", "21 00 0008 01 00 05 00 40 00 0000"),
        ("accepted without transfer syntax", "21 00 0004 01 00 00 00"),
        ("accepted with empty transfer syntax", "21 00 0008 01 00 00 00 40 00 0000"),
        ("context item of 2 bytes", "21 00 0002 01 00"),
    ],
)
def test_malformed_associate_ac_context(name: str, context: str) -> None:
    error = reject(associate_rq_with(APP_CONTEXT_ITEM + context + "50 00 0000", kind="02"))
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("no PDV at all", "04 00 00000000"),
        ("PDV item length 0", "04 00 00000006 00000000 0103"),
        ("PDV item length 1", "04 00 00000006 00000001 0103"),
        ("PDV item length overrunning the PDU", "04 00 00000008 00000005 0103 aabb"),
        ("truncated PDV header", "04 00 00000005 00000002 01"),
        ("trailing bytes after the last PDV", "04 00 0000000a 00000003 0103 aa 0000 00"),
    ],
)
def test_malformed_p_data_tf(name: str, data: str) -> None:
    assert reject(hexbytes(data)).reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_p_data_tf_larger_than_the_readers_maximum() -> None:
    """Rejected from the header alone, before the body is buffered (PS3.8 D.1)."""
    reader = PDUReader(max_pdata_length=16)
    reader.feed(hexbytes("04 00 00000011"))  # 17 bytes announced
    with pytest.raises(ProtocolError):
        reader.next_pdu()


def test_p_data_tf_at_the_readers_maximum() -> None:
    pdu = PDataTF((PDV(1, False, True, bytes(10)),))  # PDU length 4 + 2 + 10 = 16
    reader = PDUReader(max_pdata_length=16)
    reader.feed(encode(pdu))
    assert reader.next_pdu() == pdu


def test_control_pdu_larger_than_the_readers_maximum() -> None:
    reader = PDUReader(max_pdata_length=0, max_control_length=100)
    reader.feed(ASSOCIATE_RQ_BYTES[:6])
    with pytest.raises(ProtocolError):
        reader.next_pdu()


def test_no_limit_when_maximum_is_zero() -> None:
    pdu = PDataTF((PDV(1, False, True, bytes(100_000)),))
    reader = PDUReader(max_pdata_length=0)
    reader.feed(encode(pdu))
    assert reader.next_pdu() == pdu
    assert reader.buffered == 0


def test_no_limit_still_stops_at_the_ceiling() -> None:
    """Maximum Length 0 (we announced no limit, PS3.8 D.1) is still not a 4 GiB buffer:
    a larger declared length is refused from the header alone."""
    reader = PDUReader(max_pdata_length=0)
    reader.feed(hexbytes("04 00 ffffffff 00000002 01 00"))
    with pytest.raises(ProtocolError) as caught:
        reader.next_pdu()
    assert caught.value.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE
    at_ceiling = PDUReader(max_pdata_length=0)
    at_ceiling.feed(b"\x04\x00" + MAX_PDATA_CEILING.to_bytes(4, "big"))
    assert at_ceiling.next_pdu() is None  # accepted: waits for the body
    assert at_ceiling.pending == 6 + MAX_PDATA_CEILING


def test_a_partial_pdu_is_numbered_and_sized_from_its_header() -> None:
    first, second = encode(AReleaseRQ()), encode(PDataTF((PDV(1, False, True, bytes(10)),)))
    reader = PDUReader(max_pdata_length=0)
    assert (reader.count, reader.pending, reader.buffered) == (0, 0, 0)
    reader.feed(first[:3])
    assert reader.next_pdu() is None
    assert (reader.count, reader.pending, reader.buffered) == (0, 0, 3)  # no header yet
    reader.feed(first[3:] + second[:7])
    assert reader.next_pdu() == AReleaseRQ()
    assert reader.next_pdu() is None
    assert (reader.count, reader.pending, reader.buffered) == (1, len(second), 7)
    reader.feed(second[7:])
    assert isinstance(reader.next_pdu(), PDataTF)
    assert (reader.count, reader.pending, reader.buffered) == (2, 0, 0)


# --- the server-wide budget of buffered PDUs ----------------------------------------


def test_budget_reserves_what_fits_and_refuses_the_rest() -> None:
    budget = BufferBudget(64 << 10)
    assert budget.try_reserve(40 << 10)
    assert not budget.try_reserve(40 << 10)  # 80 KiB > 64 KiB: the second waits
    assert budget.reserved == 40 << 10
    assert budget.try_reserve(24 << 10)  # exactly full
    budget.release(40 << 10)
    assert budget.try_reserve(40 << 10)
    assert budget.peak == budget.limit == 64 << 10
    budget.release(40 << 10)
    budget.release(24 << 10)
    assert budget.reserved == 0


def test_budget_lets_one_pdu_larger_than_itself_through_alone() -> None:
    """No deadlock: with nothing reserved, any single PDU goes through; nothing else
    does while it is held, so only then does the peak exceed the limit."""
    budget = BufferBudget(64 << 10)
    assert budget.try_reserve(100 << 10)
    assert not budget.try_reserve(1)
    budget.release(100 << 10)
    assert budget.try_reserve(1)
    assert not budget.try_reserve(100 << 10)
    assert budget.peak == 100 << 10


@pytest.mark.parametrize("limit", [0, -1])
def test_budget_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="budget"):
        BufferBudget(limit)


# --- encoding errors (our caller's mistakes) -------------------------------------------


@pytest.mark.parametrize("title", ["", "   ", "SEVENTEEN-CHARS-X"])
def test_encoding_an_invalid_ae_title(title: str) -> None:
    with pytest.raises(ValueError, match="AE title"):
        encode(AAssociateRQ(title, "ECHOSCU", (VERIFICATION_RQ,)))


def test_encoding_an_item_over_65535_bytes() -> None:
    huge = SOPClassExtendedNegotiation("1.2.3", bytes(70_000))
    with pytest.raises(ValueError, match="longer than 65535"):
        encode(AAssociateRQ("A", "B", (VERIFICATION_RQ,), (huge,)))


# --- properties ---------------------------------------------------------------------


@settings(max_examples=60)
@given(associate_rq)
def test_associate_rq_round_trip(pdu: AAssociateRQ) -> None:
    assert decode(encode(pdu)) == pdu


@settings(max_examples=60)
@given(associate_ac)
def test_associate_ac_round_trip(pdu: AAssociateAC) -> None:
    assert decode(encode(pdu)) == pdu


@given(user_items)
def test_user_items_round_trip_in_both_pdus(items: tuple[UserItem, ...]) -> None:
    rq = AAssociateRQ("A", "B", (VERIFICATION_RQ,), items)
    ac = AAssociateAC("A", "B", (), items)
    assert decode(encode(rq)) == rq
    assert decode(encode(ac)) == ac


@given(any_pdu)
def test_every_pdu_round_trips(pdu: PDU) -> None:
    data = encode(pdu)
    assert int.from_bytes(data[2:6], "big") == len(data) - 6
    assert decode(data) == pdu
    assert encode(decode(data)) == data


@settings(max_examples=50)
@given(st.lists(any_pdu, min_size=1, max_size=5), st.data())
def test_reader_yields_the_same_pdus_whatever_the_chunking(
    pdus: list[PDU], data: st.DataObject
) -> None:
    stream = b"".join(encode(p) for p in pdus)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    reader = PDUReader(max_pdata_length=0)
    received: list[PDU] = []
    for chunk in chunks:
        reader.feed(chunk)
        while (pdu := reader.next_pdu()) is not None:
            received.append(pdu)
    assert received == pdus
    assert reader.buffered == 0


@pytest.mark.parametrize("reads", [[65536], [262144], [1000, 300000, 65000], [6, 100000]])
def test_a_large_pdu_is_received_in_place_however_the_reads_fall(reads: list[int]) -> None:
    """Once the header is here, the PDU's rest lands in one buffer: a grown buffer
    is a copy of the PDU so far, and room that holds the rest is never grown."""
    pdu = PDataTF((PDV(1, False, True, bytes(range(256)) * 4096),))  # 1 MiB of data
    data = encode(pdu)
    reader = PDUReader(0)
    buffers: list[bytearray] = []
    at = 0
    for n, read in enumerate(itertools.cycle(reads)):
        room = reader.get_buffer()
        count = min(read, len(room), len(data) - at)
        room[:count] = data[at : at + count]
        if at >= 6 and not any(room.obj is buffer for buffer in buffers):
            buffers.append(room.obj)  # type: ignore[arg-type]
        reader.buffer_updated(count)
        at += count
        if at == len(data) or n > 10_000:
            break
    assert len(buffers) == 1
    assert reader.next_pdu() == pdu
    assert reader.buffered == 0


@pytest.mark.parametrize("read", [1000, 65536, 300000])
def test_what_arrives_behind_a_whole_pdu_leaves_it_in_place(read: int) -> None:
    """A transport may read on before the driver takes a whole PDU (uvloop does):
    those bytes are kept apart rather than in a grown copy of the PDU, and come
    out as the next PDUs, in order."""
    pdus = [
        PDataTF((PDV(1, False, True, bytes(range(256)) * 4096),)),
        PDataTF((PDV(1, True, True, b"\x01" * 100),)),
        PDataTF((PDV(3, False, False, b"\x02" * 700_000),)),
        AReleaseRQ(),
    ]
    data = b"".join(encode(pdu) for pdu in pdus)
    first = len(encode(pdus[0]))
    reader = PDUReader(0)
    at = 0
    while at < len(data):
        room = reader.get_buffer()
        count = min(read, len(room), len(data) - at)
        room[:count] = data[at : at + count]
        reader.buffer_updated(count)
        at += count
        if at == first:
            whole = room.obj
        elif at > first:
            assert reader.buffered == at
    got = []
    while (pdu := reader.next_pdu()) is not None:
        got.append(pdu)
    assert got == pdus
    assert got[0].pdvs[0].data.obj is whole  # type: ignore[union-attr]
    assert reader.buffered == 0
