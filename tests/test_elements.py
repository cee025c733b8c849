"""The in-place element scanner against pydicom, on pydicom's own test files."""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from conftest import TEST_FILES, dataset_bytes, python_output
from dimse.elements import (
    CUT_OFF_STEPS,
    DATA_SET_END,
    CutOff,
    Unscannable,
    cut_off,
    deflate_cut_off,
    encoding,
    header_elements,
    scan_text,
    walk,
)
from dimse.files import NotDicomError, open_dicom_file
from dimse.index import HEADER_TAGS, Instance
from dimse.server import Peer
from dimse.shapes import HeaderShapes, learn_shape
from dimse.sop_classes import (
    DEFLATED_REFERENCED,
    NATIVE_TRANSFER_SYNTAXES,
    VERIFICATION,
    all_transfer_syntaxes,
    syntax_name,
)
from dimse.storage import (
    HEAD_SIZE,
    INFLATED_HEADER_LIMIT,
    LAST_HEADER_TAG,
    layout_source,
    read_header,
)


def _instance(header: Dataset | dict[str, str], syntax: str) -> Instance:
    return Instance.from_header(
        header, transfer_syntax=syntax, path="", size=0, calling_ae="", received=0.0
    )


def _test_files() -> list[tuple[Path, bytes, str]]:
    """pydicom's bundled PS3.10 files, their data set bytes and transfer syntax."""
    files = []
    for path in sorted(TEST_FILES.rglob("*.dcm")):
        try:
            file = open_dicom_file(path)
        except NotDicomError:
            continue
        if UID(file.transfer_syntax).is_transfer_syntax:
            files.append((path, dataset_bytes(path), file.transfer_syntax))
    return files


BUNDLED = _test_files()


@pytest.mark.filterwarnings("ignore:Expected explicit VR")  # a deliberately odd test file
def test_scanner_agrees_with_pydicom_on_every_test_file() -> None:
    """Where the scanner answers, the index entry equals pydicom's, field by field."""
    scanned = 0
    for path, data, syntax in BUNDLED:
        uid = UID(syntax)
        head = data[:HEAD_SIZE]
        try:
            reference = read_dataset(
                BytesIO(data), uid.is_implicit_VR, uid.is_little_endian, stop_when=None
            )
        except Exception:  # pydicom cannot read some deliberately broken files
            continue
        header = read_header(head, len(data), syntax, path)
        if isinstance(header, dict):
            scanned += 1
            assert _instance(header, syntax) == _instance(reference, syntax), path.name
    # Most of the collection is Little Endian ASCII: the fast path must take it.
    assert scanned >= len(BUNDLED) // 2, (scanned, len(BUNDLED))


