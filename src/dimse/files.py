"""PS3.10 files: find a file's data set without parsing it, and write file meta.

The sender streams a file's data set straight from disk, so it needs only the
file meta (SOP class/instance, transfer syntax) and the offset where the data set
starts; the receiver writes the peer's bytes behind a file meta of its own. pydicom
reads and writes the file meta group; nothing here parses the data set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from dimse.negotiation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

PREAMBLE = bytes(128) + b"DICM"


class NotDicomError(ValueError):
    """The file is not a PS3.10 file we can send as it is (the message omits the path)."""


@dataclass(frozen=True, slots=True)
class DicomFile:
    """A PS3.10 file on disk, located but not parsed."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    dataset_offset: int
    size: int

    @property
    def dataset_size(self) -> int:
        return self.size - self.dataset_offset


def open_dicom_file(path: str | os.PathLike[str]) -> DicomFile:
    """Read only the preamble and file meta of `path` (PS3.10 §7.1)."""
    path = Path(path)
    try:
        with path.open("rb") as fp:
            read_preamble(fp, force=False)
            meta = _read_file_meta_info(fp)
            offset = fp.tell()
            size = os.fstat(fp.fileno()).st_size
    except (InvalidDicomError, EOFError, ValueError, KeyError) as error:
        raise NotDicomError(f"not a DICOM file ({error})") from None
    missing = [
        keyword
        for keyword in (
            "MediaStorageSOPClassUID",
            "MediaStorageSOPInstanceUID",
            "TransferSyntaxUID",
        )
        if not meta.get(keyword)
    ]
    if missing:
        raise NotDicomError(f"file meta lacks {', '.join(missing)}")
    return DicomFile(
        path,
        str(meta.MediaStorageSOPClassUID),
        str(meta.MediaStorageSOPInstanceUID),
        str(meta.TransferSyntaxUID),
        offset,
        size,
    )


def file_meta_bytes(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str
) -> bytes:
    """Preamble, DICM prefix and file meta group for a received data set (PS3.10 §7.1)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if source_ae.strip():
        meta.SourceApplicationEntityTitle = source_ae.strip()
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return PREAMBLE + buffer.getvalue()
