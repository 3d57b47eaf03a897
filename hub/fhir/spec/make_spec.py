"""Regenerate the reduced FHIR R4 spec files in this folder.

Usage (from the repository root)::

    python -m hub.fhir.spec.make_spec /path/to/shared/spec/fhir-r4

Reads the official R4 (4.0.1) definition files ``search-parameters.json`` and
``compartmentdefinition-patient.json`` (see ``PROVENANCE.md``) and writes:

* ``search-parameters.json`` -- the 1,378 SearchParameter resources reduced to the
  elements the search registry uses (``url``, ``code``, ``base``, ``type``,
  ``expression``, ``target``, ``comparator``, ``modifier``, ``component``,
  ``multipleOr``, ``multipleAnd``, ``description``), one parameter per line so
  diffs stay readable.  Dropped: publication metadata (``id``, ``extension``,
  ``version``, ``name``, ``status``, ``experimental``, ``date``, ``publisher``,
  ``contact``, ``xpath``, ``xpathUsage``).  No value is altered.
* ``compartmentdefinition-patient.json`` -- copied byte for byte.
* ``fhir-code-systems.json`` -- the codes of every complete FHIR-defined CodeSystem
  (``http://hl7.org/fhir/…``) in ``valuesets.json``, hierarchies flattened:
  ``{url: [code, …]}``. The R4B models list a required binding's codes only up to a "+"
  ("and more"); the validator completes such a list from here.

The output is deterministic (input order is kept), so re-running the script on
the same input produces identical files.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

KEEP = (
    "url",
    "code",
    "base",
    "type",
    "expression",
    "target",
    "comparator",
    "modifier",
    "component",
    "multipleOr",
    "multipleAnd",
    "description",
)


def reduce_search_parameters(bundle: dict) -> str:
    """Return the reduced search-parameter file text for an R4 SearchParameter Bundle."""
    if bundle.get("resourceType") != "Bundle":
        raise ValueError("expected a Bundle of SearchParameter resources")
    lines = []
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res.get("resourceType") != "SearchParameter":
            raise ValueError(f"unexpected entry {res.get('resourceType')}")
        reduced = {k: res[k] for k in KEEP if k in res}
        lines.append(json.dumps(reduced, ensure_ascii=False, separators=(",", ":")))
    header = {
        "fhirVersion": "4.0.1",
        "note": "Reduced copy of the FHIR R4 search-parameters.json, see PROVENANCE.md and make_spec.py",
    }
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":"))[:-1]
    return head + ',"searchParameters":[\n' + ",\n".join(lines) + "\n]}\n"


def _codes(concepts: list[dict]) -> list[str]:
    out = []
    for c in concepts:
        out.append(c["code"])
        out.extend(_codes(c.get("concept", [])))
    return out


def fhir_code_systems(bundle: dict) -> str:
    """``{url: [codes]}`` of the complete CodeSystems defined by FHIR itself, one per line."""
    lines = []
    for entry in bundle["entry"]:
        res = entry["resource"]
        url = res.get("url", "")
        if (res.get("resourceType") == "CodeSystem" and url.startswith("http://hl7.org/fhir/")
                and res.get("content") == "complete" and res.get("concept")):
            lines.append(json.dumps(url) + ":" + json.dumps(_codes(res["concept"]), ensure_ascii=False,
                                                             separators=(",", ":")))
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    src = Path(argv[1])
    bundle = json.loads((src / "search-parameters.json").read_text(encoding="utf-8"))
    (HERE / "search-parameters.json").write_text(reduce_search_parameters(bundle), encoding="utf-8")
    shutil.copyfile(src / "compartmentdefinition-patient.json", HERE / "compartmentdefinition-patient.json")
    valuesets = json.loads((src / "valuesets.json").read_text(encoding="utf-8"))
    (HERE / "fhir-code-systems.json").write_text(fhir_code_systems(valuesets), encoding="utf-8")
    print(f"wrote {len(bundle['entry'])} search parameters and the Patient compartment to {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