def _encoded(ds: Dataset, implicit: bool) -> bytes:
    fp = BytesIO()
    ds.save_as(fp, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return fp.getvalue()


def _with_sequences() -> Dataset:
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "X", "DCM"
    inner.ConceptCodeSequence = Sequence([Dataset()])  # nested, empty item
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    ds.ProcedureCodeSequence = Sequence([inner, inner])  # (0008,1032), before PatientName
    ds.PatientName, ds.PatientID = "DOE^JANE", "ID1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.1"
    ds.InstanceNumber = "7"
    ds.PixelData = b"\0" * 16
    ds["PixelData"].VR = "OW"
    return ds


@pytest.mark.parametrize("implicit", [True, False])
@pytest.mark.parametrize("undefined", [True, False])
def test_sequences_of_either_length_are_skipped(implicit: bool, undefined: bool) -> None:
    ds = _with_sequences()
    ds["ProcedureCodeSequence"].is_undefined_length = undefined
    for item in ds.ProcedureCodeSequence:
        item.is_undefined_length_sequence_item = undefined
    data = _encoded(ds, implicit)
    values = scan_text(data, 0, implicit, HEADER_TAGS, LAST_HEADER_TAG)
    assert values == {
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "SOPInstanceUID": "1.2.3.4",
        "PatientName": "DOE^JANE",
        "PatientID": "ID1",
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.1",
        "InstanceNumber": "7",
    }


def test_cut_off_or_unusual_values_are_left_to_pydicom() -> None:
    ds = _with_sequences()
    data = _encoded(ds, implicit=False)
    cut = data.index(b"DOE^JANE")
    assert scan_text(data[:cut], 0, False, HEADER_TAGS, LAST_HEADER_TAG) is None
    # A data set that ends before group 0020 is complete: what is there is the answer.
    short = Dataset()
    short.SOPClassUID = "1.2"
    whole = _encoded(short, implicit=True)
    assert scan_text(whole, 0, True, HEADER_TAGS, LAST_HEADER_TAG, complete=True) == {
        "SOPClassUID": "1.2"
    }
    assert scan_text(whole, 0, True, HEADER_TAGS, LAST_HEADER_TAG) is None
    for name in ("Müller^Hans", "A\\B"):  # a character set, several values
        ds.PatientName = name
        ds.SpecificCharacterSet = "ISO_IR 100"
        data = _encoded(ds, implicit=False)
        assert scan_text(data, 0, False, HEADER_TAGS, LAST_HEADER_TAG) is None


def test_read_header_falls_back_to_pydicom_for_a_character_set(tmp_path: Path) -> None:
    ds = _with_sequences()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Hans"
    data = _encoded(ds, implicit=False)
    header = read_header(data, len(data), ExplicitVRLittleEndian, tmp_path / "x")
    assert isinstance(header, Dataset)
    assert _instance(header, ExplicitVRLittleEndian).patient_name == "Müller^Hans"


@pytest.mark.filterwarnings("ignore:Expected explicit VR")  # a deliberately odd test file
def test_read_header_agrees_with_pydicom_where_pydicom_reads_it() -> None:
    """The files the scanner leaves to pydicom (big endian, deflated, character
    sets...) give the index what pydicom reads of the whole file."""
    parsed = set()
    for path, data, syntax in BUNDLED:
        try:
            reference = dcmread(path, stop_before_pixels=True)
        except Exception:  # pydicom cannot read some deliberately broken files
            continue
        header = read_header(data[:HEAD_SIZE], len(data), syntax, str(path))
        if isinstance(header, Dataset):
            parsed.add(syntax)
            assert _instance(header, syntax) == _instance(reference, syntax), path.name
    assert {ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian} < parsed, parsed


def _past_a_large_value(size: int, fill: bytes = b"\1") -> Dataset:
    """A header whose index values come after a private value of `size` bytes, and
    need a character set: read by pydicom, not the scanner."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4"
    ds.add_new(0x00090010, "LO", "DIMSE TEST")
    ds.add_new(0x00091010, "OB", fill * size)
    ds.PatientName, ds.PatientID = "Müller^Hans", "ID1"
    ds.InstanceNumber = "7"
    return ds


def _peak_memory_of(call: Callable[[], object]) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("implicit", [True, False])
def test_a_header_past_a_large_value_is_read_without_it(tmp_path: Path, implicit: bool) -> None:
    """pydicom would read the 32 MB value on its way to the patient's name."""
    data = _encoded(_past_a_large_value(32 << 20), implicit)
    path = tmp_path / "data-set"
    path.write_bytes(data)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    header, peak = _peak_memory_of(
        lambda: read_header(data[:HEAD_SIZE], len(data), syntax, str(path))
    )
    assert isinstance(header, Dataset)
    instance = _instance(header, syntax)
    assert (instance.patient_name, instance.instance_number) == ("Müller^Hans", 7)
    assert peak < 1 << 20, peak


def _deflated(data: bytes) -> bytes:
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


@pytest.mark.parametrize(("before", "found"), [(1 << 20, True), (64 << 20, False)])
def test_a_deflated_header_is_inflated_only_so_far(
    tmp_path: Path, before: int, found: bool
) -> None:
    """PS3.5 §A.5: past a large value, the header is found in the first
    INFLATED_HEADER_LIMIT bytes inflated, or not at all; 64 MB of zeros deflate to
    64 KB, and are never inflated whole."""
    data = _deflated(_encoded(_past_a_large_value(before, b"\0"), implicit=False))
    path = tmp_path / "data-set"
    path.write_bytes(data)
    syntax = DeflatedExplicitVRLittleEndian

    def read() -> object:
        try:
            return read_header(data[:HEAD_SIZE], len(data), syntax, str(path))
        except Unscannable as error:
            return error

    header, peak = _peak_memory_of(read)
    if found:
        assert isinstance(header, Dataset)
        assert _instance(header, syntax).patient_name == "Müller^Hans"
    else:
        assert isinstance(header, Unscannable)
        assert "first 4 MiB inflated" in str(header)
    assert peak < 3 * INFLATED_HEADER_LIMIT, peak


@pytest.mark.filterwarnings("ignore:The PN component length")
def test_header_elements_need_the_header_or_the_whole_data_set() -> None:
    ds = _past_a_large_value(100)
    data = _encoded(ds, implicit=False)
    wanted = {0x00080005, *HEADER_TAGS}
    elements = header_elements(data, False, wanted, LAST_HEADER_TAG, complete=True)
    copied = read_dataset(BytesIO(elements), False, True)
    assert Tag(0x00091010) not in copied and copied.PatientName == "Müller^Hans"
    before_name = data.index("Müller".encode("latin-1"))
    with pytest.raises(CutOff):
        header_elements(data[:before_name], False, wanted, LAST_HEADER_TAG, complete=False)
    # Complete but cut short: what it holds is kept (FileSink._cut_short answers).
    kept = header_elements(data[:before_name], False, wanted, LAST_HEADER_TAG, complete=True)
    assert read_dataset(BytesIO(kept), False, True).SOPInstanceUID == "1.2.3.4"
    ds.PatientName = "X" * 0x10000  # no text value of the index is that long
    with pytest.raises(Unscannable, match="65536 bytes long"):
        header_elements(_encoded(ds, True), True, wanted, LAST_HEADER_TAG, complete=True)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300), implicit=st.booleans())
