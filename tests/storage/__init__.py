"""Shared checks of the storage tests."""


def search_answers(fhir, searches, *, ordered: bool = True) -> list[list[tuple[str, str, str]]]:
    """The answer to each (path, params) of ``searches`` over HTTP: (type, id, search mode) of its
    entries, AuditEvents left out (they come and go with the searches themselves: each read is
    recorded). ``ordered``: the order is part of the answer (sorts); else sorted."""
    out = []
    for path, params in searches:
        r = fhir.get(path, params=params)
        assert r.status_code == 200, r.text
        entries = [(e["resource"]["resourceType"], e["resource"]["id"], e.get("search", {}).get("mode", ""))
                   for e in r.json().get("entry", []) if e["resource"]["resourceType"] != "AuditEvent"]
        out.append(entries if ordered else sorted(entries))
    return out
