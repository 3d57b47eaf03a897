"""``_walk_references``: every ``reference`` string of a resource, depth first in the order of the
keys (a transaction's first failing conditional reference names the error, so the order is part
of the behaviour), replaced where the function answers; objects and lists of any depth, and
``dict``/``str`` subclasses as the mapping engine or a caller may build them."""

from __future__ import annotations

from collections import OrderedDict

from hub.fhir.bundles import _walk_references


class Text(str):
    pass


def _resource() -> dict:
    return {
        "resourceType": "Observation",
        "subject": {"reference": "urn:uuid:1", "display": "reference"},
        "performer": [{"reference": "Practitioner?identifier=s|1"}, None, "reference", [{"reference": "x/2"}]],
        "reference": {"reference": "nested/3"},
        "contained": [OrderedDict(resourceType="Patient", link=[{"other": {"reference": Text("Patient/4")}}])],
        "extension": [{"url": "u", "valueReference": {"reference": "urn:uuid:5"}}],
        "note": [{"text": "reference"}],
        "focus": [[{"reference": "deep/6"}]],
        "basedOn": [{"reference": 7}],
    }


def test_references_are_visited_depth_first_in_key_order_and_replaced_where_answered():
    seen: list[str] = []

    def rename(ref: str) -> str | None:
        seen.append(ref)
        return ref.upper() if ref.startswith("urn:") else None

    resource = _resource()
    assert _walk_references(resource, rename) == 2
    assert seen == ["urn:uuid:1", "Practitioner?identifier=s|1", "x/2", "nested/3", "Patient/4", "urn:uuid:5",
                    "deep/6"]
    assert resource["subject"]["reference"] == "URN:UUID:1"
    assert resource["extension"][0]["valueReference"]["reference"] == "URN:UUID:5"
    assert resource["contained"][0]["link"][0]["other"]["reference"] == "Patient/4"
    assert resource["basedOn"] == [{"reference": 7}]


def test_a_list_or_a_scalar_is_walked_as_well():
    assert _walk_references([{"reference": "a"}, [{"reference": "b"}]], lambda r: r + "!") == 2
    assert _walk_references("reference", lambda r: "x") == 0
