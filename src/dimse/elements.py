"""Data elements scanned in place (PS3.5 §7), for the per-instance paths.

pydicom reads data sets well, but at ~1 ms per CT header here, holding the GIL
throughout, it was the archive's largest cost per instance (and the event loop
waited for the GIL meanwhile). Both hot paths need a few top-level text values
from the first bytes of a Little Endian encoding; this scanner reads those and
nothing else. Anything it does not understand makes it give up, and the caller
falls back to pydicom; tests compare the two on pydicom's own test files.
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Callable, Container, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from dimse.sop_classes import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
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

_IMPLICIT = struct.Struct("<HHI")  # tag, 32-bit length; items in any encoding
_EXPLICIT = struct.Struct("<HH2sH")  # tag, VR, 16-bit length
_LONG_LENGTH = struct.Struct("<I")


#: Deflated, implicit VR, little endian (PS3.5 §A.1-A.5).
_NATIVE_ENCODINGS = {
    IMPLICIT_VR_LITTLE_ENDIAN: (False, True, True),
    EXPLICIT_VR_LITTLE_ENDIAN: (False, False, True),
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: (True, False, True),
    EXPLICIT_VR_BIG_ENDIAN: (False, False, False),
}


@functools.lru_cache(maxsize=64)
def encoding(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """Deflated, implicit VR, little endian. ValueError for a UID that is not a
    transfer syntax. pydicom is asked about the compressed syntaxes only: cached,
    as it validates a UID at each call."""
    native = _NATIVE_ENCODINGS.get(transfer_syntax)
    if native is not None:
        return native
    from pydicom.uid import UID

    syntax = UID(transfer_syntax)
    return syntax.is_deflated, syntax.is_implicit_VR, syntax.is_little_endian


class Unscannable(Exception):
    """The bytes end early or hold something this scanner leaves to pydicom."""


Buffer = bytes | bytearray | memoryview


def walk(buf: Buffer, at: int, implicit: bool) -> Iterator[tuple[int, int, int, int]]:
    """(tag, offset, value offset, value end) of each element from `at` at its level.

    An element of undefined length (PS3.5 §7.5.2: a sequence, or encapsulated
    pixel data) yields end -1 and is skipped when the caller asks for the next
    one. A defined length may reach past the buffer: the caller checks `end`.
    Stops at the end of the buffer, or after yielding an item delimiter.
    """
    size = len(buf)
    # Bound methods in locals: this loop runs ~130 times per CT header received.
    implicit_header, explicit_header = _IMPLICIT.unpack_from, _EXPLICIT.unpack_from
    long_length = _LONG_LENGTH.unpack_from
    while at < size:
        if at + 8 > size:
            raise Unscannable("element header cut off")
        offset = at
        un = False
        if implicit:
            group, element, length = implicit_header(buf, at)
            at += 8
        else:
            group, element, vr, length = explicit_header(buf, at)
            header = _HEADER_SIZE.get(vr)
            if group == 0xFFFE:  # items and delimiters have no VR (§7.5)
                (length,) = long_length(buf, at + 4)
                at += 8
            elif header == 12:
                if at + 12 > size:
                    raise Unscannable("element header cut off")
                (length,) = long_length(buf, at + 8)
                at += 12
                un = vr == b"UN"
            elif header == 8 or (vr.isalpha() and vr.isupper()):
                at += 8
            else:
                raise Unscannable(f"no VR at {at}")
        tag = group << 16 | element
        if length == UNDEFINED_LENGTH:
            yield tag, offset, at, -1
            # §6.2.2: an undefined-length UN holds an implicit VR sequence.
            at = _skip_items(buf, at, implicit or un)
        else:
            yield tag, offset, at, at + length
            at += length
        if tag == ITEM_END:
            return


def _skip_items(buf: Buffer, at: int, implicit: bool) -> int:
    """The offset past a sequence of undefined length (PS3.5 §7.5.2)."""
    while True:
        if at + 8 > len(buf):
            raise Unscannable("sequence cut off")
        group, element, length = _IMPLICIT.unpack_from(buf, at)
        tag = group << 16 | element
        at += 8
        if tag == SEQUENCE_END:
            return at
        if tag != ITEM:
            raise Unscannable(f"not an item in a sequence at {at - 8}")
        if length != UNDEFINED_LENGTH:
            at += length
            continue
        for tag, _, _, end in walk(buf, at, implicit):
            if tag == ITEM_END:
                at = end
                break
        else:
            raise Unscannable("item cut off")


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
    before `last_tag` is passed (unless it holds the `complete` data set) or a
    wanted value is not plain single-valued ASCII: character sets, ISO 2022
    escapes and multiple values are pydicom's job.

    `elements`, when given, receives what walk() yields for each top-level element
    passed, then (tag, offset, 0, 0) for the one past `last_tag` (HeaderShapes).

    walk() inlined, for the top level only: this runs for every instance the
    archive receives (~130 elements in a CT header), and without a generator it
    takes 62 µs instead of 99.
    """
    values: dict[str, str] = {}
    size = len(buf)
    explicit_header, implicit_header = _EXPLICIT.unpack_from, _IMPLICIT.unpack_from
    long_length, header_size, wanted_name = _LONG_LENGTH.unpack_from, _HEADER_SIZE.get, wanted.get
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
                at = _skip_items(buf, at, nested_implicit)
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
    else:
        return values if complete and at == size else None
    if elements is not None:
        elements.append((tag, start, 0, 0))
    return values


