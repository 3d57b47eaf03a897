"""Domain errors of the ingest API (mapped to OperationOutcome by the application)."""

from __future__ import annotations

from hub.errors import HubError


class PayloadTooLarge(HubError):
    """More messages or bytes in one request than the hub accepts (RFC 9110 §15.5.14)."""

    status, code = 413, "too-costly"
