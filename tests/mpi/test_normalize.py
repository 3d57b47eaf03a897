"""Normalization: GB 11643 resident IDs, Chinese names and pinyin, phones, addresses, FHIR."""

import pytest

from hub.mpi import (
    RESIDENT_ID_SYSTEM, IdStatus, check_resident_id, from_fhir_patient, gb11643_check_character,
    normalize_address, normalize_phone, normalize_pinyin, parse_newborn_placeholder,
    parse_pinyin_name, split_chinese_name, surname_pinyin, upgrade_resident_id_15,
)
from hub.mpi.normalize import given_pinyin


def _valid(first17: str) -> str:
    return first17 + gb11643_check_character(first17)


# --- GB 11643 ---------------------------------------------------------------------------

def test_check_character_matches_worked_examples():
    # the two examples printed in GB 11643-1999
    assert gb11643_check_character("11010519491231002") == "X"
    assert gb11643_check_character("44052418800101001") == "4"


def test_valid_id_yields_birth_date_and_sex():
    chk = check_resident_id(_valid("42010219900307122"))
    assert chk.status is IdStatus.VALID
    assert chk.birth_date == "1990-03-07"
    assert chk.sex == "female"  # 17th digit 2 is even
    assert check_resident_id(_valid("42010219900307123")).sex == "male"


def test_lower_case_x_and_spaces_are_normalized():
    rid = next(r for r in (_valid(f"420102198511110{i:02d}") for i in range(100)) if r.endswith("X"))
    chk = check_resident_id(" " + rid.lower()[:6] + " " + rid.lower()[6:] + " ")
    assert chk.value == rid and chk.valid


def test_wrong_check_character_is_invalid():
    rid = _valid("42010219900307123")
    wrong = rid[:17] + ("0" if rid[17] != "0" else "1")
    assert check_resident_id(wrong).status is IdStatus.INVALID_CHECK


def test_single_digit_typo_is_always_detected():
    rid = _valid("42010219900307123")
    for pos in range(17):
        for d in "0123456789":
            if d != rid[pos]:
                assert not check_resident_id(rid[:pos] + d + rid[pos + 1:]).valid


@pytest.mark.parametrize("value,status", [
    ("42010219901307123X", IdStatus.INVALID_DATE),
    ("99010219900307123X", IdStatus.INVALID_REGION),
    ("4201021990030712", IdStatus.INVALID_FORMAT),
    ("420102199003071A3X", IdStatus.INVALID_FORMAT),
])
def test_malformed_ids(value, status):
    assert check_resident_id(value).status is status


def test_fifteen_digit_legacy_number_upgrades_to_eighteen():
    legacy = "420102900307123"
    assert upgrade_resident_id_15(legacy) == _valid("42010219900307123")
    chk = check_resident_id(legacy)
    assert chk.valid and chk.upgraded_from_15 and chk.value == _valid("42010219900307123")


@pytest.mark.parametrize("value", [
    "111111111111111111", "000000000000000000", "123456789012345678", "11010519491231002X",
    "420000000000000000", "111111111111111",
])
def test_placeholder_ids_are_flagged(value):
    assert check_resident_id(value).status is IdStatus.PLACEHOLDER


# --- names ------------------------------------------------------------------------------

@pytest.mark.parametrize("name,surname,given", [
    ("张三", "张", "三"), ("欧阳修", "欧阳", "修"), ("司马相如", "司马", "相如"),
    ("诸葛亮", "诸葛", "亮"), ("上官婉儿", "上官", "婉儿"), ("尉迟恭", "尉迟", "恭"),
    ("司马", "司", "马"),  # two characters: single surname + given name
    ("张 三", "张", "三"), ("阿依·买买提", "阿", "依买买提"),
])
def test_surname_split(name, surname, given):
    assert split_chinese_name(name) == (surname, given)


@pytest.mark.parametrize("surname,reading", [
    ("单", "shan"), ("曾", "zeng"), ("仇", "qiu"), ("解", "xie"), ("区", "ou"), ("查", "zha"),
    ("朴", "piao"), ("尉迟", "yuchi"), ("乐", "yue"), ("覃", "qin"), ("欧阳", "ouyang"), ("吕", "lv"),
])
def test_polyphonic_surnames_use_surname_reading(surname, reading):
    assert surname_pinyin(surname) == reading


def test_given_name_pinyin_is_toneless():
    assert given_pinyin("晓明") == "xiaoming"


