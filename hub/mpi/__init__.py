"""Matching core of the master patient index (主索引, EMPI): pure functions, no storage.

- :mod:`hub.mpi.normalize` — :class:`Demographics` from a FHIR Patient, GB 11643 resident IDs,
  Chinese names and pinyin, phones, addresses;
- :mod:`hub.mpi.compare` — field comparators and the comparison vector;
- :mod:`hub.mpi.scoring` — Fellegi–Sunter model, deterministic rules, guards, LINK/REVIEW/NEW;
- :mod:`hub.mpi.blocking` — index keys for candidate lookup.

The stateful index on top (docs/mpi.md): :mod:`hub.mpi.index` (store hooks, persons, golden
records, reviews), :mod:`hub.mpi.merge` (merge / unmerge), :mod:`hub.mpi.operations`
(``$match``, ``$ihe-pix``, ``$merge``, ``$unmerge``), :mod:`hub.mpi.linked_search`
(``:linked``), :mod:`hub.mpi.review_api` (``/mpi/…``), :mod:`hub.mpi.service` (wiring).

Typical use by the storage layer::

    demo = from_fhir_patient(patient_json)
    keys = blocking_keys(demo)            # store; fetch candidates sharing any key
    result = matcher.match(demo, candidate_demo)
    result.outcome                        # Outcome.LINK / REVIEW / NEW, result.explain()
"""

from .blocking import blocking_keys
from .compare import FieldComparison, compare_demographics, jaro_winkler
from .normalize import (
    RESIDENT_ID_SYSTEM, Address, Demographics, IdStatus, ResidentIdCheck, check_resident_id,
    from_fhir_patient, gb11643_check_character, make_demographics, normalize_address,
    normalize_phone, normalize_pinyin, parse_newborn_placeholder, parse_pinyin_name,
    split_chinese_name, surname_pinyin, upgrade_resident_id_15,
)
from .scoring import (
    DEFAULT_MU, FellegiSunter, MatchResult, Outcome, PatientMatcher, Thresholds, decide,
)

__all__ = [
    "RESIDENT_ID_SYSTEM", "Address", "Demographics", "IdStatus", "ResidentIdCheck",
    "check_resident_id", "from_fhir_patient", "gb11643_check_character", "make_demographics",
    "normalize_address", "normalize_phone", "normalize_pinyin", "parse_newborn_placeholder",
    "parse_pinyin_name", "split_chinese_name", "surname_pinyin", "upgrade_resident_id_15",
    "FieldComparison", "compare_demographics", "jaro_winkler", "blocking_keys",
    "DEFAULT_MU", "FellegiSunter", "MatchResult", "Outcome", "PatientMatcher", "Thresholds",
    "decide",
]
