"""Normalization of patient demographics for matching.

Pure functions: GB 11643 resident ID validation, Chinese name splitting and toneless pinyin,
pinyin-only name parsing, phone and address normalization, and the :class:`Demographics`
record the comparators work on, built from a FHIR R4 ``Patient`` (FHIR patient.html).

Conventions followed: shared/design/CONVENTIONS.md (resident ID system
``urn:oid:2.16.156.10011.1.3``, check character, 15→18 upgrade, sex codes).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import unicodedata
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache

# Names are read one character at a time (surname readings come from data.py), so pypinyin's
# phrase dictionary — about 45 MB in every hub process — is never used: tell it not to load it
# (pypinyin reads these before its first import).
os.environ.setdefault("PYPINYIN_NO_PHRASES", "true")
os.environ.setdefault("PYPINYIN_NO_DICT_COPY", "true")

from pypinyin import Style, pinyin as _pypinyin  # noqa: E402

from . import data

RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"

#: Identifier systems that are NOT unique across organizations (outpatient, inpatient and case
#: numbers): they only identify a patient together with the assigning organization.
ORG_QUALIFIED_SYSTEMS = frozenset({
    "urn:oid:2.16.156.10011.1.11", "urn:oid:2.16.156.10011.1.12", "urn:oid:2.16.156.10011.1.13",
})

#: Identifier systems unique per person across the alliance (a different value in the same
#: system is evidence of a different person).
PERSON_UNIQUE_SYSTEMS = frozenset({
    "urn:oid:2.16.156.10011.1.2",   # health record number
    "urn:oid:2.16.156.10011.1.15",  # medical insurance card
    "urn:oid:2.16.156.10011.1.19",  # electronic health card
    "http://hl7.org/fhir/sid/passport-CHN",
})

# --------------------------------------------------------------------------- resident ID

_GB11643_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_GB11643_CHECK = "10X98765432"


class IdStatus(str, Enum):
    """Outcome of :func:`check_resident_id`."""

    VALID = "valid"
    INVALID_FORMAT = "invalid-format"
    INVALID_CHECK = "invalid-check"
    INVALID_DATE = "invalid-date"
    INVALID_REGION = "invalid-region"
    PLACEHOLDER = "placeholder"


@dataclass(frozen=True, slots=True)
class ResidentIdCheck:
    """A checked resident ID: the normalized 18-character value (or the cleaned input when it
    cannot be normalized), its status, and the birth date / sex it encodes when readable."""

    value: str
    status: IdStatus
    birth_date: str | None = None
    sex: str | None = None
    upgraded_from_15: bool = False

    @property
    def valid(self) -> bool:
        return self.status is IdStatus.VALID


def gb11643_check_character(first17: str) -> str:
    """Check character of an 18-digit resident ID (GB 11643-1999 §5, ISO 7064 MOD 11-2).

    Raises ``ValueError`` unless ``first17`` is 17 decimal digits.
    """
    if len(first17) != 17 or not first17.isdigit():
        raise ValueError("need the first 17 digits of a resident ID")
    total = sum(int(d) * w for d, w in zip(first17, _GB11643_WEIGHTS))
    return _GB11643_CHECK[total % 11]


def upgrade_resident_id_15(value15: str) -> str:
    """Upgrade a legacy 15-digit number (6 region + yymmdd + 3 sequence) to 18 characters by
    inserting the century ``19`` and appending the check character. Raises ``ValueError``."""
    if len(value15) != 15 or not value15.isdigit():
        raise ValueError("a legacy resident ID has 15 digits")
    first17 = value15[:6] + "19" + value15[6:]
    return first17 + gb11643_check_character(first17)


def _is_placeholder_digits(body: str) -> bool:
    """All one digit, a run of consecutive digits, or a zero region / birth date."""
    top = max(body.count(c) for c in set(body))
    if top >= len(body) - 1:
        return True  # 111111111111111111, 11111111111111111X …
    run = "01234567890123456789"
    if body[:10] in run or body[:10] in run[::-1]:
        return True  # 1234567890…, 0123456789…, 9876543210…
    return body[:6] == "000000" or body[6:14] in ("00000000", "19000101", "99999999")


def check_resident_id(raw: str | None) -> ResidentIdCheck | None:
    """Validate a resident ID (居民身份证号). Returns ``None`` for empty input.

    Accepts 18 characters (check character ``X`` in either case) or 15 legacy digits, which are
    upgraded. A failing check character, impossible birth date, unknown province or placeholder
    pattern yields a non-VALID status; such numbers are kept for display but never used for
    automatic linking (CONVENTIONS.md).
    """
    if raw is None:
        return None
    value = unicodedata.normalize("NFKC", str(raw)).strip().upper().replace(" ", "").replace("-", "")
    if not value:
        return None
    upgraded = False
    if len(value) == 15 and value.isdigit():
        if _is_placeholder_digits(value):
            return ResidentIdCheck(value, IdStatus.PLACEHOLDER)
        value = upgrade_resident_id_15(value)
        upgraded = True
    if len(value) != 18 or not value[:17].isdigit() or not (value[17].isdigit() or value[17] == "X"):
        return ResidentIdCheck(value, IdStatus.INVALID_FORMAT)
    if value in data.KNOWN_TEST_RESIDENT_IDS or _is_placeholder_digits(value):
        return ResidentIdCheck(value, IdStatus.PLACEHOLDER)
    if value[:2] not in data.PROVINCE_CODES:
        return ResidentIdCheck(value, IdStatus.INVALID_REGION)
    try:
        born = _dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return ResidentIdCheck(value, IdStatus.INVALID_DATE)
    if born.year < 1880:
        return ResidentIdCheck(value, IdStatus.INVALID_DATE)
    if gb11643_check_character(value[:17]) != value[17]:
        return ResidentIdCheck(value, IdStatus.INVALID_CHECK)
    sex = "male" if int(value[16]) % 2 else "female"
    return ResidentIdCheck(value, IdStatus.VALID, born.isoformat(), sex, upgraded)


# --------------------------------------------------------------------------- names

_CJK_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_NAME_NOISE_RE = re.compile(r"[\s·•・\.\-_,，。、'\"“”‘’()（）]+")

_SIMILAR: dict[str, frozenset[str]] = {}
for _group in data.SIMILAR_CHARACTER_GROUPS:
    for _ch in _group:
        _SIMILAR[_ch] = _SIMILAR.get(_ch, frozenset()) | frozenset(_group)


def has_cjk(text: str | None) -> bool:
    return bool(text) and _CJK_RE.search(text) is not None


def clean_chinese_name(text: str) -> str:
    """NFKC, drop spaces and separators (including the middle dot of minority and foreign
    names, which registration systems write inconsistently)."""
    return _NAME_NOISE_RE.sub("", unicodedata.normalize("NFKC", text))


def split_chinese_name(name: str) -> tuple[str, str]:
    """Split a Chinese full name into (surname, given name).

    Compound surnames (欧阳, 司马, 诸葛 …) take two characters when the name has at least three;
    otherwise the surname is the first character. ``("", "")`` for an empty name.
    """
    name = clean_chinese_name(name)
    if not name:
        return "", ""
    if len(name) >= 3 and name[:2] in data.COMPOUND_SURNAMES:
        return name[:2], name[2:]
    return name[:1], name[1:]


@lru_cache(maxsize=65536)
def char_readings(ch: str) -> tuple[str, ...]:
    """Toneless pinyin readings of one character, most common first (``v`` for ü)."""
    if not _CJK_RE.match(ch):
        return (ch.lower(),)
    readings = _pypinyin(ch, style=Style.NORMAL, heteronym=True, v_to_u=False)[0]
    out: list[str] = []
    for r in readings:
        r = r.lower().replace("ü", "v")
        if r not in out:
            out.append(r)
    return tuple(out) or (ch,)


def surname_pinyin(surname: str) -> str:
    """Toneless pinyin of a surname with the surname reading for polyphonic characters
    (单 shan, 曾 zeng, 仇 qiu, 解 xie, 区 ou, 查 zha, 朴 piao, 尉迟 yuchi …)."""
    if surname in data.SURNAME_READINGS:
        return data.SURNAME_READINGS[surname]
    return "".join(data.SURNAME_READINGS.get(c) or char_readings(c)[0] for c in surname)


def given_pinyin(given: str) -> str:
    """Toneless pinyin of a given name, most common reading of each character."""
    return "".join(char_readings(c)[0] for c in given)


def given_pinyin_variants(given: str, limit: int = 16) -> frozenset[str]:
    """All toneless readings of a given name (polyphonic characters such as 乐 le/yue),
    bounded to ``limit`` combinations."""
    combos = [""]
    for c in given:
        combos = [p + r for p in combos for r in char_readings(c)][:limit]
    return frozenset(combos)


def similar_characters(a: str, b: str) -> bool:
    """True when two characters are in the table of visually similar characters."""
    return a != b and b in _SIMILAR.get(a, ())


def homophones(a: str, b: str) -> bool:
    """True when two characters share a toneless reading."""
    return a != b and bool(set(char_readings(a)) & set(char_readings(b)))


# pinyin-only names --------------------------------------------------------------------

_SURNAME_PINYIN: frozenset[str] = frozenset(surname_pinyin(s) for s in data.SURNAME_FREQUENCY)
_PY_TOKEN_RE = re.compile(r"[a-zv]+")


def normalize_pinyin(text: str) -> str:
    """Lower-case toneless pinyin without separators: strips tone marks and digits, maps ü,
    ``u:`` and ``yu`` after l/n (passport spelling LYU/NYU) to ``v``."""
    t = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).lower())
    t = t.replace("u\u0308", "v").replace("u:", "v")
    t = "".join(c for c in t if not unicodedata.combining(c))
    t = re.sub(r"(?<![a-z])([ln])yu", r"\1v", t)
    return "".join(_PY_TOKEN_RE.findall(t))


def parse_pinyin_name(text: str) -> tuple[str, str, bool]:
    """Parse a pinyin-only full name into (surname, given, order_ambiguous).

    Handles ``"ZHANG SAN"``, ``"Zhang, San"`` (comma: surname first), ``"San ZHANG"`` (the
    all-capitals token is the surname), ``"San Zhang"`` (the token that is a known surname
    reading is the surname), ``"Ouyang Xiu"``, ``"Zhang Xiao-Ming"``. ``order_ambiguous`` is true
    when both ends could be a surname and nothing else decides.
    """
    raw = unicodedata.normalize("NFKC", text).strip()
    if "," in raw:
        fam, giv = raw.split(",", 1)
        return normalize_pinyin(fam), normalize_pinyin(giv), False
    tokens = [t for t in re.split(r"[\s]+", raw) if t]
    if not tokens:
        return "", "", False
    if len(tokens) == 1:
        whole = normalize_pinyin(tokens[0])
        for n in (6, 5, 4, 3, 2):  # glued "zhangsan": split after a known surname reading
            if len(whole) > n and whole[:n] in _SURNAME_PINYIN:
                return whole[:n], whole[n:], False
        return "", whole, False
    norm = [normalize_pinyin(t) for t in tokens]
    caps = [t.isupper() and len(t) > 1 for t in tokens]
    if caps[-1] and not any(caps[:-1]):
        return norm[-1], "".join(norm[:-1]), False
    if caps[0] and not any(caps[1:]):
        return norm[0], "".join(norm[1:]), False
    first_is = norm[0] in _SURNAME_PINYIN
    last_is = norm[-1] in _SURNAME_PINYIN
    if last_is and not first_is:
        return norm[-1], "".join(norm[:-1]), False
    return norm[0], "".join(norm[1:]), first_is and last_is and len(tokens) == 2


def fuzzy_pinyin_key(py: str) -> str:
    """Key merging dialect-prone pinyin confusions: zh/z, ch/c, sh/s, n/l, -ng/-n, ü/u."""
    k = py.replace("zh", "z").replace("ch", "c").replace("sh", "s").replace("ng", "n")
    return k.replace("l", "n").replace("v", "u")


# newborn placeholders --------------------------------------------------------------------

_NEWBORN_ZH_RE = re.compile(
    r"^(?P<parent>.*?)(?:之)?(?P<kind>子|女|儿子|女儿|男婴|女婴|婴儿|婴|新生儿|宝宝|之子|之女|BB|bb)"
    r"(?P<order>[0-9一二三四大小甲乙AB]?)$"
)
_NEWBORN_WORDS_RE = re.compile(r"\b(baby|infant|newborn|b/o|bb|boy of|girl of)\b", re.I)


def parse_newborn_placeholder(name: str) -> tuple[str, str] | None:
    """Recognise a newborn registered under a parent's name: ``张三之子``, ``王芳之女2``,
    ``李娜婴``, ``新生儿``, ``Baby of Wang Fang``. Returns (parent name, birth order or "")
    or ``None`` when the name looks like a real name."""
    text = clean_chinese_name(name) if has_cjk(name) else name.strip()
    if not text:
        return None
    if has_cjk(text):
        if any(w in text for w in ("新生儿", "婴", "之子", "之女", "宝宝", "儿子", "女儿")):
            m = _NEWBORN_ZH_RE.match(text)
            if m:
                return m.group("parent"), m.group("order")
            return text.replace("新生儿", "").replace("婴", ""), ""
        return None
    if _NEWBORN_WORDS_RE.search(text):
        parent = _NEWBORN_WORDS_RE.sub(" ", text)
        parent = re.sub(r"\b(of|the)\b", " ", parent, flags=re.I)
        order = re.findall(r"\b([12AB])\b", parent)
        parent = re.sub(r"\b([12AB])\b", " ", parent)
        return normalize_pinyin(parent), order[0] if order else ""
    return None


# --------------------------------------------------------------------------- phones

def normalize_phone(raw: str | None) -> str | None:
    """Normalize a Chinese phone number; ``None`` when empty, malformed or a placeholder.

    Mobiles become 11 digits ``1[3-9]xxxxxxxxx`` (``+86``/``0086``/``86`` stripped); landlines
    become ``0`` + area code + 7–8 digits (an extension after ``-``/``转`` is dropped).
    """
    if not raw:
        return None
    text = unicodedata.normalize("NFKC", str(raw)).strip()
    text = re.split(r"(?:转|ext\.?|x)\s*\d+$", text, flags=re.I)[0]
    digits = re.sub(r"\D", "", text)
    if digits.startswith("0086"):
        digits = digits[4:]
    elif text.startswith("+86") or (len(digits) == 13 and digits.startswith("861")):
        digits = digits[2:]
    if len(digits) == 11 and re.fullmatch(r"1[3-9]\d{9}", digits):
        pass
    elif re.fullmatch(r"0[1-9]\d{8,10}", digits):
        pass
    elif re.fullmatch(r"[1-9]\d{9,10}", digits) and not digits.startswith("1"):
        digits = "0" + digits  # area code written without its trunk 0
    else:
        return None
    if digits in data.PLACEHOLDER_PHONES or len(set(digits[-8:])) == 1:
        return None
    return digits


# --------------------------------------------------------------------------- addresses

_ADDR_NOISE_RE = re.compile(r"[\s,，。、;；:：#\-—()（）]+")
_PROVINCE_RE = re.compile(r"^(.{2,3}?(?:省|自治区)|北京市?|天津市?|上海市?|重庆市?|"
                          r"内蒙古|广西|西藏|宁夏|新疆|香港|澳门)")
_CITY_RE = re.compile(r"^(.{2,4}?(?:市|自治州|州|地区|盟))")
_DISTRICT_RE = re.compile(r"^(.{1,4}?(?:区|县|旗|市))")
_CN_DIGITS = str.maketrans("〇一二三四五六七八九", "0123456789")


@dataclass(frozen=True, slots=True)
class Address:
    """An address split for comparison: province / city / district and the street-level
    rest, all normalized (NFKC, no spaces or punctuation, Chinese digits as Arabic)."""

    province: str = ""
    city: str = ""
    district: str = ""
    street: str = ""

    @property
    def full(self) -> str:
        return self.province + self.city + self.district + self.street


def normalize_address(text: str | None = None, *, province: str | None = None,
                      city: str | None = None, district: str | None = None,
                      line: str | None = None) -> Address | None:
    """Build an :class:`Address` from free text and/or FHIR parts (state, city, district,
    line). Missing administrative parts are peeled off the text when recognisable."""
    def clean(s: str | None) -> str:
        return _ADDR_NOISE_RE.sub("", unicodedata.normalize("NFKC", s or "")).translate(_CN_DIGITS)

    prov, cit, dist, rest = clean(province), clean(city), clean(district), clean(line)
    if not rest:
        rest = clean(text)
        for part in (prov, cit, dist):
            if part and rest.startswith(part):
                rest = rest[len(part):]
    if not prov:
        m = _PROVINCE_RE.match(rest)
        if m:
            prov, rest = m.group(1), rest[m.end():]
    if not cit:
        m = _CITY_RE.match(rest)
        if m:
            cit, rest = m.group(1), rest[m.end():]
    if not dist:
        m = _DISTRICT_RE.match(rest)
        if m and len(rest) > m.end():
            dist, rest = m.group(1), rest[m.end():]
    if not (prov or cit or dist or rest):
        return None
    strip = lambda s, suf: s[: -len(suf)] if s.endswith(suf) and len(s) > len(suf) + 1 else s
    prov = strip(strip(prov, "省"), "市")
    cit = strip(cit, "市")
    return Address(prov, cit, dist, rest.lower())


# --------------------------------------------------------------------------- demographics

_SEX_MAP = {
    "male": "male", "m": "male", "1": "male", "男": "male",
    "female": "female", "f": "female", "2": "female", "女": "female",
    "other": "other", "unknown": None, "0": None, "9": None, "u": None, "": None,
}


def normalize_sex(raw: str | None) -> str | None:
    """FHIR administrative-gender (``male``/``female``/``other``) from FHIR or GB/T 2261.1
    codes; unknown and unspecified become ``None`` (not evidence either way)."""
    if raw is None:
        return None
    return _SEX_MAP.get(str(raw).strip().lower())


def normalize_birth_date(raw: str | None) -> str | None:
    """ISO ``YYYY-MM-DD`` from ``YYYY-MM-DD``, ``YYYYMMDD``, ``YYYY/M/D`` or a FHIR dateTime;
    ``None`` when absent, partial or impossible."""
    if not raw:
        return None
    m = re.match(r"^\s*(\d{4})[-/.年]?(\d{1,2})[-/.月]?(\d{1,2})", str(raw))
    if not m:
        return None
    try:
        return _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3))).isoformat()
    except ValueError:
        return None


@dataclass(slots=True)
class Demographics:
    """The demographic facts of one patient record, normalized for matching.

    Constructor fields are what a source said; the fields after ``derived`` are computed in
    ``__post_init__`` and must not be passed. Build it with :func:`from_fhir_patient` or
    :func:`make_demographics`.
    """

    name_zh: str | None = None            # Chinese full name as written (cleaned)
    name_pinyin: str | None = None        # pinyin full name as received
    family_zh: str | None = None          # explicit split when the source gave one
    given_zh: str | None = None
    sex: str | None = None                # male / female / other / None
    birth_date: str | None = None         # ISO date
    resident_id: str | None = None        # raw as received
    identifiers: tuple[tuple[str, str], ...] = ()
    phones: tuple[str, ...] = ()
    address: Address | None = None
    multiple_birth: bool | None = None
    birth_order: int | None = None
    source: str | None = None             # organization / meta.source

    # derived ----------------------------------------------------------------------------
    surname: str = field(default="", init=False)        # Chinese surname ("" if unknown)
    given: str = field(default="", init=False)          # Chinese given name
    surname_py: str = field(default="", init=False)
    given_py: str = field(default="", init=False)
    given_py_variants: frozenset[str] = field(default=frozenset(), init=False)
    pinyin_order_ambiguous: bool = field(default=False, init=False)
    newborn_parent: str | None = field(default=None, init=False)  # set if placeholder name
    newborn_order: str = field(default="", init=False)
    rid: ResidentIdCheck | None = field(default=None, init=False)
    rid_usable: bool = field(default=False, init=False)  # valid AND consistent with record
    birth_date_from_id: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self._derive_names()
        self.sex = normalize_sex(self.sex)
        self.birth_date = normalize_birth_date(self.birth_date)
        self.phones = tuple(dict.fromkeys(p for p in (normalize_phone(x) for x in self.phones) if p))
        self._derive_resident_id()

    def _derive_names(self) -> None:
        zh = clean_chinese_name(self.name_zh) if self.name_zh else ""
        if not zh and self.family_zh:
            zh = clean_chinese_name(self.family_zh + (self.given_zh or ""))
        self.name_zh = zh or None
        for candidate in (zh, self.name_pinyin or ""):
            parsed = parse_newborn_placeholder(candidate) if candidate else None
            if parsed is not None:
                self.newborn_parent, self.newborn_order = parsed
                return
        if zh and has_cjk(zh):
            if self.family_zh and zh.startswith(clean_chinese_name(self.family_zh)):
                fam = clean_chinese_name(self.family_zh)
                self.surname, self.given = fam, zh[len(fam):]
            else:
                self.surname, self.given = split_chinese_name(zh)
            self.surname_py = surname_pinyin(self.surname)
            self.given_py = given_pinyin(self.given)
            self.given_py_variants = given_pinyin_variants(self.given)
        elif self.name_pinyin or zh:
            fam, giv, amb = parse_pinyin_name(self.name_pinyin or zh)
            self.surname_py, self.given_py, self.pinyin_order_ambiguous = fam, giv, amb
            self.given_py_variants = frozenset({giv}) if giv else frozenset()

    def _derive_resident_id(self) -> None:
        self.rid = check_resident_id(self.resident_id)
        rid = self.rid
        if rid is None or not rid.valid or self.newborn_parent is not None:
            return
        if self.sex in ("male", "female") and rid.sex != self.sex:
            return
        if self.birth_date is None:
            self.birth_date, self.birth_date_from_id = rid.birth_date, True
        elif self.birth_date != rid.birth_date and _swap_day_month(self.birth_date) != rid.birth_date:
            return  # e.g. a newborn registered with the mother's ID
        self.rid_usable = True

    @property
    def has_name(self) -> bool:
        return bool(self.surname_py or self.given_py)

    @property
    def is_newborn_placeholder(self) -> bool:
        return self.newborn_parent is not None


def _swap_day_month(iso: str) -> str | None:
    y, m, d = iso.split("-")
    try:
        return _dt.date(int(y), int(d), int(m)).isoformat()
    except ValueError:
        return None


def make_demographics(**kwargs) -> Demographics:
    """Keyword-argument convenience constructor (same fields as :class:`Demographics`);
    ``phones`` and ``identifiers`` may be lists, ``address`` may be a string."""
    if isinstance(kwargs.get("address"), str):
        kwargs["address"] = normalize_address(kwargs["address"])
    for k in ("phones", "identifiers"):
        if k in kwargs:
            kwargs[k] = tuple(tuple(x) if isinstance(x, list) else x for x in kwargs[k])
    return Demographics(**kwargs)


def _identifier_key(ident: dict, source: str | None) -> tuple[str, str] | None:
    system, value = ident.get("system"), ident.get("value")
    if not system or not value:
        return None
    value = unicodedata.normalize("NFKC", str(value)).strip().upper()
    if system in ORG_QUALIFIED_SYSTEMS:
        assigner = (ident.get("assigner") or {}).get("reference") or \
                   ((ident.get("assigner") or {}).get("identifier") or {}).get("value") or source
        if not assigner:
            return None  # not unique without its organization: useless for matching
        system = f"{system}@{assigner}"
    return system, value


def from_fhir_patient(patient: dict) -> Demographics:
    """Build :class:`Demographics` from a FHIR R4 Patient resource as a JSON dict.

    Names: a HumanName with Chinese characters gives the Chinese name (``text``, else family +
    given); an all-Latin HumanName (any ``use``) gives the pinyin name. Identifiers: the
    resident ID system (``urn:oid:2.16.156.10011.1.3``) is the resident ID; outpatient /
    inpatient / case numbers are qualified by their assigner (or ``meta.source``). Phones from
    ``telecom`` (system phone/sms), address from the first ``address``, multiple birth from
    ``multipleBirth[x]``. The organization comes from ``meta.source``.
    """
    meta = patient.get("meta") or {}
    source = meta.get("source")
    name_zh = family_zh = given_zh = name_py = None
    for hn in patient.get("name") or []:
        family = hn.get("family") or ""
        given = "".join(hn.get("given") or [])
        text = hn.get("text") or ""
        if has_cjk(text) or has_cjk(family) or has_cjk(given):
            if name_zh is None:
                name_zh = text if has_cjk(text) else family + given
                family_zh, given_zh = (family or None), (given or None)
        elif name_py is None and (text or family or given):
            name_py = text or (f"{family}, {' '.join(hn.get('given') or [])}" if family else given)
    resident_id = None
    idents: list[tuple[str, str]] = []
    for ident in patient.get("identifier") or []:
        if ident.get("system") == RESIDENT_ID_SYSTEM:
            if resident_id is None:
                resident_id = ident.get("value")
            continue
        key = _identifier_key(ident, source)
        if key:
            idents.append(key)
    phones = tuple(t.get("value") for t in patient.get("telecom") or []
                   if t.get("system") in ("phone", "sms", None) and t.get("value"))
    address = None
    for a in patient.get("address") or []:
        address = normalize_address(a.get("text"), province=a.get("state"), city=a.get("city"),
                                    district=a.get("district"), line="".join(a.get("line") or []))
        if address:
            break
    mb_bool, mb_int = patient.get("multipleBirthBoolean"), patient.get("multipleBirthInteger")
    multiple = True if (mb_bool or (mb_int is not None and mb_int > 0)) else (False if mb_bool is False else None)
    return Demographics(
        name_zh=name_zh, name_pinyin=name_py, family_zh=family_zh, given_zh=given_zh,
        sex=normalize_sex(patient.get("gender")), birth_date=patient.get("birthDate"),
        resident_id=resident_id, identifiers=tuple(idents), phones=phones, address=address,
        multiple_birth=multiple, birth_order=mb_int if isinstance(mb_int, int) and mb_int > 0 else None,
        source=source,
    )
