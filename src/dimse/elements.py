"""Data elements scanned in place (PS3.5 §7), for the per-instance paths.

pydicom reads data sets well, but at ~1 ms per CT header here, holding the GIL
throughout, it was the archive's largest cost per instance (and the event loop
waited for the GIL meanwhile). Both hot paths need a few top-level text values
from the first bytes of a Little Endian encoding; this scanner reads those and
nothing else. Anything it does not understand makes it give up, and the caller
falls back to pydicom; tests compare the two on pydicom's own test files.
"""

from __future__ import annotations

import itertools
import mmap
import struct
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping

from dimse.sop_classes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    DEFLATED_REFERENCED,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    is_transfer_syntax,
)

#: PS3.5 Table 7.1-1: explicit VRs with a reserved field and a 32-bit length.
LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
#: PS3.5 Table 7.1-2: those with a 16-bit length, the usual case, tested first.
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
#: An explicit VR element's header size by VR: 8, or 12 with a 32-bit length.
_HEADER_SIZE = {**dict.fromkeys(SHORT_VRS, 8), **dict.fromkeys(LONG_VRS, 12)}
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD  # PS3.5 §7.5
#: As scan_text()'s `last_tag`: the whole data set, which must end with an element.
DATA_SET_END = 0xFFFFFFFF

_IMPLICIT = struct.Struct("<HHI")  # tag, 32-bit length; items in any encoding
_EXPLICIT = struct.Struct("<HH2sH")  # tag, VR, 16-bit length
LONG_LENGTH = struct.Struct("<I")
_INFLATE_BLOCK = 1 << 20


#: Deflated, implicit VR, little endian (PS3.5 §A.1-A.5).
_NATIVE_ENCODINGS = {
    IMPLICIT_VR_LITTLE_ENDIAN: (False, True, True),
    EXPLICIT_VR_LITTLE_ENDIAN: (False, False, True),
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: (True, False, True),
    EXPLICIT_VR_BIG_ENDIAN: (False, False, False),
}


def encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """Deflated, implicit VR, little endian. ValueError for a UID that is not a
    transfer syntax of the registry."""
    native = _NATIVE_ENCODINGS.get(transfer_syntax)
    if native is not None:
        return native
    if not is_transfer_syntax(transfer_syntax):
        raise ValueError(f"{transfer_syntax} is not a transfer syntax")
    # PS3.5 §A.4: encapsulated pixel data in an Explicit VR Little Endian data set,
    # which the syntaxes of pixel data by reference may deflate (§A.7, §A.12).
    return transfer_syntax in DEFLATED_REFERENCED, False, True


class Unscannable(Exception):
    """The bytes end early or hold something this scanner leaves to pydicom."""


class CutOff(Unscannable):
    """The bytes end inside what the message names."""


_IN_A_HEADER = "an element header"  # what CutOff names when the bytes end inside one


Buffer = bytes | bytearray | memoryview | mmap.mmap

_ENDLESS: Iterator[object] = itertools.repeat(None)
_SPENT = object()
#: Elements and items cut_off() passes at most (~0.1 s here): a peer may send a large
#: data set of 8-byte elements, and its walk would hold the filing thread for
#: seconds. A real header has a few hundred; deep functional groups of undefined
#: lengths may have more, and are then left unchecked.
CUT_OFF_STEPS = 100_000


def _element_header(buf: Buffer, at: int, implicit: bool) -> tuple[int, int, int, bool]:
    """The tag and length of the element (or item, or delimiter) at `at`, where its
    value starts, and whether an undefined length there holds implicit VR
    (§6.2.2: an undefined-length UN holds an implicit VR sequence)."""
    if at + 8 > len(buf):
        raise CutOff(_IN_A_HEADER)
    if implicit:
        group, element, length = _IMPLICIT.unpack_from(buf, at)
        return group << 16 | element, length, at + 8, True
    group, element, vr, length = _EXPLICIT.unpack_from(buf, at)
    tag = group << 16 | element
    if group == 0xFFFE:  # items and delimiters have no VR (§7.5)
        return tag, LONG_LENGTH.unpack_from(buf, at + 4)[0], at + 8, False
    header = _HEADER_SIZE.get(vr)
    if header == 12:
        if at + 12 > len(buf):
            raise CutOff(_IN_A_HEADER)
        return tag, LONG_LENGTH.unpack_from(buf, at + 8)[0], at + 12, vr == b"UN"
    if header == 8 or (vr.isalpha() and vr.isupper()):
        return tag, length, at + 8, False
    raise Unscannable(f"no VR at {at}")


