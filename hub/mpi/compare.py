"""Field comparators: turn two records into a comparison vector of agreement levels.

Generic string/date/code comparators (Jaro–Winkler, Damerau–Levenshtein, birth dates with a
day/month swap or one wrong digit) serve any field configuration; :func:`compare_demographics`
is the configuration for Chinese patient records (:class:`~hub.mpi.normalize.Demographics`).

Levels used (a field only uses some):

``exact``      agree at the best resolution both sides allow (same characters; same pinyin
               when one side only has pinyin)
``homophone``  both in characters, different characters with the same toneless reading
``similar``    one visually similar character (形近字) or dialect-equivalent pinyin
``typo``       one edit apart in pinyin / Jaro–Winkler above the high threshold
``swap``       birth date with day and month exchanged
``near``       identifier or date one character apart
``district``   addresses in the same district, different streets
``disagree``   both present and different
``missing``    either side absent (weight 0)
"""

from __future__ import annotations

from dataclasses import dataclass

from . import data
from .normalize import (
    PERSON_UNIQUE_SYSTEMS, Address, Demographics, fuzzy_pinyin_key, homophones,
    similar_characters, surname_pinyin,
)

MISSING = "missing"
DISAGREE = "disagree"
EXACT = "exact"


@dataclass(frozen=True, slots=True)
class FieldComparison:
    """One field's agreement level. ``u`` overrides the model's u-probability for this pair
    (frequency-adjusted agreement on a specific value, e.g. the surname 王)."""

    field: str
    level: str
    u: float | None = None


# --------------------------------------------------------------------------- generic

def jaro_winkler(a: str, b: str, prefix_scale: float = 0.1) -> float:
    """Jaro–Winkler similarity in [0, 1] (Winkler 1990; common prefix up to 4 characters)."""
    if a == b:
        return 1.0
    la, lb = len(a), len(b)
    if not la or not lb:
        return 0.0
    window = max(la, lb) // 2 - 1
    a_flags = [False] * la
    b_flags = [False] * lb
    matches = 0
    for i, ch in enumerate(a):
        lo, hi = max(0, i - window), min(lb, i + window + 1)
        for j in range(lo, hi):
            if not b_flags[j] and b[j] == ch:
                a_flags[i] = b_flags[j] = True
                matches += 1
                break
    if not matches:
        return 0.0
    transpositions = 0
    k = 0
    for i in range(la):
        if a_flags[i]:
            while not b_flags[k]:
                k += 1
            if a[i] != b[k]:
                transpositions += 1
            k += 1
    m = float(matches)
    jaro = (m / la + m / lb + (m - transpositions / 2) / m) / 3
    prefix = 0
    for x, y in zip(a[:4], b[:4]):
        if x != y:
            break
        prefix += 1
    return jaro + prefix * prefix_scale * (1 - jaro)


def damerau_levenshtein(a: str, b: str, cap: int = 3) -> int:
    """Optimal-string-alignment edit distance (insert, delete, substitute, swap adjacent),
    returning ``cap`` as soon as the distance is known to reach it."""
    if a == b:
        return 0
    if abs(len(a) - len(b)) >= cap:
        return cap
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) >= cap:
            return cap
        prev2, prev = prev, cur
    return min(prev[-1], cap)


