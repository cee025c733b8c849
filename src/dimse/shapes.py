"""Headers that repeat one layout, read without walking each element (PS3.5 §7).

A modality's images of one series share a layout: the same elements, most of
the same length and many of the same value; a few values (UIDs, numbers, times)
change, some in length. Walking a CT header element by element (~130 of them,
dimse.elements.scan_text) was the archive's largest Python cost per instance.
Here the first two headers from a source are walked, and what changed between
them makes a Shape that reads the next ones in a few C calls per run of elements.
A header the shape does not fit is walked, and what changed joins what is known
to change. Tests check the answers against scan_text's on pydicom's test files.
Read to elements.DATA_SET_END (the archive, the sender's check), a shape covers
the whole data set, whose last element must end where it does: one cut short
fits neither the shape nor the walk.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Container, Hashable, Mapping, Sequence
from dataclasses import dataclass

from dimse.elements import (
    LONG_LENGTH,
    UNDEFINED_LENGTH,
    Unscannable,
    plain_text,
    scan_text,
    skip_items,
)

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
    wanted (whose tag is `stop`), or to the data set's end (`stop` empty), learnt
    from earlier headers to read later ones."""

    steps: tuple[_Run | _Anchor, ...]
    stop: bytes

    def match(self, buf: bytes) -> tuple[dict[str, str], int] | None:
        """scan_text()'s answer for `buf` and the offset of the element past the
        last tag wanted, or None unless `buf` has this shape.

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
                    at = skip_items(buf, at, step.nested_implicit)
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
        if self.stop:
            if at + 8 > len(buf) or not buf.startswith(self.stop, at):
                return None
        elif at != len(buf):  # elements cut off, or more of them
            return None
        return values, at


def _plain_texts(raws: Sequence[bytes]) -> list[str] | None:
    """plain_text() of each, in one pass: joined by backslashes, which the values
    then must not hold."""
    joined = b"\\".join(raws)
    if not joined.isascii() or joined.count(b"\\") != len(raws) - 1 or b"\x1b" in joined:
        return None
    return [text.strip(" \0") for text in joined.decode("ascii").split("\\")]


_SHORT_LENGTH = struct.Struct("<H")
_LONG_VALUE = 1024  # bytes


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
    undefined or long lengths) become anchors; of the `changed` tags only the
    header is compared. None when the walk ended before passing the last tag
    wanted."""
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
        # A long value (pixel data) is skipped, not sliced, compared or copied,
        # even when it repeats: as an anchor, by the length in its header.
        if end != -1 and tag not in resized and end - value <= _LONG_VALUE:
            run.append(element)
            continue
        close_run()
        long = implicit or value - offset == 12
        steps.append(
            _Anchor(
                prefix=buf[offset : offset + (4 if implicit else 6)],
                length=LONG_LENGTH if long else _SHORT_LENGTH,
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
    """scan_text() for headers that repeat the layout of earlier ones from the
    same source, by their Shape. For one thread (the event loop)."""

    def __init__(self, wanted: Mapping[int, str], last_tag: int, capacity: int = 64) -> None:
        self.wanted = wanted
        self.last_tag = last_tag
        self.capacity = capacity
        self._layouts: dict[Hashable, _Layout] = {}
        self.walked = 0  # headers walked element by element: those no shape fitted

    def scan(
        self, key: Hashable, buf: bytes, implicit: bool, complete: bool
    ) -> tuple[dict[str, str], int] | None:
        """scan_text(buf, 0, implicit, wanted, last_tag, complete) for a header from
        the source `key` names (one key, one layout, most of the time), and where
        the element past the last tag wanted starts (the end of a `complete` buf
        that holds none)."""
        layout = self._layouts.get(key)
        if layout is not None and layout.shape is not None:
            matched = layout.shape.match(buf)
            if matched is not None:
                return matched
        self.walked += 1
        elements: list[Element] = []
        values = scan_text(buf, 0, implicit, self.wanted, self.last_tag, complete, elements)
        if values is None:
            return None
        if elements and elements[-1][2:] == (0, 0):
            self._learn(key, layout, buf, implicit, elements)
            return values, elements[-1][1]
        return values, len(buf)  # complete: the data set ended before the last tag

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
