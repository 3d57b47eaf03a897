"""Hospital lab code files → ConceptMaps, and standardize() adding codings beside local ones."""

from decimal import Decimal

import pytest

from terminology import UNIT_PRODUCT_PROPERTY, InvalidResource, read_lab_code_csv, ucum, urls

from .conftest import DATA

H001_LIS = "urn:yilian:h001:lis"
H002_LAB = urls.local_code_system("H002")
CATALOGUE = urls.code_system(urls.LAB_CATALOGUE)


def test_csv_becomes_one_concept_map_per_organization():
    [cm] = read_lab_code_csv(DATA / "lab-codes-h001.csv", "H001")
    assert cm["url"] == urls.lab_local_concept_map("H001")
    assert [(g["source"], g["target"]) for g in cm["group"]] == [(H001_LIS, urls.LOINC), (H001_LIS, CATALOGUE)]


def test_gb18030_file_with_blank_local_system_uses_the_default_system():
    [cm] = read_lab_code_csv((DATA / "lab-codes-h002.csv").read_bytes(), "H002")
    assert cm["group"][0]["source"] == H002_LAB
    assert cm["group"][0]["element"][0]["display"] == "血糖(空腹)"


def test_translate_local_code_gives_loinc_and_catalogue_with_unit(with_labs):
    results = with_labs.translate(H001_LIS, "GLU")
    assert [(t.system, t.code) for t in results] == [(urls.LOINC, "14749-6"), (CATALOGUE, "CAT-GLU")]
    assert results[0].product(UNIT_PRODUCT_PROPERTY).value == "mmol/L"
    [wbc] = with_labs.translate(H002_LAB, "1003", target_system=urls.LOINC)
    assert wbc.product(UNIT_PRODUCT_PROPERTY).value == "10*3/uL"  # file said 10^3/uL


def test_two_hospitals_reach_the_same_catalogue_item_with_convertible_units(with_labs):
    h1 = with_labs.translate(H001_LIS, "WBC", target_system=CATALOGUE)[0]
    h2 = with_labs.translate(H002_LAB, "1003", target_system=CATALOGUE)[0]
    assert h1.code == h2.code == "CAT-WBC"
    u1, u2 = h1.product(UNIT_PRODUCT_PROPERTY).value, h2.product(UNIT_PRODUCT_PROPERTY).value
    assert ucum.convert(Decimal("6.4"), u2, u1) == Decimal("6.4")
    # glucose: same catalogue item, but mmol/L vs mg/dL needs a molar mass: refused
    g1 = with_labs.translate(H001_LIS, "GLU", target_system=CATALOGUE)[0]
    g2 = with_labs.translate(H002_LAB, "1001", target_system=CATALOGUE)[0]
    assert g1.code == g2.code == "CAT-GLU"
    with pytest.raises(ucum.IncommensurableUnits):
        ucum.convert(Decimal("5.5"), g1.product(UNIT_PRODUCT_PROPERTY).value, g2.product(UNIT_PRODUCT_PROPERTY).value)


def test_standardize_keeps_the_local_coding_and_adds_standard_ones(with_labs):
    cc = {"coding": [{"system": H001_LIS, "code": "HBA1C", "display": "糖化血红蛋白"}], "text": "HbA1c"}
    out = with_labs.standardize(cc, "H001")
    assert out["coding"] == [
        {"system": H001_LIS, "code": "HBA1C", "display": "糖化血红蛋白"},
        {"system": urls.LOINC, "code": "4548-4"},
        {"system": CATALOGUE, "code": "CAT-HBA1C"},
    ]
    assert out["text"] == "HbA1c"
    assert cc["coding"] == [{"system": H001_LIS, "code": "HBA1C", "display": "糖化血红蛋白"}]  # input untouched


def test_standardize_different_local_codes_meet_on_the_catalogue(with_labs):
    a = with_labs.standardize({"coding": [{"system": H001_LIS, "code": "HBA1C"}]}, "H001")
    b = with_labs.standardize({"coding": [{"code": "1002", "display": "糖化血红蛋白A1c"}]}, "H002")
    assert b["coding"][0] == {"code": "1002", "display": "糖化血红蛋白A1c"}  # kept as sent, without system
    assert {"system": urls.LOINC, "code": "59261-8"} in b["coding"]
    assert {"system": CATALOGUE, "code": "CAT-HBA1C"} in a["coding"] and {"system": CATALOGUE, "code": "CAT-HBA1C"} in b["coding"]


def test_standardize_is_idempotent_and_limited_to_the_organization(with_labs):
    cc = {"coding": [{"system": H001_LIS, "code": "GLU"}]}
    once = with_labs.standardize(cc, "H001")
    assert with_labs.standardize(once, "H001") == once
    assert with_labs.standardize(cc, "H002") == cc  # H002's map does not know H001's codes
    assert with_labs.standardize(cc, "H999") == cc
    only_loinc = with_labs.standardize(cc, "H001", target_systems=[urls.LOINC])
    assert [c["system"] for c in only_loinc["coding"]] == [H001_LIS, urls.LOINC]


def test_unmapped_local_code_adds_nothing(with_labs):
    cc = {"coding": [{"system": H001_LIS, "code": "XQ-SPECIAL"}]}
    assert with_labs.standardize(cc, "H001") == cc
    assert with_labs.translate(H001_LIS, "XQ-SPECIAL") == []


@pytest.mark.parametrize("text, message", [
    ("local_code,local_display,loinc,catalogue_code\nA,a,1-1,C\n", "missing column"),
    ("local_code,local_display,loinc,catalogue_code,unit_ucum\nA,a,1-1,C,furlongs\n", "line 2"),
    ("local_code,local_display,loinc,catalogue_code,unit_ucum\nA,a,1-1,C,g\nA,a,1-1,C,g\n", "listed twice"),
])
def test_bad_lab_code_files_are_rejected_with_the_line(text, message):
    with pytest.raises(InvalidResource, match=message):
        read_lab_code_csv(text, "H001")


def test_org_code_column_splits_a_regional_file():
    text = ("org_code,local_code,local_display,loinc,catalogue_code,unit_ucum\n"
            "H001,GLU,葡萄糖,14749-6,CAT-GLU,mmol/L\nH002,1001,血糖,2345-7,CAT-GLU,mg/dL\n")
    maps = read_lab_code_csv(text)
    assert [m["id"] for m in maps] == ["lab-local-H001", "lab-local-H002"]
