"""The Python checks of the plain string types (``hub.fhir.validation._plain_string_check``): the
cached validation accepts a leaf with them instead of pydantic, so each must accept only what
pydantic's own validator of the element accepts: exactly what it accepts (whitespace as Rust's
regex engine sees it, anchors, lengths), text with a lone surrogate being left to pydantic."""

from __future__ import annotations

import itertools

import pytest
from pydantic import TypeAdapter, ValidationError

from hub.fhir import validation
from hub.fhir.validation import model_class

# (resource type, element path, JSON key): one element of each plain string type, and a list of strings
ELEMENTS = [("Observation", (), "id"), ("Observation", ("subject",), "reference"),
            ("Observation", ("code", "coding"), "system"), ("Observation", ("code", "coding"), "code"),
            ("Patient", ("identifier",), "value"), ("Patient", ("name",), "given"),
            ("Patient", ("address",), "line"), ("Observation", ("code", "coding"), "version")]

#: every character Rust's regex engine or Python's takes for whitespace, and others
_SPACES = ["\t", "\n", "\x0b", "\x0c", "\r", " ", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680",
           "\u180e", "\u2000", "\u2005", "\u200a", "\u200b", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
           "\ufeff"]
_PIECES = ["", "a", "A-1.b", "\x00", "\x7f", "-", ".", "a b", "_", "/", "é", "血", "\ud800", "\U0001f600"] + _SPACES
SAMPLES = sorted({a + b + c for a, b, c in itertools.product(_PIECES, repeat=3)}) + [
    "x" * 64, "x" * 255, "x" * 256, "Patient/" + "f" * 40, "http://loinc.org", "718-7", "final", "a\n"]


def _element(rtype: str, path: tuple, key: str):
    cls = model_class(rtype)
    for step in path:
        cls = validation._element_class(cls.model_fields[validation._field_names(cls)[step]].annotation)
    return cls, validation._field_names(cls)[key]


def _pydantic_accepts(adapter, value) -> bool:
    try:
        return adapter.validate_python(value) == value
    except (ValidationError, ValueError, TypeError):
        return False


@pytest.mark.parametrize("rtype,path,key", ELEMENTS)
def test_a_string_the_python_check_accepts_pydantic_accepts_unchanged(rtype, path, key):
    cls, name = _element(rtype, path, key)
    adapter = TypeAdapter(cls.model_fields[name].annotation)
    check = validation._plain_string_check(adapter.core_schema)
    assert check is not None, adapter.core_schema  # these types are the plain string ones
    is_list = adapter.core_schema["schema"]["type"] == "list"
    values = [[s] for s in SAMPLES] + [[s, "b"] for s in SAMPLES[:200]] if is_list else SAMPLES
    for value in values:
        surrogate = any(0xD800 <= ord(c) <= 0xDFFF for x in (value if is_list else [value]) for c in x)
        # the same verdict as pydantic's; text with a lone surrogate is left to pydantic
        assert check(value) == (not surrogate and _pydantic_accepts(adapter, value)), (rtype, path, key, value)
    for everyday in ("final", "718-7", "a1.b-2"):
        assert check([everyday] if is_list else everyday)


def test_other_types_have_no_plain_string_check():
    for rtype, path, key in (("Patient", (), "birthDate"), ("Observation", (), "issued"),
                             ("Observation", ("valueQuantity",), "value"), ("Patient", (), "active")):
        cls, name = _element(rtype, path, key)
        assert validation._plain_string_check(TypeAdapter(cls.model_fields[name].annotation).core_schema) is None


