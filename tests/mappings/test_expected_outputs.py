"""Yilian's bundles against the expected bundles shipped in the corpus, field by field.

Pairs come from index.tsv ``expected_output`` (Microsoft FHIR-Converter ``-expected.json``,
ReportStream ``.fhir``, the V2-to-FHIR IG bundles; ReportStream's ``-expected.hl7`` round trips
are HL7, not FHIR, and are left out). :func:`facts.facts` reduces both bundles to comparable
facts (patient identifiers, names, birth date, sex, encounter class and period, observation
codes, values, units, ranges, flags, statuses, report codes/statuses/result counts, order
identifiers and codes …) ignoring ids, metadata and identifier systems (each converter mints its
own: Yilian's are ``{base}/sid/{org}/{kind}``).

The agreement of a message type is the share of the expected facts Yilian produces, once the
expected facts Yilian leaves out **on purpose** are set apart. Each such decision is one
:class:`Deliberate` rule below with its reason; a rule only sets a fact apart when the message
shows it applies (the value comes from the segment the rule names, or Yilian carries the same
datum in the place the IG puts it), so a genuine miss is never hidden. Messages Yilian rejects
are counted apart (they have no bundle to compare): ReportStream's "catchall" datatype tests
send ``PID|1`` without any identifier, or no PID at all (101, PID-3: an unidentifiable patient
cannot be linked, docs/mappings.md); the IG's MDM_T02 sample carries the placeholder
``<Base64 encoded>`` as ED data (102, OBX-5).

Extra facts (Yilian produces, the expected bundle lacks) do not lower the rate; the ones seen are
deliberate too: an OBX with a value in an ADT or order message is an Observation with its value,
range and unit (FHIR-Converter drops them); PID-20 (driver's licence) is a Patient identifier
(the IG's ADT_A01 bundle leaves it out).
"""

from __future__ import annotations

import collections
import csv
import json
from dataclasses import dataclass
from typing import Callable

import pytest

from adapters.hl7v2 import HL7ParseError, Message, parse_message
from mappings import MappingError, convert

from .conftest import CORPUS_DIR, needs_corpus
from .facts import Fact, facts

pytestmark = [pytest.mark.slow, needs_corpus]

#: agreement reached per message type, deliberate differences set apart (a drop is a regression)
FLOORS = {
    **{t: 1.0 for t in ("ADT^A01", "ADT^A02", "ADT^A03", "ADT^A04", "ADT^A05", "ADT^A06", "ADT^A07", "ADT^A08", "ADT^A09", "ADT^A10",
                        "ADT^A11", "ADT^A13", "ADT^A14", "ADT^A15", "ADT^A16", "ADT^A25", "ADT^A26", "ADT^A27", "ADT^A28", "ADT^A31",
                        "MDM^T01", "MDM^T02", "MDM^T05", "MDM^T06", "MDM^T09", "MDM^T10", "ORM^O01", "SIU^S12",
                        "SIU^S13", "SIU^S14", "SIU^S15", "SIU^S16", "SIU^S17", "SIU^S26", "VXU^V04")},
    "ORU^R01": 1.0, "OML^O21": 1.0, "OMG^O19": 0.81, "OUL^R22": 0.70, "OUL^R23": 0.72, "OUL^R24": 0.60,
}


@dataclass
class Case:
    """One message, Yilian's bundle and facts: what a :class:`Deliberate` rule may look at."""
    mtype: str
    path: str
    msg: Message
    bundle: dict
    got: set[Fact]

    def fields(self, segment: str, n: int) -> list[str]:
        """Raw text of field ``n`` of every ``segment`` (escaped, all repetitions)."""
        return [s.raw_field(n) for s in self.msg.segments if s.name == segment]

    def components(self, segment: str, n: int) -> set[str]:
        """Every component and subcomponent value of field ``n`` of every ``segment``."""
        d = self.msg.delimiters
        out = set()
        for raw in self.fields(segment, n):
            for rep in raw.split(d.repetition):
                for comp in rep.split(d.component):
                    out.update(comp.split(d.subcomponent))
        return out - {""}

    def in_segments(self, value: str, *names: str) -> bool:
        return any(value in s.raw for s in self.msg.segments if s.name in names)

    def resources(self, rtype: str) -> list[dict]:
        return [e["resource"] for e in self.bundle["entry"] if e["resource"]["resourceType"] == rtype]

    def codes(self, rtype: str, element: str) -> set[str]:
        out = set()
        for res in self.resources(rtype):
            value = res.get(element)
            for cc in value if isinstance(value, list) else [value] if value else []:
                out.update(c.get("code") for c in cc.get("coding", []))
        return out

    def identifier_values(self, rtype: str, element: str = "identifier") -> set[str]:
        out = set()
        for res in self.resources(rtype):
            value = res.get(element)
            for ident in value if isinstance(value, list) else [value] if value else []:
                out.add(ident.get("value"))
        return out


