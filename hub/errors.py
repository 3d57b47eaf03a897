"""Domain errors with a category and a stable code, mapped once per wire.

FHIR REST maps them to an HTTP status and an OperationOutcome; the HL7 ingest maps them to an
ACK code with an ERR segment; DICOM to a status. Anything that is not a ``HubError`` is an
internal error (500 / AR / 0xC000), never blamed on the client.
"""

from __future__ import annotations


class HubError(Exception):
    """Base class. ``code`` is an OperationOutcome issue type (http://hl7.org/fhir/issue-type)."""

    status = 500
    code = "exception"
    severity = "error"

    def __init__(self, diagnostics: str, *, expression: list[str] | None = None, code: str | None = None,
                 status: int | None = None):
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression or []
        if code:
            self.code = code
        if status:
            self.status = status

    def outcome(self) -> dict:
        issue = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = self.expression
        return {"resourceType": "OperationOutcome", "issue": [issue]}


class InvalidRequest(HubError):
    status, code = 400, "invalid"


class InvalidResource(HubError):
    """The body is not a valid resource (http.html#create: 400 or 422)."""

    status, code = 422, "invalid"


class NotSupported(HubError):
    status, code = 400, "not-supported"


class NotFound(HubError):
    status, code = 404, "not-found"


class Gone(HubError):
    status, code = 410, "deleted"


class Conflict(HubError):
    status, code = 409, "conflict"


class PreconditionFailed(HubError):
    status, code = 412, "conflict"


class MultipleMatches(HubError):
    """A conditional interaction matched more than one resource (http.html#cond-update)."""

    status, code = 412, "multiple-matches"


class Unauthorized(HubError):
    status, code = 401, "login"


class Forbidden(HubError):
    status, code = 403, "forbidden"


class TooCostly(HubError):
    status, code = 400, "too-costly"


class Unavailable(HubError):
    """The hub cannot do it now, though it may in a moment (503): the sender is to retry."""

    status, code = 503, "transient"
