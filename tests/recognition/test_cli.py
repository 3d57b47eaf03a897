"""``yilian recognition …`` on both engines: load the published files, versions, bad files, stats."""

from __future__ import annotations

import json

from tests.recognition.conftest import SAMPLES
from yilian.cli import main


def run(capsys, db_url: str, *argv: str) -> tuple[int, str, str]:
    code = main(["recognition", *argv[:1], *argv[1:], "--database-url", db_url])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_load_versions_and_stats(db_url, capsys, tmp_path):
    for kind in ("scopes", "catalogue", "codemaps", "qualifications"):
        code, out, _ = run(capsys, db_url, "load", kind, str(SAMPLES / f"{kind}.csv"), "--effective-from", "2026-01-01")
        assert code == 0 and f"{kind}: version 1," in out
    code, out, _ = run(capsys, db_url, "load", "catalogue", str(SAMPLES / "catalogue.csv"), "--effective-from",
                       "2999-01-01")
    assert code == 0 and "catalogue: version 2, 6 rows" in out
    code, out, _ = run(capsys, db_url, "versions", "catalogue")
    lines = out.splitlines()
    assert lines[0].startswith("*    1  effective 2025-12-31T16:00:00") and lines[1].startswith("     2  effective 2998")
    bad = tmp_path / "q.csv"
    bad.write_text("organization,item_std_code\nH001,CAT-GLU\n")
    code, _, err = run(capsys, db_url, "load", "qualifications", str(bad))
    assert code == 2 and "missing column(s) scope" in err
    release = tmp_path / "r.json"
    release.write_text(json.dumps({"scopes": [{"scope_code": "X", "level": "city", "label": "X市HR", "members": "H9"}]},
                                  ensure_ascii=False))
    code, out, _ = run(capsys, db_url, "load", "release", str(release))
    assert code == 0 and "scopes: version 2, 1 rows" in out
    code, out, _ = run(capsys, db_url, "stats", "--group-by", "item")
    assert code == 0 and json.loads(out)["totals"]["offered"] == 0