@dataclass(frozen=True)
class Deliberate:
    """An expected fact Yilian leaves out on purpose, and why."""
    name: str
    reason: str
    applies: Callable[[Case, Fact], bool]


def _xpn15(case: Case, fact: Fact) -> bool:
    family, given = fact[1], fact[2]
    return (bool(given) and given[-1] in case.components("PID", 5)
            and ("Patient.name", family, tuple(given[:-1])) in case.got)


def _status_by_table_0085(case: Case, fact: Fact) -> bool:
    code = fact[1]
    ours = {f[2] for f in case.got if f[0] == "Observation.status" and f[1] == code}
    sent = {s.get(11) for s in case.msg.segments if s.name == "OBX" and s.get(3) == code}
    return bool(ours) and fact[2] == "unknown" and sent & {"S", "R", "I", "O"} and "unknown" not in ours


def _obr_number_overridden(case: Case, value: str) -> bool:
    """``value`` is OBR-2/OBR-3 of a group whose own ORC-2/ORC-3 differ and are Yilian's identifiers."""
    orc = None
    ours = case.identifier_values("ServiceRequest")
    overridden = kept = False
    for seg in case.msg.segments:
        if seg.name == "ORC":
            orc = seg
        elif seg.name == "OBR":
            for n in (2, 3):
                if seg.get(n) == value:
                    if orc is not None and orc.get(n) and orc.get(n) != value and orc.get(n) in ours:
                        overridden = True
                    else:
                        kept = True      # this group's own number: Yilian must have it
            orc = None
    return overridden and not kept


def _sent_units(case: Case, code: str) -> set[str]:
    """Quantity.unit (the text as sent) of Yilian's Observations with that code."""
    return {r["valueQuantity"].get("unit") for r in case.resources("Observation")
            if "valueQuantity" in r and code in {c.get("code") for c in r["code"].get("coding", [])}}


def _unescaped(text: str) -> str:
    for escape, meaning in (("\\.br\\", " "), ("\\R\\", "~"), ("\\F\\", "|"), ("\\S\\", "^"),
                            ("\\T\\", "&"), ("\\E\\", "\\")):
        text = text.replace(escape, meaning)
    return " ".join(text.split())


