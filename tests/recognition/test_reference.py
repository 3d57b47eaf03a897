"""Reference data files as a region publishes them: parsing, checks with clear messages, lookups."""

from __future__ import annotations

import orjson
import pytest

from hub.recognition.reference import Reference, ReferenceDataError, parse, split_release
from tests.recognition.conftest import sample_bytes


def test_samples_parse_in_normal_form(ref):
    assert ref.catalogue["CAT-GLU"][0].time_limit_days == 30
    assert {e.scope for e in ref.catalogue["CAT-GLU"]} == {"WH", "HB"}
    assert ref.members("HB") == {"H001", "H002", "H003", "H004"}  # members of the scopes below count
    assert ref.members("WH") == {"H001", "H002", "H003"}
    assert ref.ancestors_or_self("WH-A1") == ["WH-A1", "WH", "HB"]
    assert ref.label("WH") == "武汉HR"


def test_local_codes_through_terminology(ref):
    # each hospital's own code for the same item, with the unit it reports in
    assert ref.item_for([{"system": "urn:yilian:h001:lis", "code": "HGB"}], "H001") == ("CAT-HGB", "g/L")
    assert ref.item_for([{"system": "urn:yilian:h002:lis", "code": "XHB"}], "H002") == ("CAT-HGB", "g/dL")
    # a code is read in the organization's own map only
    assert ref.item_for([{"system": "urn:yilian:h002:lis", "code": "XHB"}], "H001") == (None, None)
    # LOINC from the catalogue or the code maps; a catalogue coding as is
    assert ref.item_for([{"system": "http://loinc.org", "code": "718-7"}], None)[0] == "CAT-HGB"
    assert ref.item_for([{"system": "http://loinc.org", "code": "4548-4"}], None)[0] == "CAT-HBA1C"
    assert ref.codes_of("CAT-GLU") == {"CAT-GLU", "14749-6", "GLU", "B-GLU-01", "0101"}
    assert ref.unit_of("CAT-HGB", "H002") == "g/dL"


def test_gb18030_csv_as_excel_saves_it():
    text = sample_bytes("scopes").decode("utf-8")
    rows = parse("scopes", text.encode("gb18030"))
    assert {r["label"] for r in rows} >= {"鄂HR", "武汉HR"}


@pytest.mark.parametrize("kind, body, message", [
    ("catalogue", "item_std_code,category,scope,time_limit_days,requires_images\nCAT-X,LAB,HB,thirty,no\n",
     "catalogue file line 2: time_limit_days 'thirty' is not a number"),
    ("catalogue", "item_std_code,category,scope,time_limit_days,requires_images\nCAT-X,LAB,HB,3,maybe\n",
     "catalogue file line 2: 'maybe' is not a yes/no value"),
    ("catalogue", "item_std_code,category,scope,time_limit_days,requires_images\nCAT-X,LAB,HB,3,no\nCAT-X,LAB,HB,4,no\n",
     "catalogue file line 3: CAT-X/HB is listed twice"),
    ("catalogue", "item_std_code,category,scope\nCAT-X,LAB,HB\n",
     "catalogue file: missing column(s) time_limit_days, requires_images"),
    ("scopes", "scope_code,level,parent,label,members\nA,county,,A,H1\n",
     "scopes file line 2: level 'county' is not one of nation, province, city, alliance"),
    ("scopes", "scope_code,level,parent,label,members\nA,city,B,A,H1\nB,city,A,B,H2\n",
     "scope A: the parent chain loops"),
    ("qualifications", "organization,item_std_code,scope,qc_body,eqa_round,passed,valid_from,valid_to\n"
                       "H1,CAT-X,HB,c,1,yes,2026-12-31,2026-01-01\n",
     "qualifications file line 2: valid_to is before valid_from"),
    ("qualifications", "organization,item_std_code,scope,qc_body,eqa_round,passed,valid_from,valid_to\n"
                       ",CAT-X,HB,c,1,yes,2026-01-01,2026-12-31\n",
     "qualifications file line 2: empty organization"),
])
def test_bad_files_are_refused_naming_line_and_column(kind, body, message):
    with pytest.raises(ReferenceDataError) as e:
        parse(kind, body.encode())
    assert e.value.diagnostics == message
    assert e.value.status == 400


def test_json_forms():
    rows = parse("catalogue", orjson.dumps([{"item_std_code": "CAT-X", "category": "lab", "scope": "HB",
                                             "time_limit_days": 5, "requires_images": True}]), "json")
    assert rows[0]["category"] == "LAB" and rows[0]["requires_images"] is True
    maps = parse("codemaps", orjson.dumps([{"org_code": "H9", "local_code": "G", "local_display": "葡萄糖",
                                            "loinc": "", "catalogue_code": "CAT-GLU", "unit_ucum": "mmol/l"}]), "json")
    ref = Reference.from_rows({"codemaps": maps})
    assert ref.item_for([{"code": "G"}], "H9") == ("CAT-GLU", "mmol/L")  # a code without system, a local unit spelling
    release = split_release(orjson.dumps({"scopes": [{"scope_code": "X", "level": "city", "label": "X", "members": "H1;H2"}]}))
    assert release["scopes"][0]["members"] == ["H1", "H2"]
    with pytest.raises(ReferenceDataError, match="JSON must be a list"):
        parse("scopes", b'{"scopes": 3}', "json")
    with pytest.raises(ReferenceDataError, match="unknown reference data kind"):
        parse("labs", b"", "csv")