def test_any_bytes_give_values_or_none(data: bytes, implicit: bool) -> None:
    """Garbage never raises out of the scanner: it answers or leaves it to pydicom;
    nor out of the walks for a data set's end; header_elements() raises Unscannable
    at most."""
    for last_tag in (LAST_HEADER_TAG, DATA_SET_END):
        values = scan_text(data, 0, implicit, HEADER_TAGS, last_tag, complete=True)
        assert values is None or set(values) <= set(HEADER_TAGS.values())
    inside = cut_off(data, 0, implicit)
    assert inside in (None, "an element header", "a sequence", "an item") or inside[0] == "("
    assert deflate_cut_off(data) in (None, "its deflate stream")
    for complete in (True, False):
        try:
            elements = header_elements(data, implicit, HEADER_TAGS, LAST_HEADER_TAG, complete)
        except Unscannable:  # CutOff too: pydicom is then given the file, or nothing
            continue
        assert len(elements) <= len(data)


def test_walk_reports_where_each_element_starts() -> None:
    ds = Dataset()
    ds.PatientName, ds.PatientID = "A", "B"
    data = _encoded(ds, implicit=True)
    assert [(tag, at) for tag, at, _, _ in walk(data, 0, True)] == [
        (0x00100010, 0),
        (0x00100020, 10),
    ]
    with pytest.raises(Unscannable):
        list(walk(data[:5], 0, True))


def test_implicit_little_endian_file_is_scanned(tmp_path: Path) -> None:
    data = _encoded(_with_sequences(), implicit=True)
    header = read_header(data, len(data), ImplicitVRLittleEndian, tmp_path / "x")
    assert isinstance(header, dict) and header["PatientID"] == "ID1"


def test_encoding_agrees_with_pydicom() -> None:
    """The native syntaxes from a table of our own, the others by PS3.5 Annex A, as
    pydicom reads them, except that pixel data by reference may come in a deflated
    data set (§A.7, §A.12), which pydicom 3.0 does not say."""
    for uid in AllTransferSyntaxes:
        syntax = UID(uid)
        deflated = syntax.is_deflated or uid in DEFLATED_REFERENCED
        expected = (deflated, syntax.is_implicit_VR, syntax.is_little_endian)
        assert encoding(uid) == expected, syntax.name
    assert encoding("1.2.840.10008.1.2.4.95") == (True, False, True)  # JPIP Referenced Deflate
    assert (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    ) == NATIVE_TRANSFER_SYNTAXES
    for not_a_syntax in (VERIFICATION, "1.2.3.4"):
        with pytest.raises(ValueError, match="not a transfer syntax"):
            encoding(not_a_syntax)


def test_the_registry_is_pydicoms_read_without_importing_it() -> None:
    """Compared with pydicom's in a process of its own: pynetdicom, imported by
    these tests, adds UIDs to pydicom's registry, and ours is a copy of its own."""
    code = (
        "import sys\n"
        "from dimse.sop_classes import all_transfer_syntaxes, registry, syntax_name\n"
        "ours, syntaxes = registry(), all_transfer_syntaxes()\n"
        "print('pydicom' in sys.modules)\n"
        "from pydicom._uid_dict import UID_dictionary\n"
        "from pydicom.uid import UID, AllTransferSyntaxes\n"
        "print(ours == UID_dictionary, set(syntaxes) == set(AllTransferSyntaxes))\n"
        "print(all(syntax_name(uid) == UID(uid).name for uid in AllTransferSyntaxes))\n"
    )
    assert python_output(code).split() == ["False", "True", "True", "True"]
    assert all_transfer_syntaxes()[:4] == NATIVE_TRANSFER_SYNTAXES
    assert set(all_transfer_syntaxes()) == set(AllTransferSyntaxes)  # pynetdicom loaded
    assert syntax_name("1.2.3.4") == "1.2.3.4"


