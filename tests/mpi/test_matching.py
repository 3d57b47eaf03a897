"""Match decisions: deterministic rules, Fellegi–Sunter levels, and the guards against the
classic false links (twins, siblings, namesakes, newborns, placeholder IDs)."""

from hub.mpi import (
    FellegiSunter, Outcome, PatientMatcher, Thresholds, blocking_keys, compare_demographics,
    gb11643_check_character, jaro_winkler, make_demographics,
)
from hub.mpi.compare import birth_date_level

M = PatientMatcher()


def rid(first17: str) -> str:
    return first17 + gb11643_check_character(first17)


def person(**kw):
    base = dict(name_zh="张伟明", sex="male", birth_date="1990-03-05")
    base.update(kw)
    return make_demographics(**base)


HOME = dict(phones=["13812345678"], address="湖北省武汉市江岸区解放大道100号3栋201室")


# --- deterministic rules ------------------------------------------------------------------

def test_same_valid_resident_id_links():
    r = M.match(person(resident_id=rid("42010219900305001")),
                person(name_zh="张卫明", resident_id=rid("42010219900305001")))
    assert r.outcome is Outcome.LINK and r.rule == "resident_id"


def test_same_resident_id_with_contradicting_name_goes_to_review():
    r = M.match(person(resident_id=rid("42010219900305001")),
                person(name_zh="李娜", resident_id=rid("42010219900305001")))
    assert r.outcome is Outcome.REVIEW


def test_same_identifier_in_same_system_links():
    card = [("urn:oid:2.16.156.10011.1.19", "HC1")]
    r = M.match(person(identifiers=card, birth_date=None), person(identifiers=card, name_pinyin="Zhang Weiming",
                                                                  name_zh=None, birth_date=None))
    assert r.outcome is Outcome.LINK and r.rule == "identifier"


def test_different_valid_resident_ids_never_link():
    r = M.match(person(resident_id=rid("42010219900305001"), **HOME),
                person(resident_id=rid("42010219900305011"), **HOME))
    assert r.outcome is not Outcome.LINK


# --- probabilistic levels -----------------------------------------------------------------

def test_demographics_without_ids_link():
    assert M.match(person(), person(**HOME)).outcome is Outcome.LINK


def test_day_month_swap_is_tolerated():
    assert birth_date_level("1990-03-05", "1990-05-03") == "swap"
    assert M.match(person(**HOME), person(birth_date="1990-05-03", **HOME)).outcome is Outcome.LINK


def test_one_digit_birth_date_typo_is_near():
    assert birth_date_level("1990-03-05", "1990-03-06") == "near"
    assert birth_date_level("1990-03-05", "1980-03-05") == "near"
    assert birth_date_level("1990-03-05", "1991-07-05") == "disagree"


def test_pinyin_only_registration_links_to_chinese_name():
    r = M.match(person(**HOME), person(name_zh=None, name_pinyin="Weiming ZHANG", **HOME))
    assert r.outcome is Outcome.LINK
    assert r.levels["surname"] == "exact" and r.levels["given"] == "exact"


def test_homophone_and_lookalike_typos_are_recognized():
    v = compare_demographics(person(), person(name_zh="张伟鸣"))
    assert v["given"].level == "homophone"
    v = compare_demographics(person(name_zh="王晴"), person(name_zh="王睛"))
    assert v["given"].level == "similar"
    assert M.match(person(**HOME), person(name_zh="张伟鸣", **HOME)).outcome is Outcome.LINK


def test_polyphonic_surname_matches_its_pinyin():
    r = M.match(person(name_zh="单雄信", **HOME), person(name_zh=None, name_pinyin="SHAN Xiongxin", **HOME))
    assert r.levels["surname"] == "exact"


def test_compound_surname_matches_pinyin():
    r = M.match(person(name_zh="欧阳修", **HOME), person(name_zh=None, name_pinyin="Ouyang, Xiu", **HOME))
    assert r.outcome is Outcome.LINK


def test_thresholds_are_configurable():
    strict = PatientMatcher(thresholds=Thresholds(link=1000, review=10))
    assert strict.match(person(), person(**HOME)).outcome is Outcome.REVIEW


def test_explanation_names_the_evidence():
    text = M.match(person(), person(birth_date="1990-05-03")).explain()
    assert "birth_date:swap" in text and "score=" in text


# --- guards ---------------------------------------------------------------------------------

def test_twins_are_not_linked():
    a = person(name_zh="张伟明", **HOME)
    b = person(name_zh="张伟亮", **HOME)
    r = M.match(a, b)
    assert r.outcome is not Outcome.LINK and "twins" in r.guards


def test_twins_with_multiple_birth_flag_and_homophone_names_are_not_linked():
    a = person(name_zh="卢美清", sex="female", multiple_birth=True, birth_order=1)
    b = person(name_zh="卢美倩", sex="female", multiple_birth=True)
    assert M.match(a, b).outcome is not Outcome.LINK


def test_different_birth_orders_are_new():
    a = person(name_zh="张伟明", birth_order=1, multiple_birth=True)
    b = person(name_zh="张伟明", birth_order=2, multiple_birth=True)
    assert M.match(a, b).outcome is Outcome.NEW


