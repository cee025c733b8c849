"""SOP classes and transfer syntaxes that dimse offers by default.

The registry-wide lists come from pydicom's UID registry, so they follow the
standard as pydicom does, and are built on first use. The registry is read from
its module without importing pydicom's package, whose import brings the data
dictionaries and pixel handlers: a fifth of a second of a sender's start-up, and
~10 MB of the archive's resident set, which needs pydicom for unusual data sets
only. Only the handful of UIDs every association uses are typed here (PS3.4
Annex A, PS3.5 §10 and Annex A); a test checks them against pydicom's.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re

VERIFICATION = "1.2.840.10008.1.1"
#: A DICOMDIR's SOP class: the directory of a file-set on media (PS3.10 §8), which
#: the registry names "...Storage" but no Storage SOP class of PS3.4 Annex B is.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
#: JPIP (HTJ2K) Referenced Deflate: pixel data by reference, the data set deflated
#: as Deflated Explicit VR Little Endian's (PS3.5 §A.7, §A.12, §A.5).
DEFLATED_REFERENCED = frozenset({"1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"})
#: Current transfer syntaxes that pydicom's AllTransferSyntaxes leaves out, so not
#: accepted by default: pixel data by reference (PS3.5 §A.6, §A.7) and encapsulated
#: uncompressed pixel data (§A.4).
_LEFT_OUT = frozenset(
    {"1.2.840.10008.1.2.4.94", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.1.98"}
)

#: The uncompressed syntaxes: the two little-endian ones first, since every
#: peer must support Implicit VR LE (PS3.5 §10.1) and most prefer Explicit VR LE.
NATIVE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
)


RegistryEntry = tuple[str, str, str, str, str]  # name, type, info, retired, keyword


@functools.cache
def registry() -> dict[str, RegistryEntry]:
    """pydicom's UID registry, by UID, as pydicom ships it: read from its module
    alone (a copy of its own, which another package's additions to pydicom's, as
    pynetdicom's, do not reach), or imported where that module is not a file (a
    zipped install)."""
    package = importlib.util.find_spec("pydicom")  # found, not imported
    folders = package.submodule_search_locations if package else None
    path = os.path.join(folders[0], "_uid_dict.py") if folders else ""
    if not os.path.isfile(path):
        from pydicom._uid_dict import UID_dictionary

        return UID_dictionary
    spec = importlib.util.spec_from_file_location("pydicom._uid_dict", path)
    assert spec is not None and spec.loader is not None  # always, for a .py file
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table: dict[str, RegistryEntry] = module.UID_dictionary
    return table


#: PS3.5 §9.1: a UID is digits and periods, 64 characters at most. (The leading
#: zeros in a component that §9.1 also forbids are let through: devices write them.
#: What a user types is held to all of §9.1: cli._uid.)
_UID = re.compile(r"[0-9.]{1,64}")


def is_uid(value: str) -> bool:
    return _UID.fullmatch(value) is not None


def uids_problem(sop_class: str, sop_instance: str, transfer_syntax: str) -> str | None:
    """What keeps an instance from being sent, if anything: its SOP Class and Transfer
    Syntax UIDs are proposed to the peer, and must be UIDs, or no association request
    naming them can be encoded; its SOP Instance UID goes in the command set, as
    ASCII text (a peer may accept one that is not quite a UID)."""
    for name, uid in (("SOP Class", sop_class), ("Transfer Syntax", transfer_syntax)):
        if not is_uid(uid):
            return f"its {name} UID is not a UID (PS3.5 §9.1): {uid!r}"
    if not (sop_instance.isascii() and sop_instance.isprintable()):
        return f"its SOP Instance UID is not a UID: {sop_instance!r}"
    return None


def is_transfer_syntax(uid: str) -> bool:
    entry = registry().get(uid)
    return entry is not None and entry[1] == "Transfer Syntax"


@functools.cache
def storage_sop_classes() -> tuple[str, ...]:
    """Every Storage SOP class of the registry (PS3.4 Annex B, B.5)."""
    return tuple(
        uid
        for uid, (name, kind, *_rest) in registry().items()
        if kind == "SOP Class"
        and "Storage" in name
        and "Commitment" not in name
        and uid != MEDIA_STORAGE_DIRECTORY
    )


@functools.cache
def all_transfer_syntaxes() -> tuple[str, ...]:
    """The native syntaxes, then every other current transfer syntax of the registry
    that pydicom's AllTransferSyntaxes lists (a test keeps them equal)."""
    others = (
        uid
        for uid, (_name, kind, _info, retired, _keyword) in registry().items()
        if kind == "Transfer Syntax"
        and not retired
        and uid not in _LEFT_OUT
        and uid not in NATIVE_TRANSFER_SYNTAXES
    )
    return (*NATIVE_TRANSFER_SYNTAXES, *others)


def syntax_name(uid: str) -> str:
    """A transfer syntax's name for messages, or the UID the registry does not know."""
    entry = registry().get(uid)
    return uid if entry is None else entry[0]