def walk(
    buf: Buffer, at: int, implicit: bool, steps: Iterator[object] = _ENDLESS
) -> Iterator[tuple[int, int, int, int]]:
    """(tag, offset, value offset, value end) of each element from `at` at its level.

    An element of undefined length (PS3.5 §7.5.2: a sequence, or encapsulated
    pixel data) yields end -1 and is skipped when the caller asks for the next
    one. A defined length may reach past the buffer: the caller checks `end`.
    Stops at the end of the buffer, or after yielding an item delimiter. One of
    `steps` is taken per element or item passed, nested ones included; Unscannable
    when they run out.
    """
    while at < len(buf):
        _step(steps)
        offset = at
        tag, length, at, nested_implicit = _element_header(buf, at, implicit)
        if length == UNDEFINED_LENGTH:
            yield tag, offset, at, -1
            at = skip_items(buf, at, nested_implicit, steps)
        else:
            yield tag, offset, at, at + length
            at += length
        if tag == ITEM_END:
            return


def skip_items(buf: Buffer, at: int, implicit: bool, steps: Iterator[object] = _ENDLESS) -> int:
    """The offset past a sequence of undefined length (PS3.5 §7.5.2); one of
    `steps` taken per element or item passed (see walk()).

    Without recursion, whatever the nesting: the peer chooses it, and a few
    thousand levels (~20 bytes each) exceeded Python's recursion limit.
    """
    # The sequences and undefined-length items open around `at`, innermost last:
    # whether it is an item, and the encoding of what it holds.
    open_: list[tuple[bool, bool]] = [(False, implicit)]
    while open_:
        _step(steps)
        in_item, encoding_implicit = open_[-1]
        if not in_item:  # a sequence: items, then its delimiter
            if at + 8 > len(buf):
                raise CutOff("a sequence")
            group, element, length = _IMPLICIT.unpack_from(buf, at)
            tag = group << 16 | element
            at += 8
            if tag == SEQUENCE_END:
                open_.pop()
            elif tag != ITEM:
                raise Unscannable(f"not an item in a sequence at {at - 8}")
            elif length == UNDEFINED_LENGTH:
                open_.append((True, encoding_implicit))
            else:
                at += length
            continue
        if at >= len(buf):
            raise CutOff("an item")
        tag, length, at, nested_implicit = _element_header(buf, at, encoding_implicit)
        if tag == ITEM_END:
            open_.pop()
        elif length == UNDEFINED_LENGTH:
            open_.append((False, nested_implicit))
        else:
            at += length
    return at


def _step(steps: Iterator[object]) -> None:
    if next(steps, _SPENT) is _SPENT:
        raise Unscannable("more elements than this walk may pass")


def cut_off(buf: Buffer, at: int, implicit: bool) -> str | None:
    """What the data set from `at` to the end of `buf` ends inside, if it is cut
    short (a file cut in its pixel data still has the header the index reads).
    None when its last element ends where it ends, or when it holds what walk()
    cannot pass (or more than CUT_OFF_STEPS elements), which says nothing of its
    end."""
    inside = _ends_inside(buf, at, implicit)
    size = len(buf)
    if inside == _IN_A_HEADER and (size - at) % 2 == 0 and buf[size - 1] == 0:
        # An odd data set (an odd-length value, against PS3.5 §7.1.1) arrives with a
        # NUL more: PDVs carry even lengths (PS3.8 §9.3.5.1). No element is cut.
        with memoryview(buf) as whole, whole[: size - 1] as unpadded:
            if _ends_inside(unpadded, at, implicit) is None:
                return None
    return inside


def _ends_inside(buf: Buffer, at: int, implicit: bool) -> str | None:
    try:
        for tag, _, _, end in walk(buf, at, implicit, iter(range(CUT_OFF_STEPS))):
            if end > len(buf):
                return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    except CutOff as error:
        return str(error)
    except Unscannable:
        return None
    return None


def deflate_cut_off(buf: Buffer) -> str | None:
    """A deflated data set is one raw deflate stream (PS3.5 §A.5): cut short, the
    stream does not end (None for one that is no deflate stream at all). Inflated
    a block at a time, and dropped: a few kilobytes may inflate to gigabytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    with memoryview(buf) as view:
        for start in range(0, len(view), _INFLATE_BLOCK):
            pending: bytes | memoryview = view[start : start + _INFLATE_BLOCK]
            while pending and not inflater.eof:
                try:
                    inflater.decompress(pending, _INFLATE_BLOCK)
                except zlib.error:  # not deflate data: says nothing of its end
                    return None
                pending = inflater.unconsumed_tail
    return None if inflater.eof else "its deflate stream"


def inflate_head(chunks: Iterable[Buffer], limit: int) -> tuple[bytes, bool]:
    """The first `limit` bytes at most that a raw deflate stream (PS3.5 §A.5) inflates
    to, and whether they are all there is: the stream ended, or `chunks` did (a
    stream cut short). `chunks` are read so far only."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    for chunk in chunks:
        inflated += inflater.decompress(chunk, limit - len(inflated))
        if inflater.eof or len(inflated) >= limit:
            return bytes(inflated), inflater.eof
    return bytes(inflated), True