def test_siblings_differing_by_one_character_are_not_linked():
    a = person(name_zh="张伟明", birth_date="1990-03-05", **HOME)
    b = person(name_zh="张伟亮", birth_date="1993-03-05", **HOME)
    r = M.match(a, b)
    assert r.outcome is not Outcome.LINK
    # even without a shared household
    r = M.match(person(name_zh="张伟明"), person(name_zh="张伟亮", birth_date="1990-03-06"))
    assert r.outcome is not Outcome.LINK


def test_namesakes_are_not_linked():
    a = person(name_zh="王伟", birth_date="1990-03-05", phones=["13900000001"])
    b = person(name_zh="王伟", birth_date="1990-08-21", phones=["13900000002"])
    assert M.match(a, b).outcome is Outcome.NEW
    # same name, same birth year, same district only
    a = person(name_zh="王伟", birth_date="1990-03-05", address="武汉市洪山区珞喻路1号")
    b = person(name_zh="王伟", birth_date="1990-11-21", address="武汉市洪山区关山大道8号")
    assert M.match(a, b).outcome is not Outcome.LINK


def test_newborn_is_not_linked_to_mother():
    mother_id = rid("42010219920101002")
    mother = make_demographics(name_zh="王芳", sex="female", birth_date="1992-01-01",
                               resident_id=mother_id, **HOME)
    baby = make_demographics(name_zh="王芳之女", sex="female", birth_date="2025-06-01",
                             resident_id=mother_id, **HOME)
    r = M.match(baby, mother)
    assert r.outcome is Outcome.NEW
    assert baby.is_newborn_placeholder and not baby.rid_usable


def test_newborn_named_baby_of_in_pinyin_is_not_linked_to_mother():
    mother = make_demographics(name_pinyin="WANG Fang", sex="female", birth_date="1992-01-01", **HOME)
    baby = make_demographics(name_pinyin="Baby of Wang Fang", sex="female", birth_date="2025-06-01", **HOME)
    assert M.match(baby, mother).outcome is Outcome.NEW


def test_two_registrations_of_the_same_newborn_link():
    a = make_demographics(name_zh="王芳之女", sex="female", birth_date="2025-06-01", **HOME)
    b = make_demographics(name_zh="王芳之女", sex="female", birth_date="2025-06-01", phones=["13812345678"])
    assert M.match(a, b).outcome is Outcome.LINK


def test_newborn_twins_with_orders_are_not_linked():
    a = make_demographics(name_zh="王芳之子1", sex="male", birth_date="2025-06-01", **HOME)
    b = make_demographics(name_zh="王芳之子2", sex="male", birth_date="2025-06-01", **HOME)
    assert M.match(a, b).outcome is Outcome.NEW


def test_placeholder_id_never_links():
    fake = "111111111111111111"
    a = make_demographics(name_zh="李四", sex="male", resident_id=fake)
    b = make_demographics(name_zh="赵六", sex="female", resident_id=fake)
    assert M.match(a, b).outcome is Outcome.NEW
    assert not any(k.startswith("rid:") for k in blocking_keys(a))


def test_invalid_id_one_digit_off_supports_review_but_never_drives_a_link():
    good = rid("42010219900305001")
    bad = good[:10] + ("9" if good[10] != "9" else "8") + good[11:]
    a = person(name_zh="张伟明", birth_date=None, resident_id=good)
    b = person(name_zh="张卫民", birth_date=None, resident_id=bad)
    r = M.match(a, b)
    assert r.levels["resident_id"] == "near"
    assert r.outcome is not Outcome.LINK


# --- blocking and FS machinery ------------------------------------------------------------

def test_blocking_keys_survive_swap_and_pinyin_only():
    a = person()
    assert blocking_keys(a) & blocking_keys(person(birth_date="1990-05-03"))
    assert blocking_keys(a) & blocking_keys(person(name_zh=None, name_pinyin="ZHANG WEIMING"))
    assert blocking_keys(a) & blocking_keys(person(name_zh="张卫明"))
    assert all(not k.startswith(("sex", "year")) for k in blocking_keys(a))


def test_jaro_winkler_reference_values():
    assert round(jaro_winkler("martha", "marhta"), 3) == 0.961
    assert round(jaro_winkler("dwayne", "duane"), 3) == 0.84
    assert jaro_winkler("abc", "abc") == 1.0 and jaro_winkler("", "abc") == 0.0


def test_fs_weights_can_be_estimated_from_labels():
    same = compare_demographics(person(), person(**HOME))
    diff = compare_demographics(person(), person(name_zh="李娜", sex="female", birth_date="1970-01-01"))
    model = FellegiSunter.estimate([same] * 50 + [diff] * 50, [True] * 50 + [False] * 50)
    assert model.score(same) > 0 > model.score(diff)


def test_thresholds_grow_with_the_index():
    small, big = Thresholds.for_population(100_000), Thresholds.for_population(12_800_000)
    assert small.link == 22.0 and big.link == 29.0
