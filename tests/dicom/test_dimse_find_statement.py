"""C-FIND queries of one shape share one SQL statement, their values bound at execution: each
query still matches its own values (single values, UID lists of any length, ranges, wildcards)."""

from __future__ import annotations

import httpx
import pytest
from pydicom.uid import generate_uid

from hub.dicom import index
from tests.dicom import data
from tests.dicom.test_dimse import find, q, store


@pytest.fixture(scope="module")
def four_studies(pacs):
    studies = [data.instance(study_uid=generate_uid(), series_uid=generate_uid(), patient_id=f"S{i}",
                             name=f"ZHAO^{'AB'[i % 2]}{i}", study_date=f"2023050{i + 1}") for i in range(4)]
    assert store(pacs, studies) == [0] * 4
    return studies


def _uids(pacs, **keys) -> list[str]:
    return [r.StudyInstanceUID for r in find(pacs, q("STUDY", **{"StudyInstanceUID": "", **keys}))]


def test_queries_of_one_shape_share_a_statement_and_match_their_own_values(pacs, four_studies):
    uid = [s.StudyInstanceUID for s in four_studies]
    before = index._cached_statement.cache_info()
    assert _uids(pacs, PatientID="S0") == [uid[0]]
    assert _uids(pacs, PatientID="S2") == [uid[2]]
    assert _uids(pacs, PatientID="S9") == []
    after = index._cached_statement.cache_info()
    assert after.misses - before.misses <= 1 and after.hits - before.hits >= 2  # one statement for all three
    assert _uids(pacs, StudyInstanceUID=f"{uid[0]}\\{uid[3]}", PatientID="S*") == [uid[0], uid[3]]
    assert _uids(pacs, StudyInstanceUID=f"{uid[1]}\\{uid[2]}\\{uid[3]}", PatientID="S*") == uid[1:]
    assert _uids(pacs, StudyDate="20230502-20230503", PatientID="S*") == uid[1:3]
    assert _uids(pacs, StudyDate="20230503-20230504", PatientID="S*") == uid[2:]
    assert _uids(pacs, StudyDate="-20230501", PatientID="S*") == uid[:1]
    assert _uids(pacs, PatientName="zhao^a*") == [uid[0], uid[2]]
    assert _uids(pacs, PatientName="zhao^b*") == [uid[1], uid[3]]


def test_qido_pages_of_one_query_share_a_statement_and_each_returns_its_page(pacs, four_studies):
    """The page (limit, offset) is bound at execution like the matched values: a statement keyed
    on the page's values was built anew for every page, and the pages filled the cache."""
    uid = [s.StudyInstanceUID for s in four_studies]
    headers = {"Authorization": f"Bearer {pacs.token('system/ImagingStudy.cruds')}"}

    def page(limit: int, offset: int) -> list[str]:
        r = httpx.get(f"{pacs.root}/dicom-web/studies", headers=headers,
                      params={"PatientID": "S*", "limit": limit, "offset": offset})
        r.raise_for_status()
        return [s["0020000D"]["Value"][0] for s in r.json()]

    assert page(4, 1) == uid[1:]  # the first page with an offset builds the statement
    before = index._cached_statement.cache_info()
    assert page(1, 1) == [uid[1]]
    assert page(2, 2) == uid[2:]
    assert page(1, 3) == [uid[3]]
    assert page(3, 9) == []
    after = index._cached_statement.cache_info()
    assert after.misses == before.misses and after.hits - before.hits == 4
