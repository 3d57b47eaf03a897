"""Regenerate the packaged terminology data in ``terminology/packaged/``.

Run from the repository root::

    python -m terminology.tools.build_data [--spec ../shared/spec/fhir-r4]

Two kinds of content are written (see ``terminology/packaged/PROVENANCE.md``):

* copied: HL7 v2 tables, FHIR R4 and HL7 v3 code systems / value sets / concept maps, taken from
  the FHIR R4 (4.0.1) definition bundles in ``shared/spec/fhir-r4`` (CC0). Only the narrative
  (``text``) and ``meta`` are dropped; v3-ActCode is cut down to its ``_ActEncounterCode``
  branch and marked ``content = fragment``.
* authored here, as tables in this file: the Chinese national code systems (GB/T 2261.1,
  GB/T 2261.2, GB/T 3304), the v2 → FHIR concept maps (codes and equivalences from the HL7
  V2-to-FHIR IG's mapping spreadsheets), the GB/T → FHIR concept maps and zh-CN display
  supplements. Codes and mappings are facts; the sources are cited next to each table.

This script is a developer tool: the runtime never reads ``shared/``.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from terminology import urls

DATA = Path(__file__).resolve().parent.parent / "packaged"
DEFAULT_SPEC = Path(__file__).resolve().parents[3] / "shared" / "spec" / "fhir-r4"

#: HL7 v2 tables the hub uses (message header, ACK, patient, visit, order, result segments).
V2_TABLES = [
    "0001", "0002", "0003", "0004", "0008", "0038", "0063", "0076", "0078", "0085", "0119",
    "0123", "0125", "0189", "0190", "0200", "0201", "0202", "0203", "0301", "0357", "0516",
    # v2-0125's value set draws its codes from the v2 data type code system 0440
    "0440",
]

#: FHIR R4 code systems (valuesets.json) copied whole, with the value set named after them.
FHIR_CODESYSTEMS = [
    "http://hl7.org/fhir/administrative-gender",
    "http://hl7.org/fhir/observation-status",
    "http://hl7.org/fhir/diagnostic-report-status",
    "http://hl7.org/fhir/request-status",
    "http://hl7.org/fhir/request-intent",
    "http://hl7.org/fhir/request-priority",
    "http://hl7.org/fhir/encounter-status",
    "http://hl7.org/fhir/identifier-use",
    "http://hl7.org/fhir/name-use",
    "http://hl7.org/fhir/address-use",
    "http://hl7.org/fhir/address-type",
    "http://hl7.org/fhir/contact-point-system",
    "http://hl7.org/fhir/contact-point-use",
    "http://terminology.hl7.org/CodeSystem/data-absent-reason",
]
FHIR_VALUESETS = [
    "http://hl7.org/fhir/ValueSet/administrative-gender",
    "http://hl7.org/fhir/ValueSet/observation-status",
    "http://hl7.org/fhir/ValueSet/diagnostic-report-status",
    "http://hl7.org/fhir/ValueSet/request-status",
    "http://hl7.org/fhir/ValueSet/request-intent",
    "http://hl7.org/fhir/ValueSet/request-priority",
    "http://hl7.org/fhir/ValueSet/encounter-status",
    "http://hl7.org/fhir/ValueSet/identifier-use",
    "http://hl7.org/fhir/ValueSet/identifier-type",
    "http://hl7.org/fhir/ValueSet/name-use",
    "http://hl7.org/fhir/ValueSet/address-use",
    "http://hl7.org/fhir/ValueSet/address-type",
    "http://hl7.org/fhir/ValueSet/contact-point-system",
    "http://hl7.org/fhir/ValueSet/contact-point-use",
    "http://hl7.org/fhir/ValueSet/data-absent-reason",
    "http://hl7.org/fhir/ValueSet/marital-status",
    "http://hl7.org/fhir/ValueSet/observation-interpretation",
]
#: HL7 v3 code systems (v3-codesystems.json) copied whole, plus their value sets.
V3_CODESYSTEMS = ["v3-MaritalStatus", "v3-NullFlavor", "v3-ObservationInterpretation",
                  "v3-AdministrativeGender"]
V3_VALUESETS = ["v3-MaritalStatus", "v3-NullFlavor", "v3-ObservationInterpretation",
                "v3-AdministrativeGender", "v3-ActEncounterCode"]
#: FHIR R4 concept maps (conceptmaps.json) from FHIR codes to v2 tables, usable in reverse.
FHIR_CONCEPTMAPS = [
    "http://hl7.org/fhir/ConceptMap/cm-administrative-gender-v2",
    "http://hl7.org/fhir/ConceptMap/cm-address-use-v2",
    "http://hl7.org/fhir/ConceptMap/cm-name-use-v2",
    "http://hl7.org/fhir/ConceptMap/cm-contact-point-use-v2",
    "http://hl7.org/fhir/ConceptMap/cm-contact-point-system-v2",
]


# ------------------------------------------------------------------------------------------------
# Authored content. Codes and names are those of the cited standards.
# ------------------------------------------------------------------------------------------------

#: GB/T 2261.1-2003 个人基本信息分类与代码 第1部分：人的性别代码 (code, 名称, English).
GBT_2261_1 = [
    ("0", "未知的性别", "Unknown sex"),
    ("1", "男性", "Male"),
    ("2", "女性", "Female"),
    ("9", "未说明的性别", "Unspecified sex"),
]

#: GB/T 2261.2-2003 婚姻状况代码 (code, 名称, English, parent). Two digits: class and subclass.
GBT_2261_2 = [
    ("10", "未婚", "Unmarried", None),
    ("20", "已婚", "Married", None),
    ("21", "初婚", "First marriage", "20"),
    ("22", "再婚", "Remarried", "20"),
    ("23", "复婚", "Remarried to former spouse", "20"),
    ("30", "丧偶", "Widowed", None),
    ("40", "离婚", "Divorced", None),
    ("90", "未说明的婚姻状况", "Marital status not stated", None),
]

#: GB/T 3304-1991 中国各民族名称的罗马字母拼写法和代码: (数字代码, 民族名称, 罗马字母拼写, 字母代码).
#: The standard lists exactly these 56; codes such as 97/98 used by some systems are not in it.
GBT_3304 = [
    ("01", "汉族", "Han", "HA"), ("02", "蒙古族", "Mongol", "MG"), ("03", "回族", "Hui", "HU"),
    ("04", "藏族", "Zang", "ZA"), ("05", "维吾尔族", "Uygur", "UG"), ("06", "苗族", "Miao", "MH"),
    ("07", "彝族", "Yi", "YI"), ("08", "壮族", "Zhuang", "ZH"), ("09", "布依族", "Buyei", "BY"),
    ("10", "朝鲜族", "Chosen", "CS"), ("11", "满族", "Man", "MA"), ("12", "侗族", "Dong", "DO"),
    ("13", "瑶族", "Yao", "YA"), ("14", "白族", "Bai", "BA"), ("15", "土家族", "Tujia", "TJ"),
    ("16", "哈尼族", "Hani", "HN"), ("17", "哈萨克族", "Kazak", "KZ"), ("18", "傣族", "Dai", "DA"),
    ("19", "黎族", "Li", "LI"), ("20", "傈僳族", "Lisu", "LS"), ("21", "佤族", "Va", "VA"),
    ("22", "畲族", "She", "SH"), ("23", "高山族", "Gaoshan", "GS"), ("24", "拉祜族", "Lahu", "LH"),
    ("25", "水族", "Sui", "SU"), ("26", "东乡族", "Dongxiang", "DX"), ("27", "纳西族", "Naxi", "NX"),
    ("28", "景颇族", "Jingpo", "JP"), ("29", "柯尔克孜族", "Kirgiz", "KG"), ("30", "土族", "Tu", "TU"),
    ("31", "达斡尔族", "Daur", "DU"), ("32", "仫佬族", "Mulao", "ML"), ("33", "羌族", "Qiang", "QI"),
    ("34", "布朗族", "Blang", "BL"), ("35", "撒拉族", "Salar", "SL"), ("36", "毛南族", "Maonan", "MN"),
    ("37", "仡佬族", "Gelao", "GL"), ("38", "锡伯族", "Xibe", "XB"), ("39", "阿昌族", "Achang", "AC"),
    ("40", "普米族", "Pumi", "PM"), ("41", "塔吉克族", "Tajik", "TA"), ("42", "怒族", "Nu", "NU"),
    ("43", "乌孜别克族", "Uzbek", "UZ"), ("44", "俄罗斯族", "Russ", "RS"), ("45", "鄂温克族", "Ewenki", "EW"),
    ("46", "德昂族", "Deang", "DE"), ("47", "保安族", "Bonan", "BN"), ("48", "裕固族", "Yugur", "YG"),
    ("49", "京族", "Gin", "GI"), ("50", "塔塔尔族", "Tatar", "TT"), ("51", "独龙族", "Derung", "DR"),
    ("52", "鄂伦春族", "Oroqen", "OR"), ("53", "赫哲族", "Hezhen", "HZ"), ("54", "门巴族", "Monba", "MB"),
    ("55", "珞巴族", "Lhoba", "LB"), ("56", "基诺族", "Jino", "JN"),
]

IG = "HL7 Version 2 to FHIR IG (HL7/v2-to-fhir, mappings/codesystems, 'FHIR E2' sheets)"

# v2 → FHIR maps: (source code, target code, target display, equivalence). Source: the V2-to-FHIR
# IG concept-map spreadsheets named in each entry. Codes the IG leaves unmapped are left out.
V2_MAPS = [
    {
        "id": "v2-0001-to-administrative-gender", "table": "0001",
        "target": urls.ADMINISTRATIVE_GENDER,
        "target_vs": "http://hl7.org/fhir/ValueSet/administrative-gender",
        "sheet": "AdministrativeSex",
        "rows": [("F", "female", "Female", "equivalent"), ("M", "male", "Male", "equivalent"),
                 ("O", "other", "Other", "equivalent"), ("U", "unknown", "Unknown", "equivalent"),
                 ("A", "other", "Other", "wider"), ("N", "other", "Other", "wider")],
    },
    {
        "id": "v2-0002-to-marital-status", "table": "0002",
        "target": urls.V3_MARITAL_STATUS,
        "target_vs": "http://hl7.org/fhir/ValueSet/marital-status",
        "sheet": "MaritalStatus",
        "rows": [("A", "L", "Legally Separated", "equivalent"), ("D", "D", "Divorced", "equivalent"),
                 ("M", "M", "Married", "equivalent"), ("S", "S", "Never Married", "equivalent"),
                 ("W", "W", "Widowed", "equivalent"), ("C", "C", "Common Law", "equivalent"),
                 ("G", "T", "Domestic partner", "wider"), ("P", "T", "Domestic partner", "equivalent"),
                 ("R", "T", "Domestic partner", "wider"), ("E", "L", "Legally Separated", "equivalent"),
                 ("N", "A", "Annulled", "equivalent"), ("I", "I", "Interlocutory", "equivalent"),
                 ("B", "U", "unmarried", "equivalent")],
        "extra_groups": [(urls.V3_NULL_FLAVOR, [("U", "UNK", "unknown", "equivalent"),
                                                ("O", "OTH", "other", "equivalent"),
                                                ("T", "NAVU", "not available", "equivalent")])],
    },
    {
        "id": "v2-0004-to-encounter-class", "table": "0004",
        "target": urls.V3_ACT_CODE,
        "target_vs": "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode",
        "sheet": "PatientClass[EncounterClass]",
        "rows": [("E", "EMER", "emergency", "equivalent"), ("I", "IMP", "inpatient encounter", "equivalent"),
                 ("O", "AMB", "ambulatory", "equivalent"), ("P", "PRENC", "pre-admission", "equivalent")],
        # The IG keeps R, B, C, N, U as v2-0004 codes in Encounter.class (extensible binding).
        "extra_groups": [(urls.v2_table("0004"), [("R", "R", "Recurring patient", "equal"),
                                                  ("B", "B", "Obstetrics", "equal"),
                                                  ("C", "C", "Commercial Account", "equal"),
                                                  ("N", "N", "Not Applicable", "equal"),
                                                  ("U", "U", "Unknown", "equal")])],
    },
    {
        "id": "v2-0078-to-observation-interpretation", "table": "0078",
        "target": urls.V3_OBSERVATION_INTERPRETATION,
        "target_vs": "http://hl7.org/fhir/ValueSet/observation-interpretation",
        "sheet": "InterpretationCodes",
        # AC, HM, OBX, QCF, TOX: inactive in v3, unmapped by the IG. MS and VS are mapped by
        # the IG although inactive in v3.
        "rows": [(c, c, d, "equivalent") for c, d in [
            ("<", "Off scale low"), (">", "Off scale high"), ("A", "Abnormal"),
            ("AA", "Critical abnormal"), ("B", "Better"), ("CAR", "Carrier"),
            ("D", "Significant change down"), ("DET", "Detected"), ("E", "Equivocal"),
            ("EX", "outside threshold"), ("EXP", "Expected"), ("H", "High"), ("HH", "Critical high"),
            ("HU", "Significantly high"), ("I", "Intermediate"), ("IE", "Insufficient evidence"),
            ("IND", "Indeterminate"), ("L", "Low"), ("LL", "Critical low"),
            ("LU", "Significantly low"), ("MS", "moderately susceptible"), ("N", "Normal"),
            ("NCL", "No CLSI defined breakpoint"), ("ND", "Not detected"), ("NEG", "Negative"),
            ("NR", "Non-reactive"), ("NS", "Non-susceptible"), ("POS", "Positive"),
            ("R", "Resistant"), ("RR", "Reactive"), ("S", "Susceptible"),
            ("SDD", "Susceptible-dose dependent"), ("SYN-R", "Synergy - resistant"),
            ("SYN-S", "Synergy - susceptible"), ("U", "Significant change up"),
            ("UNE", "Unexpected"), ("VS", "very susceptible"), ("W", "Worse"),
            ("WR", "Weakly reactive")]],
    },
    {
        "id": "v2-0085-to-observation-status", "table": "0085",
        "target": urls.OBSERVATION_STATUS,
        "target_vs": "http://hl7.org/fhir/ValueSet/observation-status",
        "sheet": "ObservationResultStatusCodesInterpretation",
        # B, I, N, O, R, S, U, V: no R4 target in the IG (U = status change to final without
        # retransmission is an event on an existing Observation, handled by the mapping engine).
        "rows": [("A", "amended", "Amended", "equivalent"), ("C", "corrected", "Corrected", "equivalent"),
                 ("D", "entered-in-error", "Entered in Error", "equivalent"),
                 ("F", "final", "Final", "equivalent"), ("P", "preliminary", "Preliminary", "equivalent"),
                 ("X", "cancelled", "Cancelled", "equivalent"),
                 ("W", "entered-in-error", "Entered in Error", "equivalent")],
    },
    {
        "id": "v2-0123-to-diagnostic-report-status", "table": "0123",
        "target": urls.DIAGNOSTIC_REPORT_STATUS,
        "target_vs": "http://hl7.org/fhir/ValueSet/diagnostic-report-status",
        "sheet": "ResultStatus[Non-Queries]",
        # A, M, N, Y, Z: unmapped by the IG.
        "rows": [("O", "registered", "Registered", "wider"), ("I", "registered", "Registered", "wider"),
                 ("S", "registered", "Registered", "wider"), ("P", "preliminary", "Preliminary", "equivalent"),
                 ("C", "corrected", "Corrected", "equivalent"), ("R", "partial", "Partial", "wider"),
                 ("F", "final", "Final", "equivalent"), ("X", "cancelled", "Cancelled", "equivalent")],
    },
]

#: zh-CN displays for codes shown to clinicians (hub-authored translations, CodeSystem supplements).
ZH_CN = {
    urls.ADMINISTRATIVE_GENDER: {"male": "男", "female": "女", "other": "其他", "unknown": "未知"},
    urls.v2_table("0001"): {"F": "女", "M": "男", "O": "其他", "U": "未知", "A": "性别不明确",
                            "N": "不适用"},
    urls.OBSERVATION_STATUS: {"registered": "已登记", "preliminary": "初步结果", "final": "最终结果",
                              "amended": "已修订", "corrected": "已更正", "cancelled": "已取消",
                              "entered-in-error": "录入错误", "unknown": "未知"},
    urls.DIAGNOSTIC_REPORT_STATUS: {"registered": "已登记", "partial": "部分结果",
                                    "preliminary": "初步报告", "final": "最终报告",
                                    "amended": "已修订", "corrected": "已更正", "appended": "已追加",
                                    "cancelled": "已取消", "entered-in-error": "录入错误",
                                    "unknown": "未知"},
    urls.V3_OBSERVATION_INTERPRETATION: {"N": "正常", "H": "偏高", "L": "偏低", "HH": "危急高值",
                                         "LL": "危急低值", "A": "异常", "AA": "危急异常",
                                         "POS": "阳性", "NEG": "阴性", "<": "低于检测下限",
                                         ">": "高于检测上限", "DET": "检出", "ND": "未检出",
                                         "R": "耐药", "S": "敏感", "I": "中介"},
    urls.V3_ACT_CODE: {"AMB": "门诊", "EMER": "急诊", "IMP": "住院", "PRENC": "预住院",
                       "HH": "家庭医疗", "VR": "远程", "OBSENC": "留观"},
}


# ------------------------------------------------------------------------------------------------

def _load_bundle(path: Path) -> dict[tuple[str, str], dict]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    return {(e["resource"]["resourceType"], e["resource"]["url"]): e["resource"] for e in bundle["entry"]}


def _clean(resource: dict) -> dict:
    out = copy.deepcopy(resource)
    out.pop("text", None)
    out.pop("meta", None)
    return out


def _bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": r["url"], "resource": r} for r in resources]}


def _v2_resources(spec: Path) -> list[dict]:
    index = _load_bundle(spec / "v2-tables.json")
    out = []
    for table in V2_TABLES:
        cs = index.get(("CodeSystem", urls.v2_table(table)))
        vs = index.get(("ValueSet", urls.v2_valueset(table)))
        if cs is None and vs is None:
            raise SystemExit(f"v2 table {table}: not in v2-tables.json")
        # (table 0125 has only a value set: its codes come from code system v2-0440)
        out += [_clean(r) for r in (cs, vs) if r is not None]
    return out


def _act_encounter_fragment(actcode: dict) -> dict:
    """v3-ActCode cut to the _ActEncounterCode branch (the codes of Encounter.class)."""
    def find(concepts):
        for c in concepts:
            if c["code"] == "_ActEncounterCode":
                return c
            hit = find(c.get("concept", []))
            if hit:
                return hit
        return None

    cs = _clean(actcode)
    cs["content"] = "fragment"
    cs["concept"] = [copy.deepcopy(find(actcode["concept"]))]
    cs["description"] = ("Fragment of v3 ActCode: the _ActEncounterCode branch only (Encounter.class "
                         "codes). " + cs.get("description", ""))[:400]
    return cs


def _fhir_resources(spec: Path) -> list[dict]:
    fhir = _load_bundle(spec / "valuesets.json")
    v3 = _load_bundle(spec / "v3-codesystems.json")
    maps = _load_bundle(spec / "conceptmaps.json")
    out = [_clean(fhir[("CodeSystem", u)]) for u in FHIR_CODESYSTEMS]
    out += [_clean(fhir[("ValueSet", u)]) for u in FHIR_VALUESETS]
    out += [_clean(v3[("CodeSystem", f"http://terminology.hl7.org/CodeSystem/{n}")]) for n in V3_CODESYSTEMS]
    out.append(_act_encounter_fragment(v3[("CodeSystem", urls.V3_ACT_CODE)]))
    out += [_clean(v3[("ValueSet", f"http://terminology.hl7.org/ValueSet/{n}")]) for n in V3_VALUESETS]
    out += [_clean(maps[("ConceptMap", u)]) for u in FHIR_CONCEPTMAPS]
    return out


def _designation(lang: str, value: str) -> dict:
    return {"language": lang, "use": {"system": "http://terminology.hl7.org/CodeSystem/designation-usage",
                                      "code": "display"}, "value": value}


def _cn_codesystem(slug, name, title, oid, description, concepts, properties=None, hierarchy=False):
    cs = {
        "resourceType": "CodeSystem", "id": slug, "url": urls.code_system(slug), "language": "zh-CN",
        "name": name, "title": title, "status": "active", "experimental": False,
        "publisher": "Yilian hub (codes from the cited national standard)", "description": description,
        "caseSensitive": True, "valueSet": urls.value_set(slug), "content": "complete",
        "count": len(concepts), "concept": concepts,
    }
    if oid:
        cs["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{oid}"}]
    if hierarchy:
        cs["hierarchyMeaning"] = "is-a"
    if properties:
        cs["property"] = properties
    return cs


def _valueset_for(cs: dict) -> dict:
    return {"resourceType": "ValueSet", "id": cs["id"], "url": cs["valueSet"], "name": cs["name"],
            "title": cs["title"], "status": "active", "language": cs.get("language", "en"),
            "compose": {"include": [{"system": cs["url"]}]}}


def _cn_resources() -> list[dict]:
    sex = _cn_codesystem(
        urls.GBT_2261_1_SEX, "GBT2261_1Sex", "GB/T 2261.1-2003 人的性别代码", "2.16.156.10011.2.3.3.4",
        "GB/T 2261.1-2003 个人基本信息分类与代码 第1部分：人的性别代码. OID as used in Chinese CDA "
        "documents (design/CONVENTIONS.md).",
        [{"code": c, "display": zh, "designation": [_designation("en", en)]} for c, zh, en in GBT_2261_1])
    marital_concepts: dict[str, dict] = {}
    roots = []
    for code, zh, en, parent in GBT_2261_2:
        concept = {"code": code, "display": zh, "designation": [_designation("en", en)]}
        marital_concepts[code] = concept
        if parent:
            marital_concepts[parent].setdefault("concept", []).append(concept)
        else:
            roots.append(concept)
    marital = _cn_codesystem(
        urls.GBT_2261_2_MARITAL, "GBT2261_2MaritalStatus", "GB/T 2261.2-2003 婚姻状况代码", None,
        "GB/T 2261.2-2003 个人基本信息分类与代码 第2部分：婚姻状况代码 (class and subclass codes).",
        roots, hierarchy=True)
    marital["count"] = len(GBT_2261_2)
    ethnic = _cn_codesystem(
        urls.GBT_3304_ETHNICITY, "GBT3304Ethnicity", "GB/T 3304-1991 中国各民族名称的罗马字母拼写法和代码", None,
        "GB/T 3304-1991: the 56 nationalities with their numeric code (used as the code), romanized "
        "name (designation, language zh-Latn) and two-letter code (property alpha-code).",
        [{"code": c, "display": zh, "designation": [_designation("zh-Latn", roman)],
          "property": [{"code": "alpha-code", "valueString": alpha}]} for c, zh, roman, alpha in GBT_3304],
        properties=[{"code": "alpha-code", "description": "GB/T 3304 two-letter code", "type": "string"}])
    out = []
    for cs in (sex, marital, ethnic):
        out += [cs, _valueset_for(cs)]
    return out


def _group(source, target, rows, source_display=None):
    return {"source": source, "target": target, "element": [
        {"code": s, **({"display": source_display[s]} if source_display and s in source_display else {}),
         "target": [{"code": t, "display": d, "equivalence": eq}]} for s, t, d, eq in rows]}


def _conceptmaps() -> list[dict]:
    out = []
    for spec in V2_MAPS:
        groups = [_group(urls.v2_table(spec["table"]), spec["target"], spec["rows"])]
        for target, rows in spec.get("extra_groups", []):
            groups.append(_group(urls.v2_table(spec["table"]), target, rows))
        out.append({
            "resourceType": "ConceptMap", "id": spec["id"], "url": urls.concept_map(spec["id"]),
            "name": spec["id"].replace("-", "_"), "status": "active",
            "description": f"HL7 v2 table {spec['table']} to FHIR R4. Codes and equivalences from the "
                           f"{IG}, sheet '{spec['sheet']}' (rows for FHIR R4 targets only).",
            "sourceCanonical": urls.v2_valueset(spec["table"]), "targetCanonical": spec["target_vs"],
            "group": groups,
        })
    # v2-0203: the IG maps every identifier type code to itself (FHIR R4 uses v2-0203 directly).
    out.append({
        "resourceType": "ConceptMap", "id": "v2-0203-to-identifier-type",
        "url": urls.concept_map("v2-0203-to-identifier-type"), "name": "v2_0203_to_identifier_type",
        "status": "active",
        "description": f"HL7 v2 table 0203 to FHIR Identifier.type: every code maps to itself ({IG}, "
                       "sheet 'IdentifierType').",
        "sourceCanonical": urls.v2_valueset("0203"), "targetCanonical": "http://hl7.org/fhir/ValueSet/identifier-type",
        "group": [{"source": urls.v2_table("0203"), "target": urls.v2_table("0203"),
                   "unmapped": {"mode": "provided"}, "element": []}],
    })
    # GB/T 2261.1 → administrative-gender: design/CONVENTIONS.md (9 → unknown unless told otherwise).
    out.append({
        "resourceType": "ConceptMap", "id": "gbt-2261.1-to-administrative-gender",
        "url": urls.concept_map("gbt-2261.1-to-administrative-gender"),
        "name": "GBT2261_1ToAdministrativeGender", "status": "active",
        "description": "GB/T 2261.1 sex to FHIR administrative-gender, per design/CONVENTIONS.md: "
                       "0 → unknown, 1 → male, 2 → female, 9 (未说明) → unknown.",
        "sourceCanonical": urls.value_set(urls.GBT_2261_1_SEX),
        "targetCanonical": "http://hl7.org/fhir/ValueSet/administrative-gender",
        "group": [_group(urls.code_system(urls.GBT_2261_1_SEX), urls.ADMINISTRATIVE_GENDER, [
            ("0", "unknown", "Unknown", "equivalent"), ("1", "male", "Male", "equivalent"),
            ("2", "female", "Female", "equivalent"), ("9", "unknown", "Unknown", "wider")],
            {c: zh for c, zh, _ in GBT_2261_1})],
    })
    # GB/T 2261.2 → v3 MaritalStatus (hub mapping by meaning; subclasses of 已婚 → Married).
    out.append({
        "resourceType": "ConceptMap", "id": "gbt-2261.2-to-marital-status",
        "url": urls.concept_map("gbt-2261.2-to-marital-status"),
        "name": "GBT2261_2ToMaritalStatus", "status": "active",
        "description": "GB/T 2261.2 marital status to FHIR marital-status (v3 MaritalStatus; 90 → "
                       "NullFlavor UNK). Hub mapping by meaning of the national codes.",
        "sourceCanonical": urls.value_set(urls.GBT_2261_2_MARITAL),
        "targetCanonical": "http://hl7.org/fhir/ValueSet/marital-status",
        "group": [
            _group(urls.code_system(urls.GBT_2261_2_MARITAL), urls.V3_MARITAL_STATUS, [
                ("10", "S", "Never Married", "equivalent"), ("20", "M", "Married", "equivalent"),
                ("21", "M", "Married", "wider"), ("22", "M", "Married", "wider"),
                ("23", "M", "Married", "wider"), ("30", "W", "Widowed", "equivalent"),
                ("40", "D", "Divorced", "equivalent")], {c: zh for c, zh, _, _ in GBT_2261_2}),
            _group(urls.code_system(urls.GBT_2261_2_MARITAL), urls.V3_NULL_FLAVOR,
                   [("90", "UNK", "unknown", "equivalent")], {c: zh for c, zh, _, _ in GBT_2261_2}),
        ],
    })
    return out


def _supplements() -> list[dict]:
    out = []
    for system, displays in ZH_CN.items():
        slug = "zh-cn-" + system.rstrip("/").rsplit("/", 1)[-1].lower()
        out.append({
            "resourceType": "CodeSystem", "id": slug, "url": urls.code_system(slug), "language": "zh-CN",
            "name": slug.replace("-", "_"), "status": "active", "content": "supplement",
            "supplements": system,
            "description": "zh-CN display designations (hub-authored translations) for " + system,
            "concept": [{"code": code, "designation": [_designation("zh-CN", zh)]}
                        for code, zh in displays.items()],
        })
    return out


def _write(name: str, resources: list[dict]) -> None:
    path = DATA / name
    path.write_text(json.dumps(_bundle(resources), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{path.relative_to(DATA.parent.parent)}: {len(resources)} resources, {path.stat().st_size} bytes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="shared/spec/fhir-r4 folder")
    args = parser.parse_args(argv)
    DATA.mkdir(exist_ok=True)
    _write("hl7-v2-tables.json", _v2_resources(args.spec))
    _write("fhir-r4-terminology.json", _fhir_resources(args.spec))
    _write("cn-national.json", _cn_resources())
    _write("conceptmaps.json", _conceptmaps())
    _write("zh-cn-supplements.json", _supplements())


if __name__ == "__main__":
    main()