#: A header value longer than the longest a 16-bit length allows (PS3.5 §7.1.2; the
#: text VRs of the index have one in explicit VR) is nothing to copy.
_LONGEST_TEXT = 0xFFFF


def header_elements(
    buf: Buffer, implicit: bool, wanted: Collection[int], last_tag: int, complete: bool
) -> bytes:
    """The `wanted` top-level elements before `last_tag`, copied out as a data set
    of their own: what pydicom reads when scan_text() declines, a few hundred bytes
    whatever comes before them (a value of gigabytes, sequences nested deep).

    CutOff when the buffer ends before `last_tag` and is not the `complete` data set
    (which may itself be cut short: what it holds is kept, and FileSink._cut_short
    answers); Unscannable for what walk() cannot pass, or more than CUT_OFF_STEPS
    elements and items, or a wanted value too long for text.
    """
    kept: list[bytes] = []
    try:
        for tag, offset, at, end in walk(buf, 0, implicit, iter(range(CUT_OFF_STEPS))):
            if tag > last_tag:
                return b"".join(kept)
            if tag not in wanted or end == -1:
                continue
            if end - at > _LONGEST_TEXT:
                raise Unscannable(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) is {end - at} bytes long")
            if end > len(buf):
                raise CutOff(f"({tag >> 16:04X},{tag & 0xFFFF:04X})")
            kept.append(bytes(buf[offset:end]))
    except CutOff:
        if not complete:
            raise
    if not complete:
        raise CutOff("the header")
    return b"".join(kept)


def scan_text(
    buf: Buffer,
    at: int,
    implicit: bool,
    wanted: Mapping[int, str],
    last_tag: int,
    complete: bool = False,
    elements: list[tuple[int, int, int, int]] | None = None,
) -> dict[str, str] | None:
    """The `wanted` top-level values (tag -> name) up to `last_tag`.

    Values are plain ASCII text, padding stripped. None when the buffer ends
    before `last_tag` is passed (unless it holds the `complete` data set, whose
    last element must then end where it ends) or a wanted value is not plain
    single-valued ASCII: character sets, ISO 2022 escapes and multiple values are
    pydicom's job.

    `elements`, when given, receives what walk() yields for each top-level element
    passed, then (tag, offset, 0, 0) for the one past `last_tag` (dimse.shapes),
    or (DATA_SET_END, size, 0, 0) when DATA_SET_END was asked and reached.

    walk() inlined, for the top level only: this runs for every instance the
    archive receives (~130 elements in a CT header), and without a generator it
    takes 62 µs instead of 99.
    """
    values: dict[str, str] = {}
    size = len(buf)
    explicit_header, implicit_header = _EXPLICIT.unpack_from, _IMPLICIT.unpack_from
    long_length, header_size, wanted_name = LONG_LENGTH.unpack_from, _HEADER_SIZE.get, wanted.get
    nested_implicit = implicit
    while at + 8 <= size:
        start = at
        if implicit:
            group, element, length = implicit_header(buf, at)
            tag = group << 16 | element
            if tag > last_tag:
                break
            at += 8
        else:
            group, element, vr, length = explicit_header(buf, at)
            tag = group << 16 | element
            if tag > last_tag:
                break
            header = header_size(vr)
            if header == 12:
                if at + 12 > size:
                    return None  # the header is cut off
                (length,) = long_length(buf, at + 8)
                at += 12
                nested_implicit = vr == b"UN"  # §6.2.2: an implicit VR sequence
            elif header == 8 or (vr.isalpha() and vr.isupper()):
                at += 8
            else:
                return None  # no VR: not something to guess about
        if length == UNDEFINED_LENGTH:
            if elements is not None:
                elements.append((tag, start, at, -1))
            try:
                at = skip_items(buf, at, nested_implicit)
            except Unscannable:
                return None
            continue
        end = at + length
        if elements is not None:
            elements.append((tag, start, at, end))
        name = wanted_name(tag)
        if name is not None:
            if end > size:
                return None
            text = plain_text(bytes(buf[at:end]))
            if text is None:
                return None
            values[name] = text
        at = end
    else:  # the buffer ended before an element past last_tag
        if not complete or at != size:
            return None
        if elements is not None and last_tag == DATA_SET_END:
            elements.append((DATA_SET_END, size, 0, 0))
        return values
    if elements is not None:
        elements.append((tag, start, 0, 0))
    return values


def plain_text(raw: bytes) -> str | None:
    """A value as text, padding stripped; None unless plain single-valued ASCII."""
    if not raw.isascii() or b"\\" in raw or b"\x1b" in raw:
        return None
    return raw.decode("ascii").strip(" \0")
