"""UCUM units: parse, validate, canonicalize and convert, with exact decimal arithmetic.

Implements the case-sensitive grammar of the Unified Code for Units of Measure (UCUM, ucum.org,
§7 "Grammar of Units and Unit Terms"): prefixes on metric atoms, integer exponents
(``m2``, ``s-1``, ``10*9``), ``.`` multiplication and ``/`` division (left-associative, a leading
``/`` inverts), integer factors, parentheses and annotations ``{…}`` (which mean 1). The unit
table covers the SI base and derived units, time, volume, pressure, enzyme and arbitrary units
used in clinical laboratories; a unit that is valid UCUM but not in the table is reported
invalid (see README: add it to ``_ATOMS``).

Why not a PyPI package: ``ucumate`` embeds a Java library (needs a JVM); ``ucumvert`` parses
UCUM into ``pint`` quantities (float arithmetic, beta). Neither gives exact Decimal results.

Deviation from UCUM, on purpose: UCUM defines ``mol`` as the number 6.0221367×10²³, which makes
``mmol/L`` commensurable with ``10*9/L``. Here ``mol`` is its own base dimension (as in SI), so
substance amounts never convert to counts. Arbitrary units (``[IU]``, ``[arb'U]`` …) each form
their own dimension: ``m[IU]/mL`` ↔ ``[IU]/L`` converts, ``[IU]`` ↔ ``U`` does not.

Conversion is exact: factors are rationals (:class:`fractions.Fraction`) and results are
:class:`decimal.Decimal`, rounded to 34 significant digits only when the quotient does not
terminate (e.g. months ↔ days). Floats passed in are read through their shortest ``repr``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from decimal import Context, Decimal
from fractions import Fraction
from functools import lru_cache

from terminology.errors import TerminologyError

__all__ = ["UcumError", "InvalidUnit", "IncommensurableUnits", "Unit", "parse", "is_valid", "convert",
           "canonical", "commensurable", "from_local"]


class UcumError(TerminologyError):
    """Base class of unit errors."""

    code = "invalid"


class InvalidUnit(UcumError):
    """The text is not a UCUM unit expression this implementation knows."""


class IncommensurableUnits(UcumError):
    """The units measure different things (or need a non-scale conversion): no conversion."""

    code = "not-supported"


# ------------------------------------------------------------------------------------------------
# Unit table (UCUM essence: prefixes, base units, derived units). Values are exact decimals.
# ------------------------------------------------------------------------------------------------

_PREFIXES: dict[str, Fraction] = {
    "Y": Fraction(10) ** 24, "Z": Fraction(10) ** 21, "E": Fraction(10) ** 18, "P": Fraction(10) ** 15,
    "T": Fraction(10) ** 12, "G": Fraction(10) ** 9, "M": Fraction(10) ** 6, "k": Fraction(10) ** 3,
    "h": Fraction(10) ** 2, "da": Fraction(10), "d": Fraction(1, 10), "c": Fraction(1, 100),
    "m": Fraction(1, 10 ** 3), "u": Fraction(1, 10 ** 6), "n": Fraction(1, 10 ** 9),
    "p": Fraction(1, 10 ** 12), "f": Fraction(1, 10 ** 15), "a": Fraction(1, 10 ** 18),
    "z": Fraction(1, 10 ** 21), "y": Fraction(1, 10 ** 24),
}

#: base atom → dimension key; dimension keys also name the canonical unit symbol
_BASE = {"m": "m", "s": "s", "g": "g", "rad": "rad", "K": "K", "C": "C", "cd": "cd", "mol": "mol"}
_BASE_METRIC = set(_BASE)
_CANONICAL_ORDER = ["mol", "g", "m", "s", "K", "C", "cd", "rad"]  # arbitrary units first

#: arbitrary units (UCUM class "arbitrary"): each is its own dimension; all metric
_ARBITRARY = ["[IU]", "[arb'U]", "[CFU]", "[PFU]", "[APL'U]", "[GPL'U]", "[MPL'U]"]

#: special (non-ratio) units: convertible only on their own, to/from kelvin
_SPECIAL = {"Cel": True, "[degF]": False}  # value: metric

_D = Fraction  # readability: _D("2.54") is the exact decimal 2.54

#: atom → (metric, factor, definition in already-defined units)
_ATOMS: dict[str, tuple[bool, Fraction, str]] = {
    # dimensionless
    "10*": (False, _D(10), "1"), "10^": (False, _D(10), "1"),
    "[pi]": (False, _D("3.1415926535897932384626433832795028841971693993751"), "1"),
    "%": (False, _D(1, 100), "1"), "[ppth]": (False, _D(1, 10 ** 3), "1"),
    "[ppm]": (False, _D(1, 10 ** 6), "1"), "[ppb]": (False, _D(1, 10 ** 9), "1"),
    "[pptr]": (False, _D(1, 10 ** 12), "1"),
    "[HPF]": (False, _D(1), "1"), "[LPF]": (False, _D(100), "1"),
    # SI derived
    "sr": (True, _D(1), "rad2"), "Hz": (True, _D(1), "s-1"), "N": (True, _D(1), "kg.m/s2"),
    "Pa": (True, _D(1), "N/m2"), "J": (True, _D(1), "N.m"), "W": (True, _D(1), "J/s"),
    "A": (True, _D(1), "C/s"), "V": (True, _D(1), "J/C"), "F": (True, _D(1), "C/V"),
    "Ohm": (True, _D(1), "V/A"), "S": (True, _D(1), "Ohm-1"), "Wb": (True, _D(1), "V.s"),
    "T": (True, _D(1), "Wb/m2"), "H": (True, _D(1), "Wb/A"), "lm": (True, _D(1), "cd.sr"),
    "lx": (True, _D(1), "lm/m2"), "Bq": (True, _D(1), "s-1"), "Gy": (True, _D(1), "J/kg"),
    "Sv": (True, _D(1), "J/kg"), "Ci": (True, _D(37 * 10 ** 9), "Bq"),
    # ISO 1000 / time / volume / mass
    "l": (True, _D(1), "dm3"), "L": (True, _D(1), "l"), "ar": (True, _D(100), "m2"),
    "min": (False, _D(60), "s"), "h": (False, _D(60), "min"), "d": (False, _D(24), "h"),
    "wk": (False, _D(7), "d"), "a_t": (False, _D("365.24219"), "d"), "a_j": (False, _D("365.25"), "d"),
    "a_g": (False, _D("365.2425"), "d"), "a": (False, _D(1), "a_j"),
    "mo_s": (False, _D("29.53059"), "d"), "mo_j": (False, _D(1), "a_j/12"),
    "mo_g": (False, _D(1), "a_g/12"), "mo": (False, _D(1), "mo_j"),
    "t": (True, _D(1000), "kg"), "bar": (True, _D(10 ** 5), "Pa"), "Ao": (False, _D(1, 10), "nm"),
    "u": (True, _D("1.6605402e-24"), "g"), "eV": (True, _D("1.60217733e-19"), "J"),
    "deg": (False, _D(2, 360), "[pi].rad"),
    "cal": (True, _D("4.184"), "J"), "cal_th": (True, _D("4.184"), "J"),
    # clinical
    "m[Hg]": (True, _D("133.3220"), "kPa"), "m[H2O]": (True, _D("9.80665"), "kPa"),
    "eq": (True, _D(1), "mol"), "osm": (True, _D(1), "mol"), "kat": (True, _D(1), "mol/s"),
    "U": (True, _D(1), "umol/min"), "g%": (True, _D(1), "g/dL"), "[iU]": (True, _D(1), "[IU]"),
    "[drp]": (False, _D(1), "mL/20"),
    # customary (body measurements sent by some devices)
    "[in_i]": (False, _D("2.54"), "cm"), "[ft_i]": (False, _D(12), "[in_i]"),
    "[gr]": (False, _D("64.79891"), "mg"), "[lb_av]": (False, _D(7000), "[gr]"),
    "[oz_av]": (False, _D(1, 16), "[lb_av]"),
}

_SYMBOL_CHARS = re.compile(r"[!-~]+")          # printable ASCII, no space (UCUM §1)
_EXPONENT = re.compile(r"(.*?)([+-]?\d+)")     # trailing exponent of a simple unit
_ANNOTATION = re.compile(r"\{[!-z|~]*\}")      # ASCII 33–126 without curly braces


@dataclass(frozen=True, slots=True)
class Unit:
    """A parsed unit: ``factor`` × product of base dimensions ``dims`` (dimension → exponent).

    ``special`` names a non-ratio unit (``Cel``, ``[degF]``) used on its own; ``has_special``
    is set when one appears inside a larger term (valid, but not convertible).
    """

    expression: str
    factor: Fraction
    dims: tuple[tuple[str, int], ...]
    special: str | None = None
    has_special: bool = False

    @property
    def canonical_unit(self) -> str:
        """The canonical unit text: base symbols in a fixed order, e.g. ``g.m-3``, ``mol.m-3``,
        ``m-3`` (a count per volume), ``[IU].m-3``; ``1`` when dimensionless."""
        if self.special:
            return "K"
        order = {d: i for i, d in enumerate(_CANONICAL_ORDER)}
        parts = sorted(self.dims, key=lambda d: (d[1] < 0, order.get(d[0], -1), d[0]))
        return ".".join(s if e == 1 else f"{s}{e}" for s, e in parts) or "1"


def _combine(a: dict[str, int], b: dict[str, int], sign: int) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + sign * v
        if out[k] == 0:
            del out[k]
    return out


class _Parser:
    """Recursive-descent parser for UCUM §7 (mainTerm / term / component / annotatable)."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.special: list[str] = []

    def parse(self) -> tuple[Fraction, dict[str, int]]:
        if not self.text or not _SYMBOL_CHARS.fullmatch(self.text):
            raise InvalidUnit(f"{self.text!r} is not a UCUM unit: empty or has characters outside printable ASCII")
        if self._peek() == "/":
            self.pos += 1
            factor, dims = self._term()
            factor, dims = 1 / factor, {k: -v for k, v in dims.items()}
        else:
            factor, dims = self._term()
        if self.pos != len(self.text):
            raise InvalidUnit(f"{self.text!r}: unexpected {self.text[self.pos]!r} at position {self.pos + 1}")
        return factor, dims

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _term(self) -> tuple[Fraction, dict[str, int]]:
        factor, dims = self._component()
        while self._peek() in (".", "/"):
            op = self._peek()
            self.pos += 1
            f2, d2 = self._component()
            if op == ".":
                factor, dims = factor * f2, _combine(dims, d2, 1)
            else:
                factor, dims = factor / f2, _combine(dims, d2, -1)
        return factor, dims

    def _component(self) -> tuple[Fraction, dict[str, int]]:
        ch = self._peek()
        if ch == "(":
            self.pos += 1
            result = self._term()
            if self._peek() != ")":
                raise InvalidUnit(f"{self.text!r}: missing ')'")
            self.pos += 1
            return result
        if ch == "{":
            self._annotation()
            return Fraction(1), {}
        start = self.pos
        depth = 0
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "[":
                depth += 1
            elif c == "]":
                depth -= 1
            elif depth == 0 and c in "./(){}":
                break
            self.pos += 1
        token = self.text[start:self.pos]
        if not token:
            raise InvalidUnit(f"{self.text!r}: a unit is missing at position {start + 1}")
        if self._peek() == "{":
            self._annotation()
        if token.isdigit():
            return Fraction(int(token)), {}
        return self._simple_unit(token)

    def _annotation(self) -> None:
        m = _ANNOTATION.match(self.text, self.pos)
        if not m:
            raise InvalidUnit(f"{self.text!r}: bad annotation at position {self.pos + 1}")
        self.pos = m.end()

    def _simple_unit(self, token: str) -> tuple[Fraction, dict[str, int]]:
        symbol, exponent = token, 1
        m = _EXPONENT.fullmatch(token)
        if m and m.group(1):
            symbol, exponent = m.group(1), int(m.group(2))
        resolved = _resolve_atom(symbol)
        if resolved is None:
            raise InvalidUnit(f"{self.text!r}: unknown unit {symbol!r}")
        prefix, atom = resolved
        if atom in _SPECIAL:
            self.special.append(symbol if exponent == 1 else token)
            factor, dims = prefix, {"K": 1}
        else:
            base_factor, dims = _atom_value(atom)
            factor = prefix * base_factor
        return factor ** exponent, {k: v * exponent for k, v in dims.items()}


