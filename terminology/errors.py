"""Errors raised by the terminology package.

Each carries ``code``, an OperationOutcome issue type (http://hl7.org/fhir/issue-type), so the hub
can map them once per wire (FHIR: 4xx + OperationOutcome; HL7 v2: AE + ERR) like its own domain
errors. The package does not import the hub.
"""

from __future__ import annotations


class TerminologyError(ValueError):
    """Base class; ``code`` is the OperationOutcome issue type."""

    code = "processing"


class InvalidResource(TerminologyError):
    """A CodeSystem / ValueSet / ConceptMap (or a local code file) that cannot be used."""

    code = "invalid"


class UnknownValueSet(TerminologyError):
    """No value set with that canonical URL (and version) is loaded."""

    code = "not-found"


class UnknownConceptMap(TerminologyError):
    """No concept map with that canonical URL is loaded."""

    code = "not-found"


class NotSupported(TerminologyError):
    """The request needs something this implementation does not do (a filter operator, a code
    system that is not loaded in full, …)."""

    code = "not-supported"
