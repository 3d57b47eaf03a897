"""GB/T 2261.1 sex, GB/T 2261.2 marital status and GB/T 3304 ethnicity, and their maps."""

import pytest

from terminology import Terminology, urls

SEX = urls.code_system(urls.GBT_2261_1_SEX)
MARITAL = urls.code_system(urls.GBT_2261_2_MARITAL)
ETHNIC = urls.code_system(urls.GBT_3304_ETHNICITY)


def test_gbt_2261_1_codes_and_oid(packaged):
    assert [(c, d) for _, c, d in packaged.expand(urls.value_set(urls.GBT_2261_1_SEX))] == [
        ("0", "未知的性别"), ("1", "男性"), ("2", "女性"), ("9", "未说明的性别")]
    cs = packaged.code_system(SEX).resource
    assert cs["identifier"] == [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.16.156.10011.2.3.3.4"}]
    assert packaged.lookup(SEX, "1").display_for("en") == "Male"


@pytest.mark.parametrize("code, gender", [("0", "unknown"), ("1", "male"), ("2", "female"), ("9", "unknown")])
def test_gbt_2261_1_maps_to_administrative_gender(packaged, code, gender):
    [t] = packaged.translate(SEX, code, target_system=urls.ADMINISTRATIVE_GENDER)
    assert t.code == gender


def test_gbt_2261_2_hierarchy_and_map(packaged):
    assert packaged.expand(urls.value_set(urls.GBT_2261_2_MARITAL))[1:5] == [
        (MARITAL, "20", "已婚"), (MARITAL, "21", "初婚"), (MARITAL, "22", "再婚"), (MARITAL, "23", "复婚")]
    assert {p.value for p in packaged.lookup(MARITAL, "22").properties if p.code == "parent"} == {"20"}
    [t] = packaged.translate(MARITAL, "22")
    assert (t.system, t.code, t.equivalence) == (urls.V3_MARITAL_STATUS, "M", "wider")
    assert [(t.system, t.code) for t in packaged.translate(MARITAL, "90")] == [(urls.V3_NULL_FLAVOR, "UNK")]


def test_gbt_3304_has_the_56_nationalities(packaged):
    members = packaged.expand(urls.value_set(urls.GBT_3304_ETHNICITY))
    assert len(members) == 56
    assert members[0] == (ETHNIC, "01", "汉族") and members[-1] == (ETHNIC, "56", "基诺族")
    tibetan = packaged.lookup(ETHNIC, "04")
    assert tibetan.display == "藏族"
    assert tibetan.display_for("zh-Latn") == "Zang"
    assert ("alpha-code", "ZA") in {(p.code, p.value) for p in tibetan.properties}


def test_hub_base_is_configurable():
    t = Terminology.load_default(base="https://hub.example.cn/fhir/")
    sex = "https://hub.example.cn/fhir/CodeSystem/gbt-2261.1-sex"
    assert t.lookup(sex, "2").display == "女性"
    assert [x.code for x in t.translate(sex, "2")] == ["female"]
    assert t.lookup(SEX, "2") is None