def _resolve_atom(symbol: str) -> tuple[Fraction, str] | None:
    """(prefix factor, atom) for ``symbol``: an atom itself, or a prefix on a metric atom."""
    if _is_atom(symbol):
        return Fraction(1), symbol
    for plen in (2, 1):
        prefix, rest = symbol[:plen], symbol[plen:]
        if prefix in _PREFIXES and rest and _is_atom(rest) and _is_metric(rest):
            return _PREFIXES[prefix], rest
    return None


def _is_atom(symbol: str) -> bool:
    return symbol in _BASE or symbol in _ATOMS or symbol in _ARBITRARY or symbol in _SPECIAL


def _is_metric(atom: str) -> bool:
    if atom in _BASE:
        return atom in _BASE_METRIC
    if atom in _ATOMS:
        return _ATOMS[atom][0]
    if atom in _SPECIAL:
        return _SPECIAL[atom]
    return atom in _ARBITRARY


@lru_cache(maxsize=None)
def _atom_value(atom: str) -> tuple[Fraction, dict[str, int]]:
    if atom in _BASE:
        return Fraction(1), {_BASE[atom]: 1}
    if atom in _ARBITRARY:
        return Fraction(1), {atom: 1}
    _, factor, definition = _ATOMS[atom]
    if definition == "1":
        return factor, {}
    f, dims = _Parser(definition).parse()
    return factor * f, dims


