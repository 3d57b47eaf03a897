"""The parsed message model: Message -> Segment -> Field -> Repetition -> Component -> subcomponent.

HL7 v2.5 chapter 2, section 2.5 (message construction: segments, fields, components,
subcomponents, repetitions) and 2.6 (the null value ``""``). Segments keep their *raw, escaped*
field text; values are split and unescaped only when a leaf is read, so the structure is never
confused by an escaped delimiter (section 2.7).

Paths (terser-like, every number 1-based as in HL7 and ERR-2):
``SEG[(occurrence)]-field[(repetition)][-component[-subcomponent]]``, e.g. ``"PID-5-1"``,
``"PID-3(2)-1"`` (component 1 of the *second* PID-3 repetition), ``"OBX(3)-5"``. ``.`` may be used
instead of ``-``. A path without component/subcomponent reads the first leaf (component 1,
subcomponent 1), like HAPI's terser. The Python keyword ``rep=`` is 0-based (a list index).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Iterator

from .delimiters import DEFAULT_DELIMITERS, Delimiters

#: The HL7 explicit null (chapter 2, section 2.5.3): "delete the value at the receiver".
HL7_NULL = '""'

_PATH_RE = re.compile(
    r"^\s*(?:([A-Z][A-Z0-9]{2})(?:\((\d+)\))?[-.])?(\d+)(?:\((\d+)\))?(?:[-.](\d+))?(?:[-.](\d+))?\s*$")

# segments whose fields 1 and 2 are the separator and the encoding characters (section 2.5.4)
_HEADER_SEGMENTS = frozenset(("MSH", "FHS", "BHS"))


def is_null(value: str | None) -> bool:
    """True for the HL7 explicit null ``""`` (section 2.5.3)."""
    return value == HL7_NULL


@lru_cache(maxsize=4096)
def parse_path(path: str) -> tuple[str | None, int, int, int, int, int]:
    """Parse a terser-like path into (segment, occurrence, field, repetition, component, sub).

    All returned numbers are 1-based. Raises ValueError for a malformed path.
    """
    m = _PATH_RE.match(path)
    if not m:
        raise ValueError(f"invalid HL7 path {path!r} (expected e.g. 'PID-3(2)-1-2')")
    seg, occ, fld, rep, comp, sub = m.groups()
    values = (int(occ or 1), int(fld), int(rep or 1), int(comp or 1), int(sub or 1))
    if min(values[0], values[2], values[3], values[4]) < 1:
        raise ValueError(f"invalid HL7 path {path!r}: positions are 1-based")
    return (seg, *values)


class _Ctx:
    """What leaves need to unescape: delimiters and the message's character set."""

    __slots__ = ("delims", "charset")

    def __init__(self, delims: Delimiters, charset: str | None):
        self.delims = delims
        self.charset = charset


class Component:
    """One component: raw escaped text; ``subcomponents`` are unescaped (section 2.5.3.3)."""

    __slots__ = ("raw", "_ctx")

    def __init__(self, raw: str, ctx: _Ctx):
        self.raw = raw
        self._ctx = ctx

    @property
    def subcomponents(self) -> list[str]:
        """Unescaped subcomponent strings ('' for an empty one)."""
        d = self._ctx.delims
        if not self.raw:
            return []
        return [d.unescape(s, self._ctx.charset) for s in self.raw.split(d.subcomponent)]

    def subcomponent(self, n: int) -> str | None:
        """The n-th (1-based) subcomponent, unescaped, or None when empty/absent."""
        parts = self.raw.split(self._ctx.delims.subcomponent) if self.raw else []
        if n < 1 or n > len(parts) or not parts[n - 1]:
            return None
        return self._ctx.delims.unescape(parts[n - 1], self._ctx.charset) or None

    @property
    def value(self) -> str | None:
        """The first subcomponent, unescaped (None when empty)."""
        return self.subcomponent(1)

    def __repr__(self) -> str:
        return f"Component({self.raw!r})"