def test_the_index_s_tags_are_pydicom_s() -> None:
    assert {int(Tag(keyword)): keyword for keyword in HEADER_TAGS.values()} == HEADER_TAGS


def test_the_header_is_read_up_to_the_last_attribute_the_index_keeps() -> None:
    assert max(HEADER_TAGS) == LAST_HEADER_TAG


def test_a_long_header_cut_off_is_left_to_pydicom() -> None:
    """An OB header whose 32-bit length is not all there (found by test_hostile)."""
    data = struct.pack("<HH2sH", 0x0008, 0x0010, b"OB", 0) + b"\0\0"
    assert scan_text(data, 0, False, HEADER_TAGS, LAST_HEADER_TAG, complete=True) is None


#: The sender reads headers up to a last tag; the archive reads data sets whole.
LAST_TAGS = pytest.mark.parametrize(
    "last_tag", [LAST_HEADER_TAG, DATA_SET_END], ids=["header", "whole"]
)


def _walked(
    data: bytes, implicit: bool, complete: bool, last_tag: int = LAST_HEADER_TAG
) -> tuple[dict[str, str], int] | None:
    """scan_text()'s values, and where the element past the last tag starts."""
    elements: list[tuple[int, int, int, int]] = []
    values = scan_text(data, 0, implicit, HEADER_TAGS, last_tag, complete, elements)
    if values is None:
        return None
    return values, elements[-1][1] if elements and elements[-1][2:] == (0, 0) else len(data)


def _scanned_alike(headers: list[bytes], implicit: bool, last_tag: int, label: str = "") -> None:
    """HeaderShapes answers as scan_text does, each header scanned as one source's."""
    shapes = HeaderShapes(HEADER_TAGS, last_tag)
    for number, data in enumerate(headers):
        expected = _walked(data, implicit, True, last_tag)
        assert shapes.scan("source", data, implicit, complete=True) == expected, (label, number)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@LAST_TAGS