DELIBERATE: tuple[Deliberate, ...] = (
    Deliberate(
        "patient-only-from-PID",
        "Patient identifiers and names come from PID (and MRG) only: FHIR-Converter also folds "
        "guarantor (GT1), insured (IN1/IN2), disability (DB1), consent (CON) and next-of-kin data "
        "into the Patient; those are other people or other records (IG: RelatedPerson, Coverage).",
        lambda c, f: f[0] in ("Patient.identifier", "Patient.name") and bool(f[1])
        and not c.in_segments(f[1], "PID", "MRG")),
    Deliberate(
        "XPN.15-called-by",
        "XPN.15 (\"called by\") is not a given name (IG XPN[HumanName] leaves it out of given); "
        "FHIR-Converter appends it to HumanName.given.",
        lambda c, f: f[0] == "Patient.name" and _xpn15(c, f)),
    Deliberate(
        "OBX-11-table-0085",
        "OBX-11 S/R (partial, unverified) -> preliminary, I/O (specimen in lab, order detail) -> "
        "registered, as the IG's table 0085 ConceptMap says; FHIR-Converter and ReportStream write "
        "unknown.",
        lambda c, f: f[0] == "Observation.status" and _status_by_table_0085(c, f)),
    Deliberate(
        "PDA-ACC-not-observations",
        "FHIR-Converter makes Observations of PDA (death certificate, autopsy, coroner) and ACC "
        "(injury); the IG has no such Observation map: death is Patient.deceased[x] (PID-29/30).",
        lambda c, f: f[0].startswith("Observation.") and f[1] in (
            "autopsy", "coroner", "death-certificate", "injury-incident")
        and any(s.name in ("PDA", "ACC") for s in c.msg.segments)),
    Deliberate(
        "RF1-referral",
        "RF1 (referral information) is part of the REF/RRI referral messages, which the hub does "
        "not map; in an ADT it does not identify an order.",
        lambda c, f: f[0] == "ServiceRequest.identifier" and c.in_segments(f[1], "RF1")),
    Deliberate(
        "parent-order",
        "ORC-8 / OBR-29 (parent order) name another order (IG: ServiceRequest.basedOn), not this "
        "order's identifiers.",
        lambda c, f: f[0] == "ServiceRequest.identifier"
        and f[1] in c.components("ORC", 8) | c.components("OBR", 29)),
    Deliberate(
        "ORC-numbers-over-OBR",
        "When ORC-2/ORC-3 and OBR-2/OBR-3 disagree, the ORC's are the order's numbers (the IG's "
        "OBR[ServiceRequest] map reads OBR-2/3 only when ORC-2/3 are empty); FHIR-Converter keeps "
        "both.",
        lambda c, f: f[0] == "ServiceRequest.identifier" and _obr_number_overridden(c, f[1])),
    Deliberate(
        "ORC-4-requisition",
        "ORC-4 (placer group number) is ServiceRequest.requisition (IG ORC[ServiceRequest]); "
        "ReportStream and FHIR-Converter list it as one more identifier.",
        lambda c, f: f[0] == "ServiceRequest.identifier"
        and f[1] in c.identifier_values("ServiceRequest", "requisition")),
    Deliberate(
        "VXU-orders-on-Immunization",
        "In a VXU, ORC-2/ORC-3 identify the Immunization (IG ORC[Immunization]); FHIR-Converter "
        "makes a ServiceRequest of each ORC.",
        lambda c, f: f[0] == "ServiceRequest.identifier" and c.mtype.startswith("VXU")
        and f[1] in c.identifier_values("Immunization")),
    Deliberate(
        "AIS-serviceType",
        "AIS-3 (universal service identifier) is Appointment.serviceType (IG AIS[Appointment]); "
        "FHIR-Converter makes a ServiceRequest of each AIS.",
        lambda c, f: f[0] == "ServiceRequest.code" and c.mtype.startswith("SIU")
        and f[1] in c.codes("Appointment", "serviceType")),
    Deliberate(
        "MDM-content-in-document",
        "MDM content stays in the DocumentReference (TXA + OBX), not also as Observations or a "
        "DiagnosticReport (FHIR-Converter makes both).",
        lambda c, f: c.mtype.startswith("MDM") and f[0].split(".")[0] in ("Observation", "DiagnosticReport")
        and bool(c.resources("DocumentReference"))),
    Deliberate(
        "OBX-pointer-or-document-not-a-report",
        "FHIR-Converter makes a DiagnosticReport of every OBX carrying a pointer (RP) or a document "
        "(ED) in orders; Yilian keeps RP as the Observation's text and an ED as a DocumentReference "
        "related to the order (R4 Observation.value[x] has no Attachment).",
        lambda c, f: f[0].startswith("DiagnosticReport.") and f[1] in (
            {s.get(3) for s in c.msg.segments if s.name == "OBX" and s.get(2) in ("RP", "ED")})
        and f[1] in c.codes("Observation", "code") | c.codes("DocumentReference", "type")),
    Deliberate(
        "PV2-9-not-an-end",
        "PV2-9 (expected discharge) of an encounter under way is not its end (FHIR-Converter writes "
        "it to Encounter.period.end); Yilian uses PV2-8/PV2-9 only as a planned encounter's period.",
        lambda c, f: f[0] == "Encounter.period.end" and any(c.fields("PV2", 9))
        and not any(c.fields("PV1", 45))
        and all(e.get("status") != "planned" for e in c.resources("Encounter"))),
    Deliberate(
        "OBX-without-code",
        "An OBX without OBX-3 is no observation (Observation.code is 1..1); ReportStream makes an "
        "Observation without code and counts it in the report.",
        lambda c, f: any(s.name == "OBX" and not s.get(3) for s in c.msg.segments) and (
            (f[0].startswith("Observation.") and f[1] is None)
            or (f[0] == "DiagnosticReport.results"
                and ("DiagnosticReport.results", f[1], f[2] - 1) in c.got))),
    Deliberate(
        "TXA-outside-MDM",
        "TXA is not a segment of ORU_R01; Yilian reads documents from MDM (FHIR-Converter makes a "
        "DocumentReference of a TXA wherever it is).",
        lambda c, f: f[0].startswith("DocumentReference.") and not c.mtype.startswith("MDM")
        and any(s.name == "TXA" for s in c.msg.segments)),
    Deliberate(
        "empty-DocumentReference",
        "FHIR-Converter's VXU template emits a DocumentReference with nothing but an author (no "
        "type, no status, no content): there is nothing to agree on.",
        lambda c, f: f[0].startswith("DocumentReference.") and f[1] is None),
    Deliberate(
        "unit-as-UCUM",
        "A unit that is UCUM under another spelling gets its UCUM code (mIU/L -> m[IU]/L), the "
        "text as sent stays in Quantity.unit; the other converters copy the text into the code.",
        lambda c, f: f[0] == "Observation.unit" and f[2] in _sent_units(c, f[1])
        and any(g[0] == f[0] and g[1] == f[1] and g[2] != f[2] for g in c.got)),
    Deliberate(
        "escapes-resolved",
        "Escape sequences are resolved by the parser (\\.br\\ is a line break, \\R\\ a "
        "repetition separator); ReportStream keeps them as text.",
        lambda c, f: f[0] == "Observation.value" and f[2][0] == "string" and "\\" in f[2][1]
        and ("Observation.value", f[1], ("string", _unescaped(f[2][1]))) in c.got),
    Deliberate(
        "IG-sample-truncates-PV1-44",
        "The IG's ADT_A01 bundle writes PV1-44 20150601135800 as the date 2015-06-01; Yilian keeps "
        "the time (DTM precision is kept).",
        lambda c, f: f[0] == "Encounter.period.start" and len(f[1]) == 10
        and any(g[0] == f[0] and g[1].startswith(f[1]) for g in c.got)),
)