def _temporal_samples() -> list[str]:
    """Dates and times around every rule of the FHIR patterns and the calendar: partial dates,
    year 0000, month 13, 29 February in leap and common years, 31 of a 30-day month, hour 24,
    leap seconds, fractions of 1 to 9 digits, zones up to and past ±14:00, no zone."""
    out = ["", " 2024", "2024-01-01 ", "2024-1-1", "２０２４", "2024-01-01T10:00Z", "2024-01-01T10:00:00+0800",
           "2024-01-01T10:00:00", "2024-01-01t10:00:00Z"]
    for y, m, d in itertools.product(("0001", "1900", "2000", "2023", "2024", "9999", "0000"),
                                     ("01", "02", "04", "12", "13", "00"),
                                     ("", "01", "28", "29", "30", "31", "32", "00")):
        day = f"{y}-{m}" + (f"-{d}" if d else "")
        out += [y, f"{y}-{m}", day]
        if d:
            for t, z in itertools.product(("T00:00:00", "T23:59:59", "T23:59:60", "T24:00:00", "T12:30:00.5",
                                           "T12:30:00.123", "T12:30:00.123456", "T12:30:00.1234567",
                                           "T12:30:00.123456789"),
                                          ("Z", "+08:00", "-05:00", "+14:00", "-14:00", "+14:01", "+13:59", "")):
                out.append(day + t + z)
    return out


@pytest.mark.parametrize("rtype,path,key", [("Patient", (), "birthDate"), ("Observation", (), "effectiveDateTime"),
                                            ("Observation", (), "issued"), ("Observation", ("extension",), "valueInstant")])
def test_a_date_or_time_the_python_check_accepts_pydantic_accepts(rtype, path, key):
    """date, dateTime and instant: the Python check accepts only what the element's validator
    accepts (what it leaves to pydantic, pydantic judges), and takes the everyday forms."""
    cls, name = _element(rtype, path, key)
    annotation = cls.model_fields[name].annotation
    adapter = TypeAdapter(annotation)
    check = validation._temporal_check(annotation)
    assert check is not None
    taken = 0
    for value in _temporal_samples():
        if check(value):
            taken += 1
            try:
                adapter.validate_python(value)
            except (ValidationError, ValueError, TypeError):
                pytest.fail(f"{rtype}.{key}: {value!r} taken by the Python check, refused by pydantic")
    assert taken > 500
    everyday = {"birthDate": "1987-06-05", "effectiveDateTime": "2026-12-01T11:00:00+08:00",
                "issued": "2026-12-01T13:59:00.123+08:00", "valueInstant": "2026-12-01T05:59:00Z"}[key]
    assert check(everyday)
    refused = ("2023-02-29", "2024-04-31") if key == "birthDate" else (
        "2023-02-29T10:00:00Z", "2024-04-31T10:00:00+08:00", "2024-01-01T23:59:60Z", "2024-01-01T10:00:00")
    for value in refused:  # not dates, or left to pydantic (a leap second), or no zone
        assert not check(value), value


def test_a_number_the_decimal_check_accepts_pydantic_accepts():
    """decimal: the Python check says yes exactly where the element's validator accepts a number
    (an int or a float whose text matches the type's pattern): never for a bool, NaN or an
    infinity; strings are left to pydantic."""
    import math
    import random

    cls, name = _element("Observation", ("valueQuantity",), "value")
    annotation = cls.model_fields[name].annotation
    adapter = TypeAdapter(annotation)
    check = validation._decimal_check(annotation)
    assert check is not None and validation._decimal_check(model_class("Patient").model_fields["gender"].annotation) is None
    rnd = random.Random(7)
    numbers = [0, 1, -1, 2**31, 2**70, -(10**40), 0.0, -0.0, 1.5, 9.8, 1e308, 1e-320, 5e-324, 1e22, 1e16,
               float("nan"), float("inf"), -float("inf"), True, False]
    numbers += [rnd.uniform(-1e6, 1e6) for _ in range(500)] + [rnd.randint(-10**20, 10**20) for _ in range(500)]
    numbers += [math.ldexp(rnd.random(), rnd.randint(-1070, 1020)) for _ in range(500)]
    for value in numbers + ["1.5", "x", None, [1.5]]:
        try:
            adapter.validate_python(value)
            accepted = True
        except (ValidationError, ValueError, TypeError):
            accepted = False
        if type(value) in (int, float):
            assert check(value) == accepted, value
        else:
            assert not check(value), value