class Repetition:
    """One occurrence of a (possibly repeating) field (section 2.5.3.2)."""

    __slots__ = ("raw", "_ctx")

    def __init__(self, raw: str, ctx: _Ctx):
        self.raw = raw
        self._ctx = ctx

    @property
    def components(self) -> list[Component]:
        if not self.raw:
            return []
        return [Component(c, self._ctx) for c in self.raw.split(self._ctx.delims.component)]

    def component(self, n: int) -> Component:
        """The n-th (1-based) component (an empty one when absent)."""
        parts = self.raw.split(self._ctx.delims.component) if self.raw else []
        return Component(parts[n - 1] if 0 < n <= len(parts) else "", self._ctx)

    def get(self, comp: int = 1, sub: int = 1) -> str | None:
        """Unescaped leaf value at component/subcomponent (1-based), or None."""
        return self.component(comp).subcomponent(sub)

    @property
    def value(self) -> str | None:
        return self.get(1, 1)

    def __repr__(self) -> str:
        return f"Repetition({self.raw!r})"


class Field:
    """A field with its repetitions (section 2.5.3). ``raw`` is the escaped text."""

    __slots__ = ("raw", "_ctx", "_literal")

    def __init__(self, raw: str, ctx: _Ctx, literal: bool = False):
        self.raw = raw
        self._ctx = ctx
        self._literal = literal      # MSH-1 / MSH-2: never split nor unescaped

    @property
    def repetitions(self) -> list[Repetition]:
        if not self.raw:
            return []
        if self._literal:
            return [_LiteralRepetition(self.raw, self._ctx)]
        return [Repetition(r, self._ctx) for r in self.raw.split(self._ctx.delims.repetition)]

    def repetition(self, n: int = 0) -> Repetition:
        """The repetition at 0-based index ``n`` (an empty one when absent)."""
        reps = self.repetitions
        return reps[n] if 0 <= n < len(reps) else Repetition("", self._ctx)

    @property
    def value(self) -> str | None:
        """First leaf (repetition 1, component 1, subcomponent 1), unescaped."""
        return self.repetition(0).value

    @property
    def is_null(self) -> bool:
        return self.raw == HL7_NULL

    def __bool__(self) -> bool:
        return bool(self.raw)

    def __repr__(self) -> str:
        return f"Field({self.raw!r})"


class _LiteralRepetition(Repetition):
    __slots__ = ()

    @property
    def components(self) -> list[Component]:
        return [_LiteralComponent(self.raw, self._ctx)]

    def component(self, n: int) -> Component:
        return _LiteralComponent(self.raw if n == 1 else "", self._ctx)


class _LiteralComponent(Component):
    __slots__ = ()

    @property
    def subcomponents(self) -> list[str]:
        return [self.raw] if self.raw else []

    def subcomponent(self, n: int) -> str | None:
        return (self.raw or None) if n == 1 else None


class Segment:
    """One segment. ``fields[n]`` is the raw text of field n (``fields[0]`` is the segment id).

    For MSH/FHS/BHS, ``fields[1]`` is the field separator and ``fields[2]`` the encoding
    characters, so numbering matches the standard (MSH-9 is ``fields[9]``), section 2.15.9.
    """

    __slots__ = ("name", "fields", "_ctx")

    def __init__(self, name: str, fields: list[str], ctx: _Ctx):
        self.name = name
        self.fields = fields
        self._ctx = ctx

    @property
    def raw(self) -> str:
        """The segment as (escaped) text, without terminator."""
        if self.name in _HEADER_SEGMENTS and len(self.fields) > 1:
            return self.name + self.fields[1] + self.fields[1].join(self.fields[2:])
        return self._ctx.delims.field.join(self.fields)

    def __len__(self) -> int:
        """Number of the last field present (fields beyond it are empty)."""
        return len(self.fields) - 1

    def field(self, n: int) -> Field:
        """Field n (1-based); an empty Field when absent."""
        f = self.fields
        raw = f[n] if 0 < n < len(f) else ""
        return Field(raw, self._ctx, literal=(n <= 2 and self.name in _HEADER_SEGMENTS))

    def raw_field(self, n: int) -> str:
        """Raw escaped text of field n ('' when absent)."""
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def get(self, field: int | str, rep: int = 0, comp: int = 1, sub: int = 1) -> str | None:
        """Unescaped leaf value, or None when empty or absent.

        ``field`` is a number or a path ("PID-3(2)-1", or "3-1"); ``rep`` is 0-based, ``comp`` and
        ``sub`` 1-based. A path's own positions win over the keyword arguments.
        """
        if isinstance(field, str):
            _seg, _occ, field, r, comp, sub = parse_path(field)
            rep = r - 1
        f = self.fields
        if field <= 0 or field >= len(f):
            return None
        raw = f[field]
        if not raw:
            return None
        if field <= 2 and self.name in _HEADER_SEGMENTS:
            return raw if (rep == 0 and comp == 1 and sub == 1) else None
        d = self._ctx.delims
        if d.repetition in raw:
            parts = raw.split(d.repetition)
            if rep >= len(parts):
                return None
            raw = parts[rep]
        elif rep:
            return None
        if d.component in raw:
            parts = raw.split(d.component)
            if comp > len(parts):
                return None
            raw = parts[comp - 1]
        elif comp != 1:
            return None
        if d.subcomponent in raw:
            parts = raw.split(d.subcomponent)
            if sub > len(parts):
                return None
            raw = parts[sub - 1]
        elif sub != 1:
            return None
        if not raw:
            return None
        if d.escape in raw:
            return d.unescape(raw, self._ctx.charset) or None
        return raw

    def __repr__(self) -> str:
        text = self.raw
        return f"Segment({text[:60] + '...' if len(text) > 60 else text!r})"