@lru_cache(maxsize=4096)
def parse(unit: str) -> Unit:
    """Parse a UCUM unit expression (case-sensitive form). Raises :class:`InvalidUnit`."""
    if not isinstance(unit, str):
        raise InvalidUnit(f"{unit!r} is not a unit string")
    parser = _Parser(unit)
    factor, dims = parser.parse()
    special = None
    if parser.special:
        if unit in _SPECIAL:
            special = unit
    return Unit(unit, factor, tuple(sorted(dims.items())), special, bool(parser.special) and special is None)


def is_valid(unit: str) -> bool:
    """True when ``unit`` is a UCUM expression built from known atoms (``1`` and ``{…}`` included)."""
    try:
        parse(unit)
    except UcumError:
        return False
    return True


def commensurable(a: str, b: str) -> bool:
    """True when quantities in ``a`` and ``b`` convert into each other."""
    try:
        ua, ub = parse(a), parse(b)
    except UcumError:
        return False
    if ua.has_special or ub.has_special:
        return a == b
    return ua.dims == ub.dims


# ------------------------------------------------------------------------------------------------
# Arithmetic
# ------------------------------------------------------------------------------------------------

_CONTEXT = Context(prec=34)


def _to_fraction(value: Decimal | float | int | str) -> Fraction:
    if isinstance(value, float):
        value = repr(value)  # shortest text that round-trips: 0.1 → "0.1"
    try:
        number = Decimal(value) if not isinstance(value, Decimal) else value
    except Exception as exc:  # decimal.InvalidOperation and friends
        raise UcumError(f"{value!r} is not a number") from exc
    if not number.is_finite():
        raise UcumError(f"{value!r} is not a finite number")
    return Fraction(number)


