"""Wiring the master patient index into the hub (called once by ``hub.api.app.Hub``)."""

from __future__ import annotations

from hub.mpi.golden_search import SourceRecordsOnly
from hub.mpi.index import MasterPatientIndex, MatchProfile
from hub.mpi.linked_search import LinkedSearch
from hub.mpi.operations import register
from hub.mpi.scoring import PatientMatcher, Thresholds


def install_mpi(hub) -> MasterPatientIndex:
    """Match every Patient the FHIR store writes, serve $match, $ihe-pix, $merge, $unmerge,
    expand ``:linked`` searches, make $everything and compartment searches span the person, and
    keep golden records out of Patient searches that do not ask for them."""
    s = hub.settings
    thresholds = Thresholds(link=s.mpi_link_threshold, review=s.mpi_review_threshold)
    mpi = MasterPatientIndex(hub.fhir, MatchProfile.chinese(PatientMatcher(thresholds=thresholds)),
                             max_candidates=s.mpi_max_candidates)
    mpi.install()
    register(hub.fhir, mpi, thresholds)
    hub.fhir.search_rewriters.append(LinkedSearch(hub.fhir, mpi))
    hub.fhir.search_rewriters.append(SourceRecordsOnly())
    return mpi
