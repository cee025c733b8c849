"""SOP classes and transfer syntaxes that dimse offers by default.

The lists come from pydicom's UID registry so they follow the standard as
pydicom does; nothing here is typed by hand except the Verification UID.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

VERIFICATION = UID("1.2.840.10008.1.1")

#: Every Storage SOP class of the registry (PS3.4 Annex B, B.5), by UID.
STORAGE_SOP_CLASSES: tuple[UID, ...] = tuple(
    UID(uid)
    for uid, (name, kind, *_rest) in UID_dictionary.items()
    if kind == "SOP Class" and "Storage" in name and "Commitment" not in name
)

#: The uncompressed syntaxes: the two little-endian ones first, since every
#: peer must support Implicit VR LE (PS3.5 §10.1) and most prefer Explicit VR LE.
NATIVE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

ALL_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    *NATIVE_TRANSFER_SYNTAXES,
    *(UID(ts) for ts in AllTransferSyntaxes if ts not in NATIVE_TRANSFER_SYNTAXES),
)
