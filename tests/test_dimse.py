"""DIMSE command sets (PS3.7 §6.3, §9.3, Annex E) and their PDV fragments (PS3.8 Annex E)."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dimse.dimse import (
    MAX_COMMAND_SET,
    NO_DATA_SET,
    TAGS,
    VERIFICATION_SOP_CLASS,
    CEchoRQ,
    CEchoRSP,
    CommandField,
    CStoreRQ,
    CStoreRSP,
    Message,
    MessageAssembler,
    Priority,
    UnknownCommand,
    decode_command,
    encode_command,
    fragments,
    parse_command_set,
)
from dimse.errors import AbortReason, ProtocolError
from dimse.events import CommandReceived, DataReceived
from dimse.pdu import PDV, PDataTF, PDUReader

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# --- the reference: pydicom's own Implicit VR Little Endian encoding -------------------

KEYWORDS = {
    "affected_sop_class_uid": "AffectedSOPClassUID",
    "message_id": "MessageID",
    "message_id_being_responded_to": "MessageIDBeingRespondedTo",
    "priority": "Priority",
    "status": "Status",
    "offending_element": "OffendingElement",
    "error_comment": "ErrorComment",
    "affected_sop_instance_uid": "AffectedSOPInstanceUID",
    "move_originator_ae_title": "MoveOriginatorApplicationEntityTitle",
    "move_originator_message_id": "MoveOriginatorMessageID",
}


def _implicit_le(dataset: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, dataset)
    return fp.getvalue()


def pydicom_command_set(command_field: int, data_set_type: int, **values: Any) -> bytes:
    """The command set as pydicom writes it, Command Group Length first (PS3.7 §6.3.1)."""
    dataset = Dataset()
    dataset.CommandField = command_field
    dataset.CommandDataSetType = data_set_type
    for keyword, value in values.items():
        if value is not None:
            setattr(dataset, keyword, list(value) if isinstance(value, tuple) else value)
    dataset.CommandGroupLength = len(_implicit_le(dataset))
    return _implicit_le(dataset)


def pydicom_encoding(message: CEchoRQ | CEchoRSP | CStoreRQ | CStoreRSP) -> bytes:
    values = {KEYWORDS[f.name]: getattr(message, f.name) for f in fields(message)}
    # Any value but 0101H means "a data set follows" (PS3.7 §E.1); this codec writes 0000H.
    data_set_type = 0x0000 if message.HAS_DATASET else NO_DATA_SET
    return pydicom_command_set(message.FIELD, data_set_type, **values)


# --- strategies ----------------------------------------------------------------------

_G0 = st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\")
uids = st.lists(st.integers(0, 10**7).map(str), min_size=2, max_size=8).map(".".join)
ae_titles = st.text(_G0, min_size=1, max_size=16).map(str.strip).filter(bool)
comments = st.text(_G0, max_size=64).map(str.strip)
u16 = st.integers(0, 0xFFFF)
tags = st.integers(0, 0xFFFFFFFF)

messages: st.SearchStrategy[CEchoRQ | CEchoRSP | CStoreRQ | CStoreRSP] = st.one_of(
    st.builds(CEchoRQ, u16, uids),
    st.builds(CEchoRSP, u16, u16, uids, st.none() | comments),
    st.builds(
        CStoreRQ,
        u16,
        uids,
        uids,
        st.sampled_from(Priority),
        st.none() | ae_titles,
        st.none() | u16,
    ),
    st.builds(
        CStoreRSP,
        u16,
        u16,
        st.none() | uids,
        st.none() | uids,
        st.none() | st.lists(tags, min_size=1, max_size=4).map(tuple),
        st.none() | comments,
    ),
)


# --- command sets ----------------------------------------------------------------------


# A C-ECHO-RQ written by hand from PS3.7 Table 9.3-12 in Implicit VR Little Endian:
# tag (group, element, little endian), 4-byte length, value.
C_ECHO_RQ_BYTES = bytes.fromhex(
    "00000000 04000000 38000000"  # (0000,0000) UL 4: 56 bytes follow
    "00000200 12000000 312e322e3834302e31303030382e312e3100"  # (0000,0002) UI, NUL padded
    "00000001 02000000 3000"  # (0000,0100) US 0030H: C-ECHO-RQ
    "00001001 02000000 0100"  # (0000,0110) US message ID 1
    "00000008 02000000 0101"  # (0000,0800) US 0101H: no data set
)


def test_hand_written_c_echo_rq() -> None:
    assert decode_command(C_ECHO_RQ_BYTES) == (CEchoRQ(1), False)
    assert encode_command(CEchoRQ(1)) == C_ECHO_RQ_BYTES


EXAMPLES: list[CEchoRQ | CEchoRSP | CStoreRQ | CStoreRSP] = [
    CEchoRQ(1),
    CEchoRSP(1, 0x0000),
    CEchoRSP(2, 0x0110, error_comment="echo failed"),
    CStoreRQ(3, CT_IMAGE_STORAGE, "1.2.3.4.5"),
    CStoreRQ(4, CT_IMAGE_STORAGE, "1.2.3.4", Priority.HIGH, "MOVE_SCU", 77),
    CStoreRSP(3, 0x0000, CT_IMAGE_STORAGE, "1.2.3.4.5"),
    CStoreRSP(5, 0xA700, error_comment="disk full"),
    CStoreRSP(6, 0xB000, CT_IMAGE_STORAGE, "1.2.3", offending_element=(0x00100010, 0x00100020)),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_command_set_matches_pydicom(message: CEchoRQ | CEchoRSP | CStoreRQ | CStoreRSP) -> None:
    encoded = encode_command(message)
    assert encoded == pydicom_encoding(message)
    assert decode_command(encoded) == (message, message.HAS_DATASET)


def test_command_group_length_counts_the_rest() -> None:
    encoded = encode_command(CStoreRQ(9, CT_IMAGE_STORAGE, "1.2.3"))
    assert int.from_bytes(encoded[8:12], "little") == len(encoded) - 12


def test_odd_length_values_are_padded_as_their_vr_says() -> None:
    """PS3.5 §6.2: UI pads with NUL, LO and AE with a space."""
    elements = parse_command_set(
        encode_command(CStoreRQ(1, "1.2.3", "1.2.34", move_originator_ae_title="ABC"))
    )
    assert elements[0x0002] == b"1.2.3\x00"
    assert elements[0x1000] == b"1.2.34"
    assert elements[0x1030] == b"ABC "
    elements = parse_command_set(encode_command(CEchoRSP(1, 0x0110, error_comment="odd")))
    assert elements[0x0902] == b"odd "


@given(messages)
def test_command_sets_match_pydicom_and_round_trip(
    message: CEchoRQ | CEchoRSP | CStoreRQ | CStoreRSP,
) -> None:
    encoded = encode_command(message)
    assert encoded == pydicom_encoding(message)
    assert decode_command(encoded) == (message, message.HAS_DATASET)


def test_unknown_command_decodes_and_is_answered_0211() -> None:
    find_rq = pydicom_command_set(
        CommandField.C_FIND_RQ,
        0x0001,
        AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.1.1",
        MessageID=12,
        Priority=0,
    )
    message, has_dataset = decode_command(find_rq)
    assert message == UnknownCommand(
        0x0020, message_id=12, affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.1.1"
    )
    assert has_dataset
    assert isinstance(message, UnknownCommand)
    answer = message.unrecognized()
    assert answer == UnknownCommand(
        0x8020,
        message_id_being_responded_to=12,
        status=0x0211,
        affected_sop_class_uid="1.2.840.10008.5.1.4.1.2.1.1",
    )
    assert decode_command(encode_command(answer)) == (answer, False)


@pytest.mark.parametrize("data_set_type", [0x0000, 0x0001, 0xFEFE])
def test_any_data_set_type_but_0101_means_a_data_set(data_set_type: int) -> None:
    command = pydicom_command_set(
        CommandField.C_STORE_RQ,
        data_set_type,
        AffectedSOPClassUID=CT_IMAGE_STORAGE,
        AffectedSOPInstanceUID="1.2.3",
        MessageID=1,
        Priority=0,
    )
    assert decode_command(command) == (CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3"), True)


def _element(element: int, value: bytes, group: int = 0) -> bytes:
    return (
        group.to_bytes(2, "little")
        + element.to_bytes(2, "little")
        + len(value).to_bytes(4, "little")
        + value
    )


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("no command field", _element(0x0800, b"\x01\x01")),
        ("no command data set type", _element(0x0100, b"\x30\x00") + _element(0x0110, b"\x01\x00")),
        (
            "a required element missing",
            _element(0x0100, b"\x01\x00")
            + _element(0x0110, b"\x01\x00")
            + _element(0x0800, b"\x00\x00"),
        ),
        ("an element outside group 0000", _element(0x0010, b"AB", group=0x0008)),
        ("a truncated element header", _element(0x0100, b"\x30\x00")[:6]),
        ("an element overrunning the set", _element(0x0100, b"\x30\x00")[:-1]),
        (
            "US of 4 bytes",
            _element(0x0100, b"\x30\x00\x00\x00") + _element(0x0800, b"\x01\x01"),
        ),
        (
            "AT not a multiple of 4",
            _element(0x0100, b"\x01\x80")
            + _element(0x0120, b"\x01\x00")
            + _element(0x0800, b"\x01\x01")
            + _element(0x0900, b"\x00\x00")
            + _element(0x0901, b"\x10\x00\x10"),
        ),
        (
            "non-ASCII UID",
            _element(0x0002, b"\xff\xfe")
            + _element(0x0100, b"\x30\x00")
            + _element(0x0110, b"\x01\x00")
            + _element(0x0800, b"\x01\x01"),
        ),
    ],
)
def test_malformed_command_set(name: str, data: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_command(data)
    assert caught.value.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


# --- fragments -------------------------------------------------------------------------


def _pdus(buffers: list[bytes | memoryview]) -> list[tuple[int, PDV]]:
    """(PDU length field, its PDV) of each P-DATA-TF in the concatenated buffers."""
    stream = b"".join(bytes(b) for b in buffers)
    reader = PDUReader(0)
    reader.feed(stream)
    out: list[tuple[int, PDV]] = []
    offset = 0
    while (pdu := reader.next_pdu()) is not None:
        assert isinstance(pdu, PDataTF) and len(pdu.pdvs) == 1
        out.append((int.from_bytes(stream[offset + 2 : offset + 6], "big"), pdu.pdvs[0]))
        offset += 6 + out[-1][0]
    assert offset == len(stream)
    return out


@settings(max_examples=80)
@given(
    data=st.binary(max_size=3000),
    max_pdu=st.integers(7, 700),
    is_command=st.booleans(),
    last=st.booleans(),
    context_id=st.integers(0, 127).map(lambda i: 2 * i + 1),
)
def test_fragments_never_exceed_the_peer_maximum(
    data: bytes, max_pdu: int, is_command: bool, last: bool, context_id: int
) -> None:
    """With max_data = peer max PDU - 6 (as the connection sets it), the PDU-length field
    (= 4 + PDV item length, the 'variable field' PS3.8 D.1 limits) never exceeds the max."""
    pdus = _pdus(list(fragments(context_id, is_command, data, max_pdu - 6, last)))
    assert len(pdus) == max(1, math.ceil(len(data) / (max_pdu - 6)))
    for index, (pdu_length, pdv) in enumerate(pdus):
        assert pdu_length == 4 + 2 + len(pdv.data) <= max_pdu
        assert pdv.context_id == context_id
        assert pdv.is_command is is_command
        assert pdv.is_last is (last and index == len(pdus) - 1)
    assert b"".join(bytes(pdv.data) for _, pdv in pdus) == data


def test_fragments_of_exact_multiples() -> None:
    pdus = _pdus(list(fragments(1, False, bytes(300), 100, True)))
    assert [len(pdv.data) for _, pdv in pdus] == [100, 100, 100]
    assert [pdv.is_last for _, pdv in pdus] == [False, False, True]


def test_fragments_of_nothing_is_one_empty_pdv() -> None:
    """An empty final fragment still closes a data set sent in several calls."""
    [(length, pdv)] = _pdus(list(fragments(3, False, b"", 100, True)))
    assert (length, pdv) == (6, PDV(3, False, True, b""))


def test_fragments_do_not_copy_the_data() -> None:
    data = bytes(range(256)) * 10
    buffers = list(fragments(1, False, data, 1000, True))
    assert all(isinstance(b, memoryview) and b.obj is data for b in buffers[1::2])


# --- MessageAssembler --------------------------------------------------------------------


def _command_pdvs(message: Message, context_id: int, size: int) -> list[PDV]:
    data = encode_command(message)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return [PDV(context_id, True, i == len(chunks) - 1, c) for i, c in enumerate(chunks)]


def test_assembler_reassembles_a_command_in_fragments() -> None:
    assembler = MessageAssembler()
    assert assembler.idle
    *head, tail = _command_pdvs(CEchoRQ(5), 1, 10)
    assert len(head) > 3
    for pdv in head:
        assert assembler.feed(pdv) is None
        assert not assembler.idle
    assert assembler.feed(tail) == CommandReceived(1, CEchoRQ(5), False)
    assert assembler.idle


def test_assembler_streams_data_set_fragments() -> None:
    assembler = MessageAssembler()
    store = CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3")
    events = [assembler.feed(pdv) for pdv in _command_pdvs(store, 3, 40)]
    assert events[-1] == CommandReceived(3, store, True)
    assert not assembler.idle  # the data set is still to come
    parts = [b"first", b"second", b"third"]
    for index, part in enumerate(parts):
        event = assembler.feed(PDV(3, False, index == 2, part))
        assert isinstance(event, DataReceived)
        assert (event.context_id, bytes(event.data), event.last) == (3, part, index == 2)
    assert assembler.idle
    # and the next message may follow
    assert assembler.feed(_command_pdvs(CEchoRQ(2), 3, 1000)[0]) == CommandReceived(
        3, CEchoRQ(2), False
    )


def _violation(pdvs: list[PDV]) -> ProtocolError:
    assembler = MessageAssembler()
    *fine, bad = pdvs
    for pdv in fine:
        assembler.feed(pdv)
    with pytest.raises(ProtocolError) as caught:
        assembler.feed(bad)
    return caught.value


STORE_COMMAND = _command_pdvs(CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3"), 1, 1000)
ECHO_COMMAND = _command_pdvs(CEchoRQ(1), 1, 1000)


def test_data_before_any_command_is_a_violation() -> None:
    error = _violation([PDV(1, False, True, b"data")])
    assert error.reason is AbortReason.UNEXPECTED_PDU


def test_data_after_a_command_without_data_set_is_a_violation() -> None:
    error = _violation([*ECHO_COMMAND, PDV(1, False, True, b"data")])
    assert error.reason is AbortReason.UNEXPECTED_PDU


def test_data_while_the_command_is_incomplete_is_a_violation() -> None:
    """A data PDV where a command fragment is due: the command bit does not match."""
    first = _command_pdvs(CStoreRQ(1, CT_IMAGE_STORAGE, "1.2.3"), 1, 20)[0]
    error = _violation([first, PDV(1, False, True, b"data")])
    assert error.reason is AbortReason.UNEXPECTED_PDU


def test_command_while_a_data_set_is_incomplete_is_a_violation() -> None:
    error = _violation([*STORE_COMMAND, PDV(1, False, False, b"part"), *ECHO_COMMAND])
    assert error.reason is AbortReason.UNEXPECTED_PDU


def test_command_fragments_on_two_contexts_are_a_violation() -> None:
    first, second, *_ = _command_pdvs(CEchoRQ(1), 1, 20)
    error = _violation([first, PDV(3, True, second.is_last, second.data)])
    assert error.reason is AbortReason.UNEXPECTED_PDU_PARAMETER


def test_data_on_another_context_than_its_command_is_a_violation() -> None:
    error = _violation([*STORE_COMMAND, PDV(3, False, True, b"data")])
    assert error.reason is AbortReason.UNEXPECTED_PDU_PARAMETER


def test_command_set_over_the_limit_is_a_violation() -> None:
    chunk = bytes(MAX_COMMAND_SET // 2 + 1)
    error = _violation([PDV(1, True, False, chunk), PDV(1, True, False, chunk)])
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_malformed_command_set_is_a_violation() -> None:
    error = _violation([PDV(1, True, True, b"\x00\x00\x00\x01\x02\x00")])
    assert error.reason is AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_verification_default() -> None:
    assert CEchoRQ(1).affected_sop_class_uid == VERIFICATION_SOP_CLASS == "1.2.840.10008.1.1"


def test_command_element_vrs_are_pydicoms() -> None:
    """TAGS types PS3.7 Table E.1-1's VRs so that a sender need not import pydicom."""
    for name, (tag, vr) in TAGS.items():
        assert dictionary_VR(tag) == vr, name
