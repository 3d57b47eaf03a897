"""Immutable result and index types of the terminology service.

Field names follow the output parameters of the FHIR R4 terminology operations
(codesystem-operation-lookup, conceptmap-operation-translate), so the hub can turn them into
``Parameters`` resources one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Designation:
    """CodeSystem.concept.designation: ``language`` (BCP-47, e.g. ``zh-CN``), ``use`` as
    ``(system, code)`` or None, and the ``value``."""

    value: str
    language: str | None = None
    use: tuple[str | None, str | None] | None = None


@dataclass(frozen=True, slots=True)
class Property:
    """A concept property (CodeSystem.concept.property), value in its FHIR JSON type.

    ``type`` is the value[x] suffix (``code``, ``string``, ``boolean``, ``dateTime``, …). The
    hierarchy is reported as ``parent`` / ``child`` properties of type ``code``, as $lookup does.
    """

    code: str
    value: Any
    type: str = "code"


@dataclass(frozen=True, slots=True)
class Concept:
    """One concept of a loaded code system, with its place in the is-a hierarchy."""

    code: str
    display: str | None = None
    definition: str | None = None
    designations: tuple[Designation, ...] = ()
    properties: tuple[Property, ...] = ()
    parents: tuple[str, ...] = ()
    children: tuple[str, ...] = ()

    def property_values(self, code: str) -> tuple[Any, ...]:
        """Values of the property ``code`` (empty when absent)."""
        return tuple(p.value for p in self.properties if p.code == code)

    @property
    def inactive(self) -> bool:
        """True when the concept's status is retired/inactive (deprecated concepts stay active)."""
        status = self.property_values("status")
        return bool(self.property_values("inactive") == (True,) or
                    (status and status[0] in ("retired", "inactive")))

    @property
    def abstract(self) -> bool:
        """True for concepts marked ``notSelectable`` (grouping codes such as ``_ActEncounterCode``)."""
        return self.property_values("notSelectable") == (True,)


@dataclass(frozen=True, slots=True)
class LookupResult:
    """Outcome of $lookup (codesystem-operation-lookup)."""

    system: str
    code: str
    display: str | None
    name: str | None = None
    version: str | None = None
    definition: str | None = None
    designations: tuple[Designation, ...] = ()
    properties: tuple[Property, ...] = ()
    abstract: bool = False
    inactive: bool = False

    def display_for(self, language: str) -> str | None:
        """The display in ``language`` (``zh-CN``, ``zh``, ``en`` …), falling back on the default.

        A designation whose language starts with ``language`` (``zh`` matches ``zh-CN``) wins.
        """
        lang = language.lower()
        for d in self.designations:
            if d.language and (d.language.lower() == lang or d.language.lower().startswith(lang + "-")):
                return d.value
        return self.display


@dataclass(frozen=True, slots=True)
class Product:
    """ConceptMap.group.element.target.product: another value the mapping also produces.

    Local lab code maps use it for the unit the hospital reports the item in (UCUM).
    """

    property: str
    system: str | None
    value: str | None


@dataclass(frozen=True, slots=True)
class Translation:
    """One match of $translate (conceptmap-operation-translate ``match``)."""

    equivalence: str
    system: str
    code: str
    display: str | None
    conceptmap: str
    source_system: str
    source_code: str
    comment: str | None = None
    products: tuple[Product, ...] = field(default=())

    def coding(self) -> dict:
        """The target as a FHIR Coding (JSON dict)."""
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out

    def product(self, prop: str) -> Product | None:
        """The first product whose ``property`` is ``prop``."""
        return next((p for p in self.products if p.property == prop), None)
