"""SOP classes and transfer syntaxes that dimse offers by default.

The registry-wide lists come from pydicom's UID registry, so they follow the
standard as pydicom does, and are built on first use: importing pydicom costs a
sender a fifth of a second at start-up, and a sender of uncompressed files never
needs it. Only the handful of UIDs every association uses are typed here (PS3.4
Annex A, PS3.5 §10 and Annex A); a test checks them against pydicom's.
"""

from __future__ import annotations

import functools

VERIFICATION = "1.2.840.10008.1.1"
#: A DICOMDIR's SOP class: the directory of a file-set on media (PS3.10 §8), which
#: the registry names "...Storage" but no Storage SOP class of PS3.4 Annex B is.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

#: The uncompressed syntaxes: the two little-endian ones first, since every
#: peer must support Implicit VR LE (PS3.5 §10.1) and most prefer Explicit VR LE.
NATIVE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)


@functools.cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every Storage SOP class of the registry (PS3.4 Annex B, B.5)."""
    from pydicom._uid_dict import UID_dictionary

    return tuple(
        uid
        for uid, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class"
        and "Storage" in name
        and "Commitment" not in name
        and uid != MEDIA_STORAGE_DIRECTORY
    )


@functools.cache
def all_transfer_syntaxes() -> tuple[str, ...]:
    """The native syntaxes, then every other transfer syntax pydicom knows."""
    from pydicom.uid import AllTransferSyntaxes

    others = (str(ts) for ts in AllTransferSyntaxes if ts not in NATIVE_TRANSFER_SYNTAXES)
    return (*NATIVE_TRANSFER_SYNTAXES, *others)


def syntax_name(uid: str) -> str:
    """A transfer syntax's name for messages, or the UID pydicom does not know."""
    from pydicom.uid import UID

    return UID(uid).name
