"""DIMSE status codes: PS3.7 Annex C (general) and PS3.4 §B.2.3 (Storage).

Statuses are 16-bit codes whose *category* matters more than the value: an SCU
must treat any Axxx/Cxxx it does not know as a failure (PS3.4 §B.2.3) and any
Bxxx as a warning, so `category` classifies ranges, not just known codes.
"""

from __future__ import annotations

from enum import Enum, IntEnum


class Category(Enum):
    SUCCESS = "Success"
    WARNING = "Warning"
    FAILURE = "Failure"
    CANCEL = "Cancel"
    PENDING = "Pending"


class Status(IntEnum):
    SUCCESS = 0x0000
    # PS3.4 Table B.2-1 (Storage) warnings.
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
    # PS3.7 §C.4 general warnings.
    ATTRIBUTE_LIST_ERROR = 0x0107
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    # PS3.7 §C.5 general failures.
    NO_SUCH_ATTRIBUTE = 0x0105
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    NO_SUCH_ARGUMENT = 0x0114
    INVALID_ARGUMENT_VALUE = 0x0115
    INVALID_OBJECT_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    CLASS_INSTANCE_CONFLICT = 0x0119
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    NO_SUCH_ACTION_TYPE = 0x0123
    REFUSED_NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    # PS3.4 Table B.2-1 (Storage) failures; A7xx, A9xx and Cxxx are ranges.
    OUT_OF_RESOURCES = 0xA700
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    CANCEL = 0xFE00
    PENDING = 0xFF00


_DESCRIPTIONS: dict[int, str] = {
    0x0000: "Success",
    0xB000: "Coercion of data elements",
    0xB006: "Elements discarded",
    0xB007: "Data set does not match SOP class",
    0x0107: "Attribute list error",
    0x0116: "Attribute value out of range",
    0x0105: "No such attribute",
    0x0106: "Invalid attribute value",
    0x0110: "Processing failure",
    0x0111: "Duplicate SOP instance",
    0x0112: "No such SOP instance",
    0x0113: "No such event type",
    0x0114: "No such argument",
    0x0115: "Invalid argument value",
    0x0117: "Invalid object instance",
    0x0118: "No such SOP class",
    0x0119: "Class-instance conflict",
    0x0120: "Missing attribute",
    0x0121: "Missing attribute value",
    0x0122: "Refused: SOP class not supported",
    0x0123: "No such action type",
    0x0124: "Refused: not authorized",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognized operation",
    0x0212: "Mistyped argument",
    0x0213: "Resource limitation",
    0xFE00: "Cancel",
    0xFF00: "Pending",
    0xFF01: "Pending (optional keys not supported)",
}

_WARNINGS = {0x0001, 0x0107, 0x0116}


def category(code: int) -> Category:
    """The category of any status code, known or not (PS3.7 Annex C)."""
    if code == 0x0000:
        return Category.SUCCESS
    if code in (0xFF00, 0xFF01):
        return Category.PENDING
    if code == 0xFE00:
        return Category.CANCEL
    if code in _WARNINGS or code & 0xF000 == 0xB000:
        return Category.WARNING
    return Category.FAILURE


def describe(code: int) -> str:
    """A one-line human description, e.g. 'A700 Out of resources'."""
    text = _DESCRIPTIONS.get(code)
    if text is None:
        high = code & 0xFF00
        if high == 0xA700:
            text = "Out of resources"
        elif high == 0xA900:
            text = "Data set does not match SOP class"
        elif code & 0xF000 == 0xC000:
            text = "Cannot understand"
        elif code & 0xF000 == 0xB000:
            text = "Warning"
        else:
            text = category(code).value
    return f"{code:04X} {text}"