def plain_text(raw: bytes) -> str | None:
    """A value as text, padding stripped; None unless plain single-valued ASCII."""
    if not raw.isascii() or b"\\" in raw or b"\x1b" in raw:
        return None
    return raw.decode("ascii").strip(" \0")


# --- headers that repeat one layout ---------------------------------------------------

Element = tuple[int, int, int, int]  # tag, offset, value offset, end (-1: undefined length)


@dataclass(frozen=True)
class _Run:
    """Consecutive elements of the same length in every header of a layout: their
    headers, and their values where those did not change, are compared, and the
    values wanted sliced, by a few C calls."""

    size: int
    compared: Callable[[bytes], tuple[bytes, ...]]  # the compared spans, in the run
    expected: bytes  # those spans, joined
    values: Callable[[bytes], tuple[bytes, ...]] | None  # each wanted value, in the run
    names: tuple[str, ...]


@dataclass(frozen=True)
class _Anchor:
    """An element read on its own: its length varies, or is undefined."""

    prefix: bytes  # its tag, and VR when explicit, as encoded
    length: struct.Struct
    length_at: int
    header_size: int
    name: str | None
    nested_implicit: bool  # for an undefined length (§6.2.2)


@dataclass(frozen=True)
class Shape:
    """Where the elements of a header lie, up to the first one past the last tag
    wanted (whose tag is `stop`), learnt from earlier headers to read later ones."""

    steps: tuple[_Run | _Anchor, ...]
    stop: bytes

    def match(self, buf: bytes) -> dict[str, str] | None:
        """scan_text()'s answer for `buf`, or None unless `buf` has this shape.

        With each run's compared spans equal (element headers included) and each
        anchor's tag and VR equal, a walk of `buf` would pass the same elements
        at the same offsets: the values are where the shape says.
        """
        values: dict[str, str] = {}
        at = 0
        for step in self.steps:
            if type(step) is _Run:
                chunk = buf[at : at + step.size]
                if b"".join(step.compared(chunk)) != step.expected:
                    return None
                if step.values is not None:
                    texts = _plain_texts(step.values(chunk)[:-1])  # without _getter's extra
                    if texts is None:
                        return None
                    values.update(zip(step.names, texts, strict=True))
                at += step.size
                continue
            assert isinstance(step, _Anchor)
            if not buf.startswith(step.prefix, at) or at + step.header_size > len(buf):
                return None
            (length,) = step.length.unpack_from(buf, at + step.length_at)
            at += step.header_size
            if length == UNDEFINED_LENGTH:
                try:
                    at = _skip_items(buf, at, step.nested_implicit)
                except Unscannable:
                    return None
                continue
            if step.name is not None:
                if at + length > len(buf):
                    return None
                text = plain_text(buf[at : at + length])
                if text is None:
                    return None
                values[step.name] = text
            at += length
        if at + 8 > len(buf) or not buf.startswith(self.stop, at):
            return None
        return values


def _plain_texts(raws: Sequence[bytes]) -> list[str] | None:
    """plain_text() of each, in one pass: joined by backslashes, which the values
    then must not hold."""
    joined = b"\\".join(raws)
    if not joined.isascii() or joined.count(b"\\") != len(raws) - 1 or b"\x1b" in joined:
        return None
    return [text.strip(" \0") for text in joined.decode("ascii").split("\\")]


_SHORT_LENGTH = struct.Struct("<H")


def _getter(spans: list[tuple[int, int]]) -> Callable[[bytes], tuple[bytes, ...]]:
    """itemgetter of the spans' slices and one empty slice: a tuple whatever the
    number of spans (the empty slice joins to nothing)."""
    return operator.itemgetter(*(slice(start, end) for start, end in spans), slice(0, 0))