def test_shapes_answer_as_the_walk_on_series_of_every_test_file(last_tag: int) -> None:
    """Each Little Endian test file as a series: UIDs and numbers of changing length,
    a value changed, the file itself again, then cut short."""
    series = 0
    for path, data, syntax in BUNDLED:
        uid = UID(syntax)
        if uid.is_deflated or not uid.is_little_endian:
            continue
        try:
            ds = read_dataset(BytesIO(data), uid.is_implicit_VR, True, stop_when=None)
            headers = [data]
            for number in (1, 22, 333, 4444, 5, 66):
                ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{number * 7919}"
                ds.InstanceNumber = number
                ds.PatientName = "DOE^J" if number % 2 else "ROE^R"
                headers.append(_encoded(ds, uid.is_implicit_VR))
        except Exception:  # pydicom cannot read or write some deliberately broken files
            continue
        headers += [data, data[: len(data) // 2], data[:200], data]
        _scanned_alike(headers, uid.is_implicit_VR, last_tag, path.name)
        series += 1
    assert series >= len(BUNDLED) // 2, (series, len(BUNDLED))


def test_a_shape_reads_headers_like_the_one_it_was_learnt_from() -> None:
    ds = _with_sequences()
    first = _encoded(ds, implicit=False)
    elements: list[tuple[int, int, int, int]] = []
    scan_text(first, 0, False, HEADER_TAGS, LAST_HEADER_TAG, elements=elements)
    uid, name = 0x00080018, 0x00100010  # SOP Instance UID of varying length; Patient's Name
    shape = learn_shape(first, False, elements, HEADER_TAGS, resized={uid}, changed={name})
    assert shape is not None
    ds.SOPInstanceUID, ds.PatientName = "1.2.3.4.55555", "ROE^JOHN"
    second = _encoded(ds, implicit=False)
    matched = shape.match(second)
    assert matched == _walked(second, False, complete=False)
    assert matched is not None and matched[0]["SOPInstanceUID"] == "1.2.3.4.55555"
    ds.PatientName = "ROE^JOHNNY"  # a new length where none was expected
    assert shape.match(_encoded(ds, implicit=False)) is None
    ds.PatientName, ds.PatientID = "ROE^JOHN", "ID2"  # a new value where none was expected
    assert shape.match(_encoded(ds, implicit=False)) is None
    # The walk that ends before the last tag wanted teaches nothing.
    cut: list[tuple[int, int, int, int]] = []
    scan_text(first[:60], 0, False, HEADER_TAGS, LAST_HEADER_TAG, elements=cut)
    assert learn_shape(first[:60], False, cut, HEADER_TAGS, set(), set()) is None


@settings(max_examples=200, deadline=None)
@given(
    implicit=st.booleans(),
    undefined=st.booleans(),
    changes=st.lists(
        st.tuples(
            st.integers(0, 10**12),  # the SOP Instance UID's last component
            st.sampled_from(["DOE^JANE", "ROE^JOHN", "DOE^JANE^X", "A\\B", ""]),
            st.integers(0, 300),  # a byte to spoil, if within the data set
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=8,
    ),
)
@LAST_TAGS
def test_shapes_answer_as_the_walk_whatever_changes(
    implicit: bool, undefined: bool, changes: list[tuple[int, str, int, int]], last_tag: int
) -> None:
    ds = _with_sequences()
    ds["ProcedureCodeSequence"].is_undefined_length = undefined
    headers = [_encoded(ds, implicit)]
    for number, name, at, value in changes:
        ds.SOPInstanceUID, ds.PatientName = f"1.2.3.{number}", name
        good = _encoded(ds, implicit)
        headers.append(good)
        if at < len(good):
            headers.append(good[:at] + bytes([value]) + good[at + 1 :])
    _scanned_alike(headers, implicit, last_tag)


@LAST_TAGS
def test_a_series_whose_values_change_length_is_read_by_its_shape(last_tag: int) -> None:
    """UIDs, numbers, positions, times and pixels that change, some in length, from
    image to image, as in a real series: after a few walks the shape reads them all.
    Read whole, one cut short fits no shape."""
    ds = read_dataset(BytesIO(dataset_bytes(TEST_FILES / "CT_small.dcm")), False, True)
    shapes = HeaderShapes(HEADER_TAGS, last_tag)
    complete = last_tag == DATA_SET_END  # the archive's data sets are whole; headers not
    for number in range(1, 121):
        z = -150 + number * 0.625
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{number**5}"
        ds.InstanceNumber = number
        ds.SliceLocation = f"{z:g}"
        ds.ImagePositionPatient = ["-175.5", f"{-174 + number / 7:.5g}", f"{z:g}"]
        ds.AcquisitionTime = f"072700.{number * 37}"
        ds.PixelData = bytes([number]) * len(ds.PixelData)
        data = _encoded(ds, implicit=False)
        expected = _walked(data, False, complete, last_tag)
        assert expected is not None
        assert shapes.scan("ct", data, False, complete) == expected
    assert shapes.walked <= 6, shapes.walked
    if complete:
        assert shapes.scan("ct", data[:-1], False, complete) is None
        assert shapes.scan("ct", data[: len(data) // 2], False, complete) is None
        assert shapes.scan("ct", data + b"\0" * 8, False, complete) is None  # more than a shape


def test_cut_off_names_where_a_data_set_ends_short() -> None:
    """Every Little Endian test file ends with an element but pydicom's two that are
    cut short on purpose; cut anywhere else than between two elements, any does not."""
    checked = 0
    for path, data, syntax in BUNDLED:
        uid = UID(syntax)
        if uid.is_deflated or not uid.is_little_endian:
            continue
        implicit = uid.is_implicit_VR
        assert (cut_off(data, 0, implicit) is None) == ("truncated" not in path.name), path.name
        try:
            bounds = {offset for _, offset, _, _ in walk(data, 0, implicit)}
        except Unscannable:  # no VR here (a deliberately odd file), or cut short
            continue
        for size in (len(data) - 1, len(data) // 2, len(data) // 3, 7, 130):
            if size not in bounds and size < len(data):
                assert cut_off(data[:size], 0, implicit) is not None, (path.name, size)
        checked += 1
    assert checked >= len(BUNDLED) // 2, (checked, len(BUNDLED))
    ct = dataset_bytes(TEST_FILES / "CT_small.dcm")
    assert cut_off(ct[: len(ct) // 2], 0, False) == "(7FE0,0010)"  # in the pixels
    assert cut_off(ct[:5], 0, False) == "an element header"
    no_vr = b"\x10\x00\x10\x00??\x02\x00AB"
    assert cut_off(no_vr, 0, False) is None  # not walked: says nothing of its end


def test_a_layout_is_a_devices_own_whatever_its_port_or_ae_title() -> None:
    """Two devices under one AE title do not share a layout (each would spoil the
    other's); one device's associations, each from its own port, do."""

    def source(
        address: str, ae: str = "CT_SCANNER", syntax: str = ExplicitVRLittleEndian
    ) -> tuple[str, ...]:
        return layout_source(Peer(address, ae, "DIMSE"), "1.2.840.10008.5.1.4.1.1.2", syntax)

    assert source("10.0.0.5:40001") == source("10.0.0.5:40002")
    assert source("10.0.0.5:40001") != source("10.0.0.6:40001")
    assert source("::1:40001") == source("::1:50000") != source("::2:40001")
    assert source("10.0.0.5:40001") != source("10.0.0.5:40001", ae="MR_SCANNER")
    assert source("10.0.0.5:1") != source("10.0.0.5:1", syntax=ImplicitVRLittleEndian)


def test_a_deflated_data_set_cut_short_does_not_end() -> None:
    """PS3.5 §A.5: one deflate stream, inflated in bounded memory whatever it holds."""
    dfl = dataset_bytes(TEST_FILES / "image_dfl.dcm")
    assert deflate_cut_off(dfl) is None
    assert deflate_cut_off(dfl[: len(dfl) // 2]) == "its deflate stream"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = compressor.compress(bytes(256 << 20)) + compressor.flush()  # 256 MB of zeros
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        assert deflate_cut_off(bomb) is None
        assert deflate_cut_off(bomb[:-100]) == "its deflate stream"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


@pytest.mark.parametrize("implicit", [True, False])
def test_sequences_nested_thousands_deep_are_walked_without_recursion(implicit: bool) -> None:
    depth = 5000
    if implicit:
        opening = struct.pack("<HHI", 0x0040, 0xA730, 0xFFFFFFFF)
    else:  # UN of undefined length: what it holds is implicit VR (PS3.5 §6.2.2)
        opening = struct.pack("<HH2sHI", 0x0040, 0xA730, b"UN", 0, 0xFFFFFFFF)
    inner = struct.pack("<HHI", 0x0040, 0xA730, 0xFFFFFFFF)  # implicit VR, both ways
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    data = opening + item + (inner + item) * (depth - 1) + closing * depth
    assert [(tag, end) for tag, _, _, end in walk(data, 0, implicit)] == [(0x0040A730, -1)]
    assert cut_off(data, 0, implicit) is None
    assert cut_off(data[:-8], 0, implicit) == "a sequence"
    halfway = len(opening + item + (inner + item) * (depth // 2))
    assert cut_off(data[:halfway], 0, implicit) == "an item"
    assert cut_off(data[: halfway + len(inner)], 0, implicit) == "a sequence"
    assert cut_off(data[: halfway + 3], 0, implicit) == "an element header"


def test_the_walk_for_a_data_set_end_passes_a_bounded_number_of_elements() -> None:
    """A peer's megabytes of 8-byte elements would hold the filing thread for seconds:
    past CUT_OFF_STEPS elements or items, nested ones included, the walk gives up
    and says nothing of the end."""
    empty = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 0)  # a private element, empty
    assert cut_off((empty * 1000)[:-3], 0, False) == "an element header"
    assert cut_off((empty * (CUT_OFF_STEPS + 1))[:-3], 0, False) is None
    sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0)  # empty, of defined length
    assert cut_off(sequence + item * 1000, 0, False) == "a sequence"
    assert cut_off(sequence + item * CUT_OFF_STEPS, 0, False) is None


def test_the_pad_of_an_odd_data_set_is_not_an_element_cut_short() -> None:
    """PDVs carry even lengths (PS3.8 §9.3.5.1): an odd data set (an odd-length
    value) arrives with one NUL more, which cut_off() leaves out."""
    odd = struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", 3) + b"A^B"
    assert cut_off(odd, 0, False) is None
    assert cut_off(odd + b"\0", 0, False) is None
    assert cut_off(odd + b"\1", 0, False) == "an element header"
    assert cut_off(odd[:-2] + b"\0", 0, False) == "(0010,0010)"  # even, cut: no pad
    sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
    sequence += struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)  # empty, of undefined length
    assert cut_off(odd + sequence + b"\0", 0, False) is None
    assert cut_off(odd + sequence[:-2] + b"\0", 0, False) == "a sequence"
