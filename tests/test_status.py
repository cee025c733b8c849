"""DIMSE status codes: categories and descriptions (PS3.7 Annex C, PS3.4 §B.2.3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimse.status import Category, Status, category, describe


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, Category.SUCCESS),
        (0xFF00, Category.PENDING),
        (0xFF01, Category.PENDING),
        (0xFE00, Category.CANCEL),
        # PS3.4 Table B.2-1 warnings, and any Bxxx
        (0xB000, Category.WARNING),
        (0xB006, Category.WARNING),
        (0xB007, Category.WARNING),
        (0xB123, Category.WARNING),
        # PS3.7 C.4 general warnings
        (0x0001, Category.WARNING),
        (0x0107, Category.WARNING),
        (0x0116, Category.WARNING),
        # failures: PS3.4 B.2.3 ranges A7xx, A9xx, Cxxx, and PS3.7 C.5
        (0xA700, Category.FAILURE),
        (0xA7FF, Category.FAILURE),
        (0xA900, Category.FAILURE),
        (0xA9AB, Category.FAILURE),
        (0xC000, Category.FAILURE),
        (0xCFFF, Category.FAILURE),
        (0x0110, Category.FAILURE),
        (0x0122, Category.FAILURE),
        (0x0211, Category.FAILURE),
        (0x0124, Category.FAILURE),
    ],
)
def test_category(code: int, expected: Category) -> None:
    assert category(code) is expected


@given(st.integers(0xA000, 0xAFFF) | st.integers(0xC000, 0xCFFF))
def test_unknown_axxx_and_cxxx_are_failures(code: int) -> None:
    """PS3.4 §B.2.3: an SCU treats an Axxx or Cxxx status it does not know as a failure."""
    assert category(code) is Category.FAILURE


@given(st.integers(0xB000, 0xBFFF))
def test_every_bxxx_is_a_warning(code: int) -> None:
    assert category(code) is Category.WARNING


@given(st.integers(0, 0xFFFF))
def test_every_code_has_a_category_and_a_description(code: int) -> None:
    assert isinstance(category(code), Category)
    text = describe(code)
    assert text.startswith(f"{code:04X} ") and len(text) > 5


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x0000, "0000 Success"),
        (0xA700, "A700 Out of resources"),
        (0xA7FF, "A7FF Out of resources"),
        (0xA900, "A900 Data set does not match SOP class"),
        (0xA912, "A912 Data set does not match SOP class"),
        (0xC000, "C000 Cannot understand"),
        (0xC123, "C123 Cannot understand"),
        (0xB000, "B000 Coercion of data elements"),
        (0xB123, "B123 Warning"),
        (0x0211, "0211 Unrecognized operation"),
        (0x0122, "0122 Refused: SOP class not supported"),
        (0xFF01, "FF01 Pending (optional keys not supported)"),
        (0x0999, "0999 Failure"),
    ],
)
def test_describe(code: int, text: str) -> None:
    assert describe(code) == text


def test_every_named_status_is_described_and_categorised() -> None:
    for status in Status:
        assert describe(status).startswith(f"{int(status):04X} ")
        assert category(status) is not None
    assert category(Status.SUCCESS) is Category.SUCCESS
    assert category(Status.OUT_OF_RESOURCES) is Category.FAILURE
    assert category(Status.COERCION_OF_DATA_ELEMENTS) is Category.WARNING
    assert category(Status.ATTRIBUTE_LIST_ERROR) is Category.WARNING
    assert category(Status.PENDING) is Category.PENDING
    assert category(Status.CANCEL) is Category.CANCEL
