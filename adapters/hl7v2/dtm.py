"""HL7 DTM / TS / DT values and their FHIR date, dateTime and instant renderings.

HL7 v2.5 chapter 2A, section 2A.3.22 (DTM: ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``),
2A.3.21 (DT) and 2A.3.72 (TS: DTM plus a deprecated degree-of-precision component: pass only the
first component). FHIR string formats (datatypes.html#date, #dateTime, #instant) are produced as
text only; no FHIR model is imported here.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .errors import DATA_TYPE_ERROR, HL7ParseError

_DTM_RE = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,4}))?)?)?)?)?)?"
    r"(?:([+-])(\d{2})(\d{2}))?$")

#: precisions, coarsest first
PRECISIONS = ("year", "month", "day", "hour", "minute", "second", "fraction")


@dataclass(frozen=True, slots=True)
class HL7DateTime:
    """A parsed DTM with the precision it was sent with (fraction kept as its digit string)."""

    year: int
    month: int | None = None
    day: int | None = None
    hour: int | None = None
    minute: int | None = None
    second: int | None = None
    fraction: str | None = None          # digits after the decimal point, e.g. "1234"
    offset_minutes: int | None = None    # +0800 -> 480; None when the value carries no offset

    @property
    def precision(self) -> str:
        """One of :data:`PRECISIONS`."""
        for name, value in (("fraction", self.fraction), ("second", self.second), ("minute", self.minute),
                            ("hour", self.hour), ("day", self.day), ("month", self.month)):
            if value is not None:
                return name
        return "year"

    @property
    def has_time(self) -> bool:
        return self.hour is not None

    def _offset_text(self, default_offset: str | None) -> str:
        if self.offset_minutes is not None:
            sign = "-" if self.offset_minutes < 0 else "+"
            hours, minutes = divmod(abs(self.offset_minutes), 60)
            return f"{sign}{hours:02d}:{minutes:02d}"
        if default_offset is None:
            return ""
        return _normalise_offset(default_offset)

    def to_fhir_date(self) -> str:
        """FHIR ``date``: ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD`` (time is dropped)."""
        text = f"{self.year:04d}"
        if self.month is not None:
            text += f"-{self.month:02d}"
            if self.day is not None:
                text += f"-{self.day:02d}"
        return text

    def to_fhir_datetime(self, default_offset: str | None = None) -> str:
        """FHIR ``dateTime`` keeping the precision: date-only values stay ``YYYY[-MM[-DD]]``.

        FHIR needs seconds once a time is given, so hour/minute precision is padded with
        ``:00``. FHIR also requires an offset with a time: the value's own offset is used, else
        ``default_offset`` (the sending facility's zone, e.g. ``"+08:00"``); with neither, the
        string has no offset and the caller must decide (it is then not valid FHIR).
        """
        text = self.to_fhir_date()
        if self.hour is None:
            return text
        text += f"T{self.hour:02d}:{self.minute or 0:02d}:{self.second or 0:02d}"
        if self.fraction:
            text += "." + self.fraction
        return text + self._offset_text(default_offset)

    def to_fhir_instant(self, default_offset: str | None = None) -> str:
        """FHIR ``instant`` (``YYYY-MM-DDThh:mm:ss[.f]+zz:zz``); missing parts are zero-filled.

        Raises ValueError when neither the value nor ``default_offset`` gives an offset.
        """
        offset = self._offset_text(default_offset)
        if not offset:
            raise ValueError("a FHIR instant needs a time zone offset")
        text = (f"{self.year:04d}-{self.month or 1:02d}-{self.day or 1:02d}"
                f"T{self.hour or 0:02d}:{self.minute or 0:02d}:{self.second or 0:02d}")
        if self.fraction:
            text += "." + self.fraction
        return text + offset

    def to_datetime(self, default_offset: str | None = None) -> datetime:
        """A Python datetime (missing parts filled with their minimum; naive without offset)."""
        micro = int((self.fraction or "0").ljust(6, "0")[:6])
        tz = None
        offset = self._offset_text(default_offset)
        if offset:
            sign = -1 if offset[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        return datetime(self.year, self.month or 1, self.day or 1, self.hour or 0, self.minute or 0,
                        self.second or 0, micro, tzinfo=tz)


def _normalise_offset(text: str) -> str:
    text = text.strip()
    if text in ("Z", "z", "+00:00", "+0000"):
        return "+00:00" if text != "Z" else "Z"
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text)
    if not m:
        raise ValueError(f"invalid UTC offset {text!r} (expected +hh:mm)")
    return f"{m.group(1)}{m.group(2)}:{m.group(3)}"


def parse_dtm(value: str) -> HL7DateTime:
    """Parse an HL7 DTM/TS/DT string (section 2A.3.22).

    Raises HL7ParseError 102 (data type error) for anything that is not a valid DTM: wrong
    shape, impossible calendar values (month 13, 30 February, hour 24) or an offset beyond
    +/-14:00.
    """
    m = _DTM_RE.match(value.strip()) if value else None
    if not m:
        raise HL7ParseError(DATA_TYPE_ERROR, f"invalid HL7 date/time {value!r}")
    year, month, day, hour, minute, second, fraction, sign, oh, om = m.groups()
    y = int(year)
    mo = int(month) if month else None
    d = int(day) if day else None
    h = int(hour) if hour else None
    mi = int(minute) if minute else None
    s = int(second) if second else None
    if (mo is not None and not 1 <= mo <= 12) or (d is not None and not 1 <= d <= calendar.monthrange(y, mo)[1]) \
            or (h is not None and h > 23) or (mi is not None and mi > 59) or (s is not None and s > 59):
        raise HL7ParseError(DATA_TYPE_ERROR, f"invalid HL7 date/time {value!r}")
    offset = None
    if sign:
        if int(oh) > 14 or int(om) > 59:
            raise HL7ParseError(DATA_TYPE_ERROR, f"invalid UTC offset in {value!r}")
        offset = (int(oh) * 60 + int(om)) * (-1 if sign == "-" else 1)
    return HL7DateTime(y, mo, d, h, mi, s, fraction, offset)


def format_dtm(moment: datetime, precision: str = "second") -> str:
    """Render a datetime as HL7 DTM (used for MSH-7 of ACKs); aware datetimes get ``+ZZZZ``."""
    fmt = {"year": "%Y", "month": "%Y%m", "day": "%Y%m%d", "hour": "%Y%m%d%H", "minute": "%Y%m%d%H%M",
           "second": "%Y%m%d%H%M%S"}.get(precision, "%Y%m%d%H%M%S")
    text = moment.strftime(fmt)
    if precision == "fraction":
        text += f".{moment.microsecond // 100:04d}"
    if moment.tzinfo is not None and precision not in ("year", "month", "day"):
        text += moment.strftime("%z")
    return text