def _to_decimal(value: Fraction) -> Decimal:
    result = _CONTEXT.divide(Decimal(value.numerator), Decimal(value.denominator)).normalize(_CONTEXT)
    if result.as_tuple().exponent > 0:  # 5.5E+3 → 5500
        result = result.quantize(Decimal(1))
    return result


def _describe(unit: Unit) -> str:
    return unit.canonical_unit


def _to_kelvin(value: Fraction, unit: Unit) -> Fraction:
    if unit.special == "Cel":
        return value + Fraction("273.15")
    if unit.special == "[degF]":
        return (value + Fraction("459.67")) * Fraction(5, 9)
    return value * unit.factor


def _from_kelvin(value: Fraction, unit: Unit) -> Fraction:
    if unit.special == "Cel":
        return value - Fraction("273.15")
    if unit.special == "[degF]":
        return value * Fraction(9, 5) - Fraction("459.67")
    return value / unit.factor


def convert(value: Decimal | float | int | str, from_unit: str, to_unit: str) -> Decimal:
    """Convert ``value`` from ``from_unit`` to ``to_unit`` (both UCUM), exactly.

    Works between units that differ only in scale (``mg/dL`` → ``g/L``, ``10*9/L`` → ``/nL``,
    ``mmol/L`` → ``umol/L``) and for temperatures (``Cel``, ``[degF]``, ``K`` on their own).
    Raises :class:`InvalidUnit` for an unknown unit and :class:`IncommensurableUnits` across
    dimensions, e.g. ``mg/dL`` → ``mmol/L``, which needs the analyte's molar mass.
    """
    source, target = parse(from_unit), parse(to_unit)
    number = _to_fraction(value)
    if source.has_special or target.has_special:
        if from_unit == to_unit:
            return _to_decimal(number)
        raise IncommensurableUnits(f"cannot convert {from_unit} to {to_unit}: a temperature unit "
                                   "(Cel, [degF]) converts only on its own")
    if source.dims != target.dims:
        hint = ""
        dims = {dict(source.dims).get("mol", 0), dict(target.dims).get("mol", 0)}
        if len(dims) > 1:
            hint = "; converting between mass and substance amount needs the analyte's molar mass"
        raise IncommensurableUnits(
            f"cannot convert {from_unit} to {to_unit}: {_describe(source)} and {_describe(target)} "
            f"are different dimensions{hint}")
    if source.special or target.special:
        return _to_decimal(_from_kelvin(_to_kelvin(number, source), target))
    return _to_decimal(number * source.factor / target.factor)


