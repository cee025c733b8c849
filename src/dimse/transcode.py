"""Re-encoding a data set for a peer that refuses its transfer syntax.

The one place the sender parses and writes data sets with pydicom: a file sent
as it is never comes here, and this module (with pydicom, and numpy with it) is
imported only when a file must be converted or a Dataset encoded.
"""

from __future__ import annotations

import array
import io
import zlib

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from dimse.client import NoAcceptedContextError, RawDataSet
from dimse.elements import encoding
from dimse.files import DicomFile, WholeDataSets
from dimse.sop_classes import NATIVE_TRANSFER_SYNTAXES, syntax_name


def convert(source: DicomFile | Dataset | RawDataSet, syntax: str, target: str) -> bytes:
    """Re-encode a data set in an uncompressed transfer syntax, decompressing if needed.

    Decompression needs pydicom's pixel data plugins (numpy and a decoder such as
    Pillow or pylibjpeg); without one the file is reported as not sent.
    """
    dataset = _as_dataset(source)
    if syntax and syntax not in NATIVE_TRANSFER_SYNTAXES:
        dataset.file_meta = getattr(dataset, "file_meta", None) or FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = UID(syntax)
        try:
            dataset.decompress()
        except (ImportError, RuntimeError, NotImplementedError, ValueError) as error:
            raise NoAcceptedContextError(
                f"the peer does not accept {syntax_name(syntax)} and the data set cannot be "
                f"decompressed here: {error}".splitlines()[0]
            ) from None
    return encode_dataset(dataset, target)


def _as_dataset(source: DicomFile | Dataset | RawDataSet) -> Dataset:
    """Decode a source for re-encoding."""
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DicomFile):
        with source.path.open("rb") as fp:  # pydicom would read it, its pixels short
            WholeDataSets().check(source, b"", fp.fileno())
            return dcmread(fp)
    raw = source.data
    deflated, implicit, little_endian = encoding(source.transfer_syntax)
    if deflated:
        raw = zlib.decompress(raw, -zlib.MAX_WBITS)
    return read_dataset(io.BytesIO(raw), implicit, little_endian)


#: Word sizes of the "other" VRs whose byte order follows the transfer syntax
#: (PS3.5 §7.3); pydicom keeps their values as raw bytes, unswapped.
_WORD_SIZE = {"OW": "H", "OF": "I", "OL": "I", "OD": "Q", "OV": "Q"}


def _swap_words(dataset: Dataset) -> None:
    """Reverse the byte order of OW/OF/OL/OD/OV values, in place."""
    for element in dataset.iterall():
        code = _WORD_SIZE.get(element.VR)
        if code and isinstance(element.value, bytes):
            words = array.array(code)
            usable = len(element.value) - len(element.value) % words.itemsize
            words.frombytes(element.value[:usable])
            words.byteswap()
            element.value = words.tobytes() + element.value[usable:]


def encode_dataset(dataset: Dataset, transfer_syntax: str) -> bytes:
    """Encode `dataset` in an uncompressed transfer syntax (deflate included).

    A data set read in the other byte order has its word values swapped in place.
    """
    deflated, implicit, little_endian = encoding(transfer_syntax)
    source = dataset.original_encoding
    if source[1] is not None and source[1] != little_endian:
        _swap_words(dataset)
    buffer = DicomBytesIO()
    buffer.is_little_endian = little_endian
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, dataset)
    data = buffer.getvalue()
    if deflated:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data