class SegmentContainer:
    """Navigation shared by :class:`Message` and :class:`Group`."""

    __slots__ = ()
    segments: list[Segment]

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The n-th (1-based) segment with this id, or None."""
        count = 0
        for seg in self.segments:
            if seg.name == name:
                count += 1
                if count == occurrence:
                    return seg
        return None

    def segments_named(self, *names: str) -> list[Segment]:
        """All segments with one of these ids, in message order."""
        if len(names) == 1:
            name = names[0]
            return [s for s in self.segments if s.name == name]
        wanted = set(names)
        return [s for s in self.segments if s.name in wanted]

    def get(self, path: str) -> str | None:
        """Unescaped leaf value at a terser-like path (see module docstring), or None."""
        seg_name, occ, fld, rep, comp, sub = parse_path(path)
        if seg_name is None:
            raise ValueError(f"path {path!r} needs a segment id")
        seg = self.segment(seg_name, occ)
        if seg is None:
            return None
        return seg.get(fld, rep - 1, comp, sub)

    def groups(self, start: str | Iterable[str], members: Iterable[str] | None = None,
               until: Iterable[str] = ()) -> list["Group"]:
        """Split the segments into groups, each headed by a ``start`` segment.

        A group collects the segments after its head up to the next ``start`` segment. With
        ``members``, only those ids belong to a group and any other id closes it; ids in
        ``until`` always close it. Segments outside groups are skipped. E.g. for ORU^R01
        (chapter 7): ``msg.groups("OBR", members={"OBX", "NTE", "SPM", "TQ1", "CTI"})``;
        groups nest: ``for g in msg.groups("PID", until={"MSH"}): g.groups("OBR", ...)``.
        """
        starts = {start} if isinstance(start, str) else set(start)
        allowed = None if members is None else set(members)
        stop = set(until)
        result: list[Group] = []
        current: Group | None = None
        for seg in self.segments:
            name = seg.name
            if name in starts:
                current = Group(seg)
                result.append(current)
            elif current is not None:
                if name in stop or (allowed is not None and name not in allowed):
                    current = None
                else:
                    current.segments.append(seg)
        return result


class Group(SegmentContainer):
    """A head segment and the segments that belong to it (head included in ``segments``)."""

    __slots__ = ("head", "segments")

    def __init__(self, head: Segment):
        self.head = head
        self.segments = [head]

    @property
    def members(self) -> list[Segment]:
        """The segments after the head."""
        return self.segments[1:]

    def __repr__(self) -> str:
        return f"Group({self.head.name}: {' '.join(s.name for s in self.segments[1:])})"


class HeaderInfo:
    """What is known of a message's MSH: enough to route it and to acknowledge it.

    ``raw(n)`` gives MSH-n as sent (escaped), so an ACK can copy it back unchanged;
    ``message_type``, ``trigger``, ``structure``, ``control_id``, ``processing_id``, ``version``
    and ``timestamp`` are unescaped, stripped first components (None when empty), read once.
    Built by :func:`adapters.hl7v2.read_header` (never fails) or by :func:`parse_message`.
    """

    __slots__ = ("delimiters", "charset", "charset_declared", "charset_fallback", "fields", "timestamp",
                 "message_type", "trigger", "structure", "control_id", "processing_id", "version")

    def __init__(self, delimiters: Delimiters = DEFAULT_DELIMITERS, charset: str | None = None,
                 charset_declared: str | None = None, charset_fallback: bool = False,
                 fields: list[str] | None = None):
        self.delimiters = delimiters
        self.charset = charset
        self.charset_declared = charset_declared
        self.charset_fallback = charset_fallback
        self.fields = fields if fields is not None else []
        msh9 = self._components(9)
        self.message_type = msh9[0] if msh9 else None
        self.trigger = msh9[1] if len(msh9) > 1 else None
        structure = msh9[2] if len(msh9) > 2 else None
        if not structure and self.message_type and self.trigger:
            structure = f"{self.message_type}_{self.trigger}"
        self.structure = structure or self.message_type
        self.timestamp = self._first(7)
        self.control_id = self._first(10)
        self.processing_id = self._first(11)
        self.version = self._first(12)

    def raw(self, n: int) -> str:
        """MSH-n as sent ('' when absent)."""
        return self.fields[n] if 0 < n < len(self.fields) else ""

    def _components(self, n: int) -> list[str | None]:
        raw = self.raw(n)
        if not raw:
            return []
        d = self.delimiters
        if d.is_plain(raw):
            return [raw.strip() or None]  # MSH-7, -10, -11, -12: one plain value
        if d.repetition in raw:
            raw = raw.split(d.repetition, 1)[0]
        out: list[str | None] = []
        for comp in raw.split(d.component):
            if d.subcomponent in comp:
                comp = comp.split(d.subcomponent, 1)[0]
            if d.escape in comp:
                comp = d.unescape(comp)
            out.append(comp.strip() or None)
        return out

    def _first(self, n: int) -> str | None:
        comps = self._components(n)
        return comps[0] if comps else None

    @property
    def sending_application(self) -> str:
        """MSH-3 as sent (the whole HD)."""
        return self.raw(3)

    @property
    def sending_facility(self) -> str:
        """MSH-4 as sent (the whole HD)."""
        return self.raw(4)

    @property
    def receiving_application(self) -> str:
        return self.raw(5)

    @property
    def receiving_facility(self) -> str:
        return self.raw(6)

    def __repr__(self) -> str:
        return (f"HeaderInfo({self.message_type}^{self.trigger} {self.control_id!r}, version={self.version!r}, "
                f"charset={self.charset!r})")


class Message(SegmentContainer):
    """A parsed HL7 v2 message (chapter 2, section 2.5).

    Header values (``message_type`` ...) come from MSH (section 2.15.9). ``charset`` is the codec
    actually used to decode the bytes, ``charset_declared`` the raw first MSH-18 repetition,
    ``charset_fallback`` whether the codec differs from the declaration / override.
    """

    __slots__ = ("segments", "header", "raw", "text", "_ctx")

    def __init__(self, segments: list[Segment], header: HeaderInfo, raw: bytes | None, text: str, ctx: _Ctx):
        self.segments = segments
        self.header = header
        self.raw = raw
        self.text = text
        self._ctx = ctx

    # header shortcuts
    @property
    def msh(self) -> Segment:
        return self.segments[0]

    @property
    def delimiters(self) -> Delimiters:
        return self._ctx.delims

    @property
    def charset(self) -> str | None:
        return self.header.charset

    @property
    def charset_declared(self) -> str | None:
        return self.header.charset_declared

    @property
    def charset_fallback(self) -> bool:
        return self.header.charset_fallback

    @property
    def version(self) -> str | None:
        return self.header.version

    @property
    def message_type(self) -> str | None:
        return self.header.message_type

    @property
    def trigger(self) -> str | None:
        return self.header.trigger

    @property
    def structure(self) -> str | None:
        return self.header.structure

    @property
    def control_id(self) -> str | None:
        return self.header.control_id

    @property
    def processing_id(self) -> str | None:
        return self.header.processing_id

    @property
    def sending_application(self) -> str | None:
        """MSH-3 HD.1 (namespace id), unescaped; the whole HD is ``msg.msh.field(3)``."""
        return self.msh.get(3)

    @property
    def sending_facility(self) -> str | None:
        """MSH-4 HD.1 (namespace id), unescaped; the whole HD is ``msg.msh.field(4)``."""
        return self.msh.get(4)

    @property
    def receiving_application(self) -> str | None:
        return self.msh.get(5)

    @property
    def receiving_facility(self) -> str | None:
        return self.msh.get(6)

    @property
    def timestamp(self) -> str | None:
        """MSH-7 as sent (first component); parse with :func:`adapters.hl7v2.parse_dtm`."""
        return self.header.timestamp

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def __repr__(self) -> str:
        return (f"Message({self.message_type}^{self.trigger} {self.control_id!r}, "
                f"{len(self.segments)} segments, charset={self.charset})")