def canonical(value: Decimal | float | int | str, unit: str) -> tuple[Decimal, str]:
    """``(value, unit)`` in canonical base units, for indexing and comparing quantities
    (FHIR search on Quantity: search.html#quantity). ``5.5 mmol/L`` → ``(5.5, 'mol.m-3')``,
    ``120 mg/dL`` → ``(1200, 'g.m-3')``, ``37 Cel`` → ``(310.15, 'K')``, annotations drop out.
    Raises :class:`InvalidUnit`, or :class:`IncommensurableUnits` for a temperature inside a term.
    """
    parsed = parse(unit)
    number = _to_fraction(value)
    if parsed.has_special:
        raise IncommensurableUnits(f"{unit}: a temperature unit inside a term has no canonical form")
    if parsed.special:
        return _to_decimal(_to_kelvin(number, parsed)), "K"
    return _to_decimal(number * parsed.factor), parsed.canonical_unit


# ------------------------------------------------------------------------------------------------
# Units as Chinese laboratory systems write them
# ------------------------------------------------------------------------------------------------

#: whole texts (after NFKC and trimming) that are not built from parts
_LOCAL_WHOLE = {
    "秒": "s", "分": "min", "分钟": "min", "小时": "h", "时": "h", "天": "d", "日": "d", "周": "wk",
    "星期": "wk", "月": "mo", "个月": "mo", "年": "a", "岁": "a", "°c": "Cel", "℃": "Cel",
    "摄氏度": "Cel", "°f": "[degF]", "次/分": "/min", "次/分钟": "/min", "bpm": "/min",
    "ratio": "{ratio}", "比值": "{ratio}", "比率": "{ratio}", "inr": "{INR}", "s/co": "{s_co_ratio}",
    "%": "%", "百分比": "%", "/hp": "/[HPF]", "/hpf": "/[HPF]", "个/hp": "/[HPF]",
    "个/hpf": "/[HPF]", "/lp": "/[LPF]", "/lpf": "/[LPF]", "个/lp": "/[LPF]", "个/lpf": "/[LPF]",
    "ml/min/1.73m2": "mL/min/{1.73_m2}", "ml/min/1.73m^2": "mL/min/{1.73_m2}",
    "ml/(min.1.73m2)": "mL/min/{1.73_m2}", "ml/min/1.73 m2": "mL/min/{1.73_m2}",
    "kg/m^2": "kg/m2", "mmhg": "mm[Hg]", "cmh2o": "cm[H2O]", "cm h2o": "cm[H2O]",
    "mmh2o": "mm[H2O]", "倍": "{titer}", "滴度": "{titer}", "copies/ml": "{copies}/mL",
    "拷贝/ml": "{copies}/mL", "iu/ml": "[IU]/mL",
}

#: single parts of a compound text, compared in lower case
_LOCAL_PARTS = {
    "l": "L", "dl": "dL", "ml": "mL", "ul": "uL", "nl": "nL", "pl": "pL", "fl": "fL",
    "mol": "mol", "mmol": "mmol", "umol": "umol", "nmol": "nmol", "pmol": "pmol",
    "g": "g", "kg": "kg", "mg": "mg", "ug": "ug", "mcg": "ug", "ng": "ng", "pg": "pg",
    "iu": "[IU]", "miu": "m[IU]", "uiu": "u[IU]", "kiu": "k[IU]", "u": "U", "mu": "mU", "ku": "kU",
    "meq": "meq", "mosm": "mosm", "osm": "osm", "kpa": "kPa", "pa": "Pa", "mmhg": "mm[Hg]",
    "s": "s", "sec": "s", "秒": "s", "min": "min", "分": "min", "分钟": "min", "h": "h", "hr": "h",
    "hrs": "h", "小时": "h", "d": "d", "day": "d", "天": "d", "wk": "wk", "week": "wk", "周": "wk",
    "mo": "mo", "month": "mo", "月": "mo", "a": "a", "y": "a", "yr": "a", "year": "a", "年": "a",
    "m": "m", "cm": "cm", "mm": "mm", "um": "um", "nm": "nm", "m2": "m2", "cm2": "cm2",
    "cells": "", "cell": "", "个": "", "细胞": "", "hp": "[HPF]", "hpf": "[HPF]", "lp": "[LPF]",
    "lpf": "[LPF]", "%": "%", "mm3": "mm3", "ul3": "uL",
}

