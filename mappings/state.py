"""What a message walk remembers between segments (the current patient, visit, order …)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Order:
    """One ORC/OBR group: the ServiceRequest, its report, results and specimens."""

    request: dict
    key: tuple[str, str]                     # (system, value) the order's resources derive ids from
    orc: Any = None
    obr: Any = None
    report: dict | None = None
    results: list[str] = field(default_factory=list)
    specimens: list[str] = field(default_factory=list)
    attachments: list[dict] = field(default_factory=list)
    imaging: bool = False
    specimen_group: str | None = None        # "Specimen/<id>" once an SPM opened the SPECIMEN group
    effective: str | None = None             # OBR-7 as FHIR dateTime ("" when empty), read once


@dataclass
class State:
    spec: dict
    trigger: str
    patient: str | None = None               # "Patient/<id>"
    patient_id: str | None = None
    encounter: str | None = None
    order: Order | None = None
    orders: list[Order] = field(default_factory=list)
    last: dict | None = None                 # the resource an NTE comments on
    last_obx: dict | None = None
    document: dict | None = None
    appointment: dict | None = None
    appointment_start_from_ais: bool = False
    immunization: dict | None = None
    vaccination_orc: Any = None              # VXU: the ORC of the RXA that follows
    finishers: list = field(default_factory=list)
