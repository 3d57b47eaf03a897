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


def test_other_types_have_no_python_check():
    for rtype, path, key in (("Patient", (), "birthDate"), ("Observation", (), "issued"),
                             ("Observation", ("valueQuantity",), "value"), ("Patient", (), "active")):
        cls, name = _element(rtype, path, key)
        assert validation._plain_string_check(TypeAdapter(cls.model_fields[name].annotation).core_schema) is None