@pytest.mark.parametrize("text,expected", [
    ("ZHANG SAN", ("zhang", "san", False)),
    ("Zhang, San", ("zhang", "san", False)),
    ("San Zhang", ("zhang", "san", False)),
    ("San ZHANG", ("zhang", "san", False)),
    ("Zhang Xiao-Ming", ("zhang", "xiaoming", False)),
    ("OUYANG Xiu", ("ouyang", "xiu", False)),
    ("LYU Bu", ("lv", "bu", False)),
    ("Lü Bu", ("lv", "bu", True)),  # 卜 is a surname too
    ("zhangsan", ("zhang", "san", False)),
    ("Li Ming", ("li", "ming", True)),  # both could be surnames: order kept, flagged
])
def test_pinyin_name_parsing(text, expected):
    assert parse_pinyin_name(text) == expected


def test_normalize_pinyin_strips_tones():
    assert normalize_pinyin("Zhāng Sān") == "zhangsan"
    assert normalize_pinyin("nǚ") == "nv"


@pytest.mark.parametrize("name,parent", [
    ("张三之子", "张三"), ("王芳之女2", "王芳"), ("李娜婴", "李娜"), ("Baby of Wang Fang", "wangfang"),
])
def test_newborn_placeholders_recognized(name, parent):
    assert parse_newborn_placeholder(name)[0] == parent


@pytest.mark.parametrize("name", ["张子豪", "王女士", "李婴宁" if False else "李宁", "Zhang San"])
def test_real_names_are_not_newborn_placeholders(name):
    assert parse_newborn_placeholder(name) is None


# --- phones and addresses ---------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    ("+86 138 1234 5678", "13812345678"), ("0086-13812345678", "13812345678"),
    ("138-1234-5678", "13812345678"), ("027-87654321", "02787654321"),
    ("(027)87654321转123", "02787654321"), ("+86 27 8765 4321", "02787654321"),
    ("13800138000", None), ("12345", None), ("11111111111", None), ("", None),
])
def test_phone_normalization(raw, expected):
    assert normalize_phone(raw) == expected


def test_address_text_and_parts_normalize_alike():
    a = normalize_address("湖北省武汉市江岸区解放大道100号3栋201室")
    b = normalize_address(None, province="湖北省", city="武汉市", district="江岸区", line="解放大道一〇〇号3栋201室")
    assert a == b
    assert a.district == "江岸区" and a.street.startswith("解放大道100号")


# --- FHIR ---------------------------------------------------------------------------------

def test_from_fhir_patient_reads_names_ids_phones_address():
    rid = _valid("42010219900307122")
    demo = from_fhir_patient({
        "resourceType": "Patient", "meta": {"source": "urn:yilian:org:WHZX"},
        "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": rid},
                       {"system": "urn:oid:2.16.156.10011.1.11", "value": "MZ001"},
                       {"system": "urn:oid:2.16.156.10011.1.19", "value": "hc123"}],
        "name": [{"use": "official", "family": "欧阳", "given": ["晓明"]},
                 {"use": "usual", "text": "OUYANG Xiaoming"}],
        "gender": "female", "birthDate": "1990-03-07",
        "telecom": [{"system": "phone", "value": "+86 138 1234 5678"}, {"system": "email", "value": "a@b"}],
        "address": [{"text": "湖北省武汉市江岸区解放大道100号"}],
        "multipleBirthInteger": 2,
    })
    assert (demo.surname, demo.given, demo.surname_py, demo.given_py) == ("欧阳", "晓明", "ouyang", "xiaoming")
    assert demo.rid_usable and demo.rid.value == rid
    assert ("urn:oid:2.16.156.10011.1.11@urn:yilian:org:WHZX", "MZ001") in demo.identifiers
    assert ("urn:oid:2.16.156.10011.1.19", "HC123") in demo.identifiers
    assert demo.phones == ("13812345678",)
    assert demo.address.district == "江岸区"
    assert demo.multiple_birth and demo.birth_order == 2
    assert demo.source == "urn:yilian:org:WHZX"


def test_pinyin_only_patient():
    demo = from_fhir_patient({"resourceType": "Patient", "name": [{"text": "San ZHANG"}], "gender": "male"})
    assert (demo.surname, demo.surname_py, demo.given_py) == ("", "zhang", "san")


def test_resident_id_inconsistent_with_birth_date_is_not_usable():
    mother_id = _valid("42010219900307123")
    demo = from_fhir_patient({"resourceType": "Patient", "name": [{"text": "李小宝"}], "gender": "female",
                              "birthDate": "2025-06-01",
                              "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": mother_id}]})
    assert demo.rid.valid and not demo.rid_usable


def test_birth_date_is_taken_from_a_valid_id_when_missing():
    demo = from_fhir_patient({"resourceType": "Patient", "name": [{"text": "李四"}],
                              "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": _valid("42010219900307123")}]})
    assert demo.birth_date == "1990-03-07" and demo.birth_date_from_id and demo.rid_usable