def within_one_edit(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by at most one insertion, deletion, substitution or
    swap of adjacent characters (linear time; the common case of a typo check)."""
    if a == b:
        return True
    la, lb = len(a), len(b)
    if abs(la - lb) > 1:
        return False
    if la == lb:
        diffs = [i for i in range(la) if a[i] != b[i]]
        if len(diffs) == 1:
            return True
        return (len(diffs) == 2 and diffs[1] == diffs[0] + 1
                and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]])
    if la > lb:
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1:]


def compare_strings(name: str, a: str | None, b: str | None, *, similar: float = 0.92,
                    partial: float | None = 0.85) -> FieldComparison:
    """exact / similar (JW ≥ ``similar``) / typo (JW ≥ ``partial``) / disagree / missing."""
    if not a or not b:
        return FieldComparison(name, MISSING)
    if a == b:
        return FieldComparison(name, EXACT)
    jw = jaro_winkler(a, b)
    if jw >= similar:
        return FieldComparison(name, "similar")
    if partial is not None and jw >= partial:
        return FieldComparison(name, "typo")
    return FieldComparison(name, DISAGREE)


def compare_codes(name: str, a: str | None, b: str | None) -> FieldComparison:
    """Identifier-like strings: exact / near (one edit or adjacent swap) / disagree / missing."""
    if not a or not b:
        return FieldComparison(name, MISSING)
    if a == b:
        return FieldComparison(name, EXACT)
    if within_one_edit(a, b):
        return FieldComparison(name, "near")
    return FieldComparison(name, DISAGREE)


def birth_date_level(a: str | None, b: str | None) -> str:
    """Level for two ISO dates: exact / swap (day↔month) / near (one digit wrong, or two
    adjacent digits exchanged) / disagree / missing."""
    if not a or not b:
        return MISSING
    if a == b:
        return EXACT
    ya, ma, da = a[:4], a[5:7], a[8:10]
    yb, mb, db = b[:4], b[5:7], b[8:10]
    if ya == yb and ma == db and da == mb:
        return "swap"
    if within_one_edit(ya + ma + da, yb + mb + db):
        return "near"
    return DISAGREE


def compare_birth_dates(name: str, a: str | None, b: str | None) -> FieldComparison:
    return FieldComparison(name, birth_date_level(a, b))


# --------------------------------------------------------------------------- Chinese names

_PINYIN_SURNAME_FREQ: dict[str, float] = {}
for _s, _f in data.SURNAME_FREQUENCY.items():
    _py = surname_pinyin(_s)
    _PINYIN_SURNAME_FREQ[_py] = _PINYIN_SURNAME_FREQ.get(_py, 0.0) + _f

#: u-probability of agreement on a surname missing from the frequency table.
DEFAULT_SURNAME_U = 0.0005
#: u-probability of agreement on a given name, by length, when not in the common-name table.
DEFAULT_GIVEN_U = {1: 0.004, 2: 0.0004}
DEFAULT_GIVEN_U_LONG = 0.0002
#: Agreement at pinyin resolution is less specific than in characters (homophones merge).
PINYIN_U_FACTOR = 3.0


def _surname_u(a: Demographics) -> float:
    if a.surname:
        return data.SURNAME_FREQUENCY.get(a.surname, DEFAULT_SURNAME_U)
    return _PINYIN_SURNAME_FREQ.get(a.surname_py, DEFAULT_SURNAME_U)


def _given_u(given_zh: str, given_py: str, pinyin_only: bool) -> float:
    if given_zh and not pinyin_only:
        return data.COMMON_GIVEN_NAMES.get(given_zh, DEFAULT_GIVEN_U.get(len(given_zh), DEFAULT_GIVEN_U_LONG))
    syllables = max(1, round(len(given_py) / 3.2))  # rough syllable count of a pinyin string
    return min(0.05, DEFAULT_GIVEN_U.get(syllables, DEFAULT_GIVEN_U_LONG) * PINYIN_U_FACTOR)


#: u-probability of a one-character homophone / look-alike difference between two
#: different people's given names, by given-name length (short names collide more often).
HOMOPHONE_GIVEN_U = {1: 0.01, 2: 0.001}
SIMILAR_GIVEN_U = {1: 0.004, 2: 0.0005}


def _chars_level(x: str, y: str) -> str | None:
    """Level for two same-length character strings that differ in exactly one position
    (homophone / similar), or None."""
    if len(x) != len(y):
        return None
    diffs = [(p, q) for p, q in zip(x, y) if p != q]
    if len(diffs) != 1:
        return None
    p, q = diffs[0]
    if homophones(p, q):
        return "homophone"
    if similar_characters(p, q):
        return "similar"
    return None


def _pinyin_level(pa: str, pb: str, va: frozenset[str], vb: frozenset[str]) -> str:
    if pa == pb or (va & vb) or pa in vb or pb in va:
        return EXACT
    if fuzzy_pinyin_key(pa) == fuzzy_pinyin_key(pb):
        return "similar"
    if len(pa) >= 4 and within_one_edit(pa, pb):
        return "typo"
    return DISAGREE


def compare_surnames(a: Demographics, b: Demographics) -> FieldComparison:
    """Surname: characters when both have them, else pinyin; u by surname frequency."""
    if not a.surname_py or not b.surname_py:
        return FieldComparison("surname", MISSING)
    if a.surname and b.surname:
        if a.surname == b.surname:
            return FieldComparison("surname", EXACT, _surname_u(a))
        if a.surname_py == b.surname_py:
            return FieldComparison("surname", "homophone")
        lvl = _chars_level(a.surname, b.surname)
        if lvl:
            return FieldComparison("surname", lvl)
        return FieldComparison("surname", DISAGREE)
    lvl = _pinyin_level(a.surname_py, b.surname_py, frozenset(), frozenset())
    if lvl == EXACT:
        return FieldComparison("surname", EXACT, _PINYIN_SURNAME_FREQ.get(a.surname_py, DEFAULT_SURNAME_U))
    return FieldComparison("surname", lvl)


def compare_given_names(a: Demographics, b: Demographics) -> FieldComparison:
    """Given name: exact / homophone / similar / typo / disagree; u by name frequency."""
    if not a.given_py or not b.given_py:
        return FieldComparison("given", MISSING)
    if a.given and b.given:
        if a.given == b.given:
            return FieldComparison("given", EXACT, _given_u(a.given, a.given_py, False))
        n = min(len(a.given), len(b.given))
        lvl = _chars_level(a.given, b.given)
        if lvl:
            table = HOMOPHONE_GIVEN_U if lvl == "homophone" else SIMILAR_GIVEN_U
            return FieldComparison("given", lvl, table.get(n, table[2]))
        if a.given_py_variants & b.given_py_variants:
            return FieldComparison("given", "homophone", HOMOPHONE_GIVEN_U.get(n, HOMOPHONE_GIVEN_U[2]))
        if len(a.given) == len(b.given) and fuzzy_pinyin_key(a.given_py) == fuzzy_pinyin_key(b.given_py):
            return FieldComparison("given", "similar")
        return FieldComparison("given", DISAGREE)
    lvl = _pinyin_level(a.given_py, b.given_py, a.given_py_variants, b.given_py_variants)
    if lvl == EXACT:
        return FieldComparison("given", EXACT, _given_u(a.given or b.given, a.given_py, True))
    return FieldComparison("given", lvl)


def compare_names(a: Demographics, b: Demographics) -> tuple[FieldComparison, FieldComparison]:
    """Surname and given name, trying the swapped order when a pinyin-only name's order was
    ambiguous (``Li Ming`` may be 明力 or 李明). Newborn placeholders compare their parents'
    names (two ``王芳之女`` records are the same mother's baby); a placeholder against a real
    name is ``missing`` (the placeholder is not the baby's name)."""
    if a.is_newborn_placeholder or b.is_newborn_placeholder:
        if a.is_newborn_placeholder and b.is_newborn_placeholder and a.newborn_parent and b.newborn_parent:
            same = a.newborn_parent == b.newborn_parent
            lvl = EXACT if same else DISAGREE
            return FieldComparison("surname", lvl), FieldComparison("given", lvl)
        return FieldComparison("surname", MISSING), FieldComparison("given", MISSING)
    s, g = compare_surnames(a, b), compare_given_names(a, b)
    if (a.pinyin_order_ambiguous or b.pinyin_order_ambiguous) and (s.level != EXACT or g.level != EXACT):
        x, y = (a, b) if a.pinyin_order_ambiguous else (b, a)
        if x.surname_py == y.given_py and x.given_py == y.surname_py and x.given_py:
            return (FieldComparison("surname", EXACT, _PINYIN_SURNAME_FREQ.get(y.surname_py, DEFAULT_SURNAME_U)),
                    FieldComparison("given", EXACT, _given_u(y.given, y.given_py, True)))
    return s, g


# --------------------------------------------------------------------------- other fields

def compare_sex(a: Demographics, b: Demographics) -> FieldComparison:
    if a.sex not in ("male", "female") or b.sex not in ("male", "female"):
        return FieldComparison("sex", MISSING)
    return FieldComparison("sex", EXACT if a.sex == b.sex else DISAGREE)


def compare_resident_ids(a: Demographics, b: Demographics) -> FieldComparison:
    """``exact`` only between usable (valid, consistent) IDs; ``near`` when one digit apart
    and at least one side is not valid (a mistyped number: supporting evidence that never
    drives an automatic link); ``disagree`` between two different usable IDs."""
    ra, rb = a.rid, b.rid
    if ra is None or rb is None:
        return FieldComparison("resident_id", MISSING)
    if a.rid_usable and b.rid_usable:
        return FieldComparison("resident_id", EXACT if ra.value == rb.value else DISAGREE)
    if a.is_newborn_placeholder or b.is_newborn_placeholder:
        return FieldComparison("resident_id", MISSING)
    bad = ra.status.value == "placeholder" or rb.status.value == "placeholder"
    if not bad and len(ra.value) == len(rb.value) == 18 and (not ra.valid or not rb.valid):
        if within_one_edit(ra.value, rb.value):
            return FieldComparison("resident_id", "near")
    return FieldComparison("resident_id", MISSING)


def compare_phones(a: Demographics, b: Demographics) -> FieldComparison:
    if not a.phones or not b.phones:
        return FieldComparison("phone", MISSING)
    return FieldComparison("phone", EXACT if set(a.phones) & set(b.phones) else DISAGREE)


def _bigrams(s: str) -> set[str]:
    return {s[i:i + 2] for i in range(len(s) - 1)} or {s}


def address_level(a: Address | None, b: Address | None) -> str:
    """exact (same street-level address) / similar (bigram Dice ≥ 0.7, or one contains the
    other) / district (same district, different street) / disagree / missing."""
    if a is None or b is None or not (a.street or a.district) or not (b.street or b.district):
        return MISSING
    if a.district and b.district and a.district != b.district:
        return DISAGREE
    if a.city and b.city and a.city != b.city:
        return DISAGREE
    if not a.street or not b.street:
        return "district" if a.district and a.district == b.district else MISSING
    if a.street == b.street:
        return EXACT
    x, y = _bigrams(a.street), _bigrams(b.street)
    dice = 2 * len(x & y) / (len(x) + len(y))
    if dice >= 0.7 or (min(len(a.street), len(b.street)) >= 6 and (a.street in b.street or b.street in a.street)):
        return "similar"
    if a.district and a.district == b.district:
        return "district"
    return DISAGREE


def compare_addresses(a: Demographics, b: Demographics) -> FieldComparison:
    return FieldComparison("address", address_level(a.address, b.address))


def compare_identifiers(a: Demographics, b: Demographics) -> FieldComparison:
    """Other identifiers: ``exact`` when a (system, value) pair is shared; ``disagree`` when a
    person-unique system (health card, insurance card, passport …) holds different values."""
    if not a.identifiers or not b.identifiers:
        return FieldComparison("identifier", MISSING)
    if set(a.identifiers) & set(b.identifiers):
        return FieldComparison("identifier", EXACT)
    sa = {s: v for s, v in a.identifiers if s in PERSON_UNIQUE_SYSTEMS}
    for s, v in b.identifiers:
        if s in sa and sa[s] != v:
            return FieldComparison("identifier", DISAGREE)
    return FieldComparison("identifier", MISSING)


def compare_demographics(a: Demographics, b: Demographics) -> dict[str, FieldComparison]:
    """The comparison vector of two Chinese patient records, keyed by field name:
    surname, given, sex, birth_date, resident_id, phone, address, identifier."""
    s, g = compare_names(a, b)
    return {
        "surname": s,
        "given": g,
        "sex": compare_sex(a, b),
        "birth_date": compare_birth_dates("birth_date", a.birth_date, b.birth_date),
        "resident_id": compare_resident_ids(a, b),
        "phone": compare_phones(a, b),
        "address": compare_addresses(a, b),
        "identifier": compare_identifiers(a, b),
    }
