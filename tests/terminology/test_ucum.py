"""UCUM parsing, validation, exact conversion, canonical form and local unit spellings."""

from decimal import Decimal

import pytest

from terminology import ucum

LAB_UNITS = ["mmol/L", "mg/dL", "g/L", "10*9/L", "10*12/L", "%", "U/L", "umol/L", "fL", "pg", "mm[Hg]",
             "/[HPF]", "{ratio}", "s", "min", "h", "d", "wk", "mo", "a", "kg", "g", "cm", "m", "mL", "L",
             "ng/mL", "ug/L", "m[IU]/mL", "[IU]/L", "meq/L", "10*3/uL", "/nL", "kg/m2", "mmol/mol",
             "mL/min/{1.73_m2}", "g/(24.h)", "cm[H2O]", "Cel", "1", "mg%", "{cells}/uL", "10*3{cells}/uL",
             "kPa", "U/mL", "nmol/L", "pmol/L", "mosm/kg", "[arb'U]/mL", "mm/h", "/min", "[CFU]/mL"]


@pytest.mark.parametrize("unit", LAB_UNITS)
def test_lab_units_are_valid(unit):
    assert ucum.is_valid(unit)


@pytest.mark.parametrize("unit", ["mg/DL", "mIU/mL", "IU/L", "10^9/L x", "mmol/l ", "", "da", "kmin", "m{a{b}}",
                                  "(mg", "mg/", "/", "{abc", "毫克", "%/", "g..L"])
def test_invalid_units(unit):
    assert not ucum.is_valid(unit)


@pytest.mark.parametrize("value, source, target, expected", [
    ("100", "mg/dL", "g/L", "1"),
    ("100", "mg/dL", "mg/L", "1000"),
    ("1.5", "g/L", "mg/dL", "150"),
    ("5.5", "mmol/L", "umol/L", "5500"),
    ("88.4", "umol/L", "mmol/L", "0.0884"),
    ("6.5", "10*9/L", "10*3/uL", "6.5"),
    ("6.5", "10*9/L", "/nL", "6.5"),
    ("4.52", "10*12/L", "10*6/uL", "4.52"),
    ("250", "mL", "L", "0.25"),
    ("1.25", "kg", "g", "1250"),
    ("120", "mm[Hg]", "kPa", "15.99864"),
    ("10", "m[IU]/mL", "[IU]/L", "10"),
    ("2", "h", "min", "120"),
    ("1", "wk", "d", "7"),
    ("1", "a", "d", "365.25"),
    ("1", "mo", "d", "30.4375"),
    ("37", "Cel", "[degF]", "98.6"),
    ("37", "Cel", "K", "310.15"),
])
def test_convert_is_exact(value, source, target, expected):
    result = ucum.convert(Decimal(value), source, target)
    assert result == Decimal(expected)
    assert str(result) == expected


def test_convert_accepts_float_and_int_without_binary_noise():
    assert str(ucum.convert(0.1, "g", "mg")) == "100"
    assert str(ucum.convert(3, "L", "mL")) == "3000"


@pytest.mark.parametrize("source, target", [("mg/dL", "mmol/L"), ("mmol/L", "10*9/L"), ("g", "mL"),
                                            ("[IU]/L", "U/L"), ("%", "mmol/mol/L")])
def test_convert_across_dimensions_is_refused(source, target):
    with pytest.raises(ucum.IncommensurableUnits, match="cannot convert"):
        ucum.convert(Decimal("1"), source, target)


def test_mass_to_molar_refusal_explains_the_molar_mass():
    with pytest.raises(ucum.IncommensurableUnits, match="molar mass"):
        ucum.convert(Decimal("100"), "mg/dL", "mmol/L")


def test_convert_unknown_unit_raises_invalid_unit():
    with pytest.raises(ucum.InvalidUnit):
        ucum.convert(1, "mg/DL", "g/L")


@pytest.mark.parametrize("value, unit, expected", [
    ("5.5", "mmol/L", ("5.5", "mol.m-3")),
    ("120", "mg/dL", ("1200", "g.m-3")),
    ("1.2", "g/L", ("1200", "g.m-3")),
    ("7", "10*9/L", ("7000000000000", "m-3")),
    ("7", "10*3/uL", ("7000000000000", "m-3")),
    ("37", "Cel", ("310.15", "K")),
    ("42", "%", ("0.42", "1")),
    ("3", "{ratio}", ("3", "1")),
    ("5", "[IU]/L", ("5000", "[IU].m-3")),
])
def test_canonical_form(value, unit, expected):
    number, canonical_unit = ucum.canonical(Decimal(value), unit)
    assert (str(number), canonical_unit) == expected


def test_same_quantity_in_different_units_has_one_canonical_form():
    assert ucum.canonical(Decimal("100"), "mg/dL") == ucum.canonical(Decimal("1"), "g/L")


def test_commensurable():
    assert ucum.commensurable("mg/dL", "g/L")
    assert not ucum.commensurable("mg/dL", "mmol/L")
    assert not ucum.commensurable("mg/dL", "nonsense")


@pytest.mark.parametrize("text, expected", [
    ("10^9/L", "10*9/L"), ("10~9/L", "10*9/L"), ("x10^12/L", "10*12/L"), ("×10⁹/L", "10*9/L"),
    ("×10¹²/L", "10*12/L"), ("10E9/L", "10*9/L"), ("10^9 cells/L", "10*9/L"), ("10^3/μL", "10*3/uL"),
    ("umol/l", "umol/L"), ("μmol/L", "umol/L"), ("µmol/L", "umol/L"), ("mmol/l", "mmol/L"),
    ("g/l", "g/L"), ("U/l", "U/L"), ("IU/L", "[IU]/L"), ("mIU/ml", "m[IU]/mL"), ("uIU/mL", "u[IU]/mL"),
    ("mg/dl", "mg/dL"), ("ML", "mL"), ("fl", "fL"), ("mEq/L", "meq/L"), ("mmHg", "mm[Hg]"),
    ("cells/uL", "/uL"), ("个/HP", "/[HPF]"), ("/LP", "/[LPF]"), ("g/24h", "g/(24.h)"), ("kg/m^2", "kg/m2"),
    ("ml/min/1.73m2", "mL/min/{1.73_m2}"), ("秒", "s"), ("分钟", "min"), ("小时", "h"), ("天", "d"),
    ("岁", "a"), ("℃", "Cel"), ("次/分", "/min"), ("%", "%"), ("Ratio", "{ratio}"), ("ｍｍｏｌ／Ｌ", "mmol/L"),
    ("mmol/L", "mmol/L"), ("10*9/L", "10*9/L"), ("{ratio}", "{ratio}"), ("KU/L", "kU/L"),
])
def test_from_local(text, expected):
    result = ucum.from_local(text)
    assert result == expected
    assert ucum.is_valid(result)


@pytest.mark.parametrize("text", [None, "", "  ", "abc", "阴性", "+"])
def test_from_local_unknown_gives_none(text):
    assert ucum.from_local(text) is None