_TEN_POWER = re.compile(r"^(?:[x×*]\s*)?10\s*(?:\^|~|\*|\*\*|e)\s*([+-]?\d+)", re.IGNORECASE)
_TEN_POWER_SUPERSCRIPT_ANY = re.compile(r"10([⁺⁻]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)")
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻", "0123456789+-")
_MICRO = str.maketrans({"μ": "u", "µ": "u"})
_PER_TIME = re.compile(r"^(\d+)\s*(h|hr|hrs|d|小时|天)$", re.IGNORECASE)


def from_local(unit_text: str | None) -> str | None:
    """Map a unit as a Chinese LIS writes it to UCUM, or None when it cannot be read.

    Handles ``10^9/L``, ``10~9/L``, ``x10^12/L``, ``×10⁹/L``, ``10E9/L``, lower-case litres
    (``mmol/l``, ``g/l``, ``U/l``), ``μ``/``µ`` for micro, ``IU`` → ``[IU]``, ``mmHg``, ``mEq``,
    ``cells/uL`` / ``个/HP``, ``g/24h`` and Chinese words (秒, 分钟, 小时, 天, 周, 岁, ℃, 次/分).
    Text that is already valid UCUM and needs none of these rewrites comes back unchanged. The
    reading is lab-oriented: ``ML`` is taken as millilitre, not megalitre.
    """
    if unit_text is None:
        return None
    # superscript exponents first: NFKC would turn "10⁹" into "109"
    text = _TEN_POWER_SUPERSCRIPT_ANY.sub(lambda m: "10^" + m.group(1).translate(_SUPERSCRIPT), unit_text)
    text = unicodedata.normalize("NFKC", text).strip()
    text = text.replace("−", "-").translate(_MICRO)
    if not text:
        return None
    whole = _LOCAL_WHOLE.get(text) or _LOCAL_WHOLE.get(text.lower())
    if whole:
        return whole if is_valid(whole) else None
    compact = re.sub(r"\s+", "", text)
    candidate = _rewrite(compact)
    if candidate is not None and is_valid(candidate):
        return candidate
    return compact if is_valid(compact) else None


def _rewrite(text: str) -> str | None:
    """Rewrite a compound local unit part by part ("/" and "." separated)."""
    prefix = ""
    m = _TEN_POWER.match(text)
    if m:
        prefix = f"10*{int(m.group(1))}"
        text = text[m.end():]
        if text and text[0] not in "/.":
            text = "." + text
    pieces = re.split(r"([/.])", text)
    out: list[str] = [prefix] if prefix else []
    for piece in pieces:
        if piece in ("/", "."):
            out.append(piece)
            continue
        if piece == "":
            continue
        out.append(_rewrite_part(piece))
    result = "".join(out)
    # parts that vanished ("cells", "个") leave "/" or "." behind: tidy them
    result = re.sub(r"\.(?=[/.]|$)", "", result)
    result = re.sub(r"^\.", "", result)
    result = re.sub(r"/\.", "/", result)
    return result or None


def _rewrite_part(part: str) -> str:
    if part.startswith("{") or part.startswith("["):
        return part
    key = part.lower()
    if key in _LOCAL_PARTS:
        return _LOCAL_PARTS[key]
    if part in _LOCAL_PARTS:
        return _LOCAL_PARTS[part]
    m = _PER_TIME.match(part)
    if m:
        unit = _LOCAL_PARTS[m.group(2).lower()]
        return f"({m.group(1)}.{unit})"
    m = re.fullmatch(r"(.*?)\^?(\d+)", part)  # m^2 → m2
    if m and m.group(1).lower() in _LOCAL_PARTS and _LOCAL_PARTS[m.group(1).lower()]:
        return f"{_LOCAL_PARTS[m.group(1).lower()]}{m.group(2)}"
    return part