def learn_shape(
    buf: bytes,
    implicit: bool,
    elements: Sequence[Element],
    wanted: Mapping[int, str],
    resized: Container[int],
    changed: Container[int],
) -> Shape | None:
    """The shape of `buf` from scan_text()'s `elements`. The `resized` tags (and
    undefined lengths) become anchors; of the `changed` tags only the header is
    compared. None when the walk ended before passing the last tag wanted."""
    if not elements or elements[-1][2:] != (0, 0):
        return None
    steps: list[_Run | _Anchor] = []
    run: list[Element] = []

    def close_run() -> None:
        if not run:
            return
        base = run[0][1]
        spans: list[tuple[int, int]] = []
        for tag, offset, value, end in run:
            stop = value if tag in changed else end
            if spans and spans[-1][1] == offset:  # contiguous: one slice
                spans[-1] = (spans[-1][0], stop)
            else:
                spans.append((offset, stop))
        named = [(wanted[tag], value, end) for tag, _, value, end in run if tag in wanted]
        steps.append(
            _Run(
                size=run[-1][3] - base,
                compared=_getter([(start - base, end - base) for start, end in spans]),
                expected=b"".join(buf[start:end] for start, end in spans),
                values=_getter([(value - base, end - base) for _, value, end in named])
                if named
                else None,
                names=tuple(name for name, _, _ in named),
            )
        )
        run.clear()

    for element in elements[:-1]:
        tag, offset, value, end = element
        if end != -1 and tag not in resized:
            run.append(element)
            continue
        close_run()
        long = implicit or value - offset == 12
        steps.append(
            _Anchor(
                prefix=buf[offset : offset + (4 if implicit else 6)],
                length=_LONG_LENGTH if long else _SHORT_LENGTH,
                length_at=value - offset - (4 if long else 2),
                header_size=value - offset,
                name=wanted.get(tag),
                nested_implicit=implicit or buf[offset + 4 : offset + 6] == b"UN",
            )
        )
    close_run()
    stop = elements[-1][1]
    return Shape(tuple(steps), buf[stop : stop + 4])


@dataclass
class _Layout:
    """What HeaderShapes knows of one source's headers."""

    shape: Shape | None
    last: dict[int, tuple[bytes, bytes]]  # the last header walked: tag -> header, value
    resized: set[int]  # tags whose length has changed between headers
    changed: set[int]  # tags whose value has changed


class HeaderShapes:
    """scan_text() for headers that repeat the layout of earlier ones.

    A modality's images of one series share a layout: the same elements, most
    of the same length and many of the same value; a few values (UIDs, numbers,
    times) change, some in length. Walking a CT header element by element (~130
    of them) was the archive's largest Python cost per instance. Here the first
    two headers from a source are walked, and what changed between them makes a
    Shape that reads the next ones in a few C calls per run of elements; a header
    it does not fit is walked, and what changed joins what is known to change.
    For one thread (the event loop).
    """

    def __init__(self, wanted: Mapping[int, str], last_tag: int, capacity: int = 64) -> None:
        self.wanted = wanted
        self.last_tag = last_tag
        self.capacity = capacity
        self._layouts: dict[Hashable, _Layout] = {}

    def scan(
        self, key: Hashable, buf: bytes, implicit: bool, complete: bool
    ) -> dict[str, str] | None:
        """scan_text(buf, 0, implicit, wanted, last_tag, complete) for a header from
        the source `key` names (one key, one layout, most of the time)."""
        layout = self._layouts.get(key)
        if layout is not None and layout.shape is not None:
            values = layout.shape.match(buf)
            if values is not None:
                return values
        elements: list[Element] = []
        values = scan_text(buf, 0, implicit, self.wanted, self.last_tag, complete, elements)
        if values is not None:
            self._learn(key, layout, buf, implicit, elements)
        return values

    def _learn(
        self,
        key: Hashable,
        layout: _Layout | None,
        buf: bytes,
        implicit: bool,
        elements: list[Element],
    ) -> None:
        last = {
            tag: (buf[offset:value], buf[value:end] if end != -1 else b"")
            for tag, offset, value, end in elements[:-1]
        }
        if layout is None:  # the first header: nothing to compare with yet
            if len(self._layouts) >= self.capacity:
                del self._layouts[next(iter(self._layouts))]  # the oldest learnt
            self._layouts[key] = _Layout(None, last, set(), set())
            return
        for tag, (header, value) in last.items():
            before = layout.last.get(tag)
            if before is not None and before[0] != header:
                layout.resized.add(tag)
            elif before is not None and before[1] != value:
                layout.changed.add(tag)
        layout.last = last
        layout.shape = learn_shape(
            buf, implicit, elements, self.wanted, layout.resized, layout.changed
        )
