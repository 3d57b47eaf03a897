"""Patient searches answer with source records; golden records only when the search asks for them.

A golden record (``Patient/mpi-…``) repeats the demographics of its person's source records, so
without this ``Patient?name=张三`` would list each person twice or more: once per hospital's record
and once more as the golden record, which has no medical record number, no hospital and no
clinical resources of its own. A clinician's app choosing "the patient" from such a list gets a
record whose Observations are empty. HAPI FHIR's MDM keeps golden resources apart from source
resources by a tag and expands searches through its links (``:mdm``); here the ordinary search is
the source-record one, and the person view goes through the links (``:linked``, ``$everything``,
``$ihe-pix``).

A Patient type search keeps golden records when it names them: ``_id``, ``_tag`` with the golden
tag (``_tag=https://yilian.example.org/fhir/CodeSystem/mpi|golden-record`` lists them),
``identifier`` in the person system (``{hub}/sid/mpi-person|mpi-…``), or ``link`` (a question
about the index's own links). Every other Patient search gets ``_tag:not=<golden tag>``.
"""

from __future__ import annotations

from hub.mpi.index import GOLDEN_TAG, PERSON_SYSTEM

GOLDEN_TOKEN = f"{GOLDEN_TAG['system']}|{GOLDEN_TAG['code']}"


class SourceRecordsOnly:
    """A ``FhirService.search_rewriters`` entry: leaves golden records out of Patient searches
    that do not ask for them."""

    def __call__(self, rtype: str | None, query: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if rtype != "Patient" or any(_asks_for_golden(k, v) for k, v in query):
            return query
        return [*query, ("_tag:not", GOLDEN_TOKEN)]


def _asks_for_golden(key: str, value: str) -> bool:
    name = key.partition(".")[0]
    base, _, modifier = name.partition(":")
    if base in ("_id", "link"):
        return True
    values = value.split(",")
    if base == "_tag":
        return modifier == "not" and GOLDEN_TOKEN in values or \
            not modifier and any(_is_golden_tag(v) for v in values)
    if base == "identifier" and not modifier:
        return any(v.startswith(PERSON_SYSTEM + "|") for v in values)
    return False


def _is_golden_tag(token: str) -> bool:
    system, bar, code = token.rpartition("|")
    return code == GOLDEN_TAG["code"] and (not bar or system in ("", GOLDEN_TAG["system"]))