def _pairs() -> list[tuple[str, str, str]]:
    with open(CORPUS_DIR / "index.tsv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [(r["msg_type^trigger(MSH-9.1^9.2)"].strip(), r["path"], r["expected_output"]) for r in rows
            if r["expected_output"].endswith((".json", ".fhir"))]


def _deliberate(case: Case, fact: Fact) -> Deliberate | None:
    return next((rule for rule in DELIBERATE if rule.applies(case, fact)), None)


def compare(mtype: str, path: str, expected: str):
    """(case, hits, real misses, {rule name: facts set apart}) of one message, or None when rejected."""
    msg = parse_message((CORPUS_DIR / path).read_bytes())
    result = convert(msg, "HOSPA")
    want = facts(json.loads((CORPUS_DIR / expected).read_text(encoding="utf-8-sig")))
    case = Case(mtype, path, msg, result.bundle, facts(result.bundle))
    misses, apart = set(), collections.defaultdict(set)
    for fact in want - case.got:
        rule = _deliberate(case, fact)
        if rule is None:
            misses.add(fact)
        else:
            apart[rule.name].add(fact)
    return case, want & case.got, misses, apart


def test_agreement_with_expected_bundles_per_message_type(capsys):
    # hit, compared, converted, rejected, set apart
    agree: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
    by_rule: collections.Counter = collections.Counter()
    for mtype, path, expected in _pairs():
        row = agree[mtype]
        try:
            _case, hits, misses, apart = compare(mtype, path, expected)
        except (HL7ParseError, MappingError):
            row[3] += 1
            continue
        row[0] += len(hits)
        row[1] += len(hits) + len(misses)
        row[2] += 1
        row[4] += sum(len(v) for v in apart.values())
        by_rule.update({name: len(v) for name, v in apart.items()})
    lines = [f"{'type':10s} {'converted':>9s} {'not mapped':>10s} {'facts':>6s} {'deliberate':>10s} "
             f"{'agreement':>9s} {'all facts':>9s}"]
    for mtype, (hit, total, conv, rej, apart) in sorted(agree.items()):
        rate = f"{hit / total:9.3f}" if total else "      n/a"
        raw = f"{hit / (total + apart):9.3f}" if total else "      n/a"
        lines.append(f"{mtype:10s} {conv:9d} {rej:10d} {total:6d} {apart:10d} {rate} {raw}")
    with capsys.disabled():
        print("\nAgreement with the corpus' expected bundles (share of expected facts produced, "
              "deliberate differences set apart):")
        print("\n".join(lines))
        print("set apart by rule: " + ", ".join(f"{k} {v}" for k, v in sorted(by_rule.items())))
    low = {m: round(agree[m][0] / agree[m][1], 3) for m, floor in FLOORS.items()
           if not agree[m][1] or agree[m][0] / agree[m][1] < floor}
    assert not low, f"agreement below the floor: {low}"


def test_deliberate_rules_do_not_hide_a_real_difference():
    """Every fact Yilian agrees on would be a real miss if Yilian lost it: no rule sets it apart
    (the rules look at where a value comes from and where Yilian keeps it, not at its kind)."""
    checked = 0
    for mtype, path, expected in _pairs():
        try:
            case, hits, _misses, _apart = compare(mtype, path, expected)
        except (HL7ParseError, MappingError):
            continue
        for fact in hits:
            case.got.discard(fact)
            rule = _deliberate(case, fact)
            assert rule is None, f"{path}: {fact} lost would be excused by {rule.name}"
            case.got.add(fact)
            checked += 1
    assert checked > 1000


def test_facts_see_a_difference():
    """The comparison is not blind: a changed value or status is a missing fact."""
    mtype, path, expected = next(p for p in _pairs() if p[0] == "ORU^R01" and "microsoft" in p[1])
    bundle = convert(parse_message((CORPUS_DIR / path).read_bytes()), "HOSPA").bundle
    before = facts(bundle)
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    obs["status"] = "entered-in-error"
    assert facts(bundle) != before
