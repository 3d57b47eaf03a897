"""The database floor of HL7 v2 ingest: what SQLite alone costs per ORU^R01 message.

Run: ``python bench/sqlite_floor.py [--warm 3000] [--messages 3000] [--batch 20]``.

It migrates a fresh SQLite file with the hub's schema, turns ``bench/hl7v2_ingest.py``'s
ORU^R01 messages into the rows the store writes for them (the 15 ``resources`` rows and their
index rows, built before the clock starts), and then only executes those inserts through the
DBAPI, ``--batch`` messages per ``BEGIN IMMEDIATE`` ... ``COMMIT``, as the ingest groups them.
No mapping, validation, index extraction, raw log, queue or Python store logic is timed: the
figure is the part of a message's cost that must run inside the single SQLite writer's lock,
so ``1 / floor`` bounds the messages per second any number of hub processes can reach.
``--warm`` messages first give the B-trees the depth of a store in use (not timed). It also
prints the floor per index table and with the index tables' secondary indexes dropped, all of
them or one kind (what the ``ix_*`` B-trees cost).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def message_rows(start: int, count: int, tag: str,
                 seen: set[tuple[str, str]]) -> list[tuple[list[tuple], dict[str, list[tuple]]]]:
    """Per message: its ``resources`` rows and its index rows by kind, as the store writes them
    (the res_pk is filled in at insert time); a resource in ``seen`` (written by an earlier
    message) is left out, and the others are added to it."""
    import orjson

    from adapters.hl7v2 import parse_message
    from hl7v2_ingest import oru_r01
    from hub.fhir.search.extract import extract_index, stored_rows
    from hub.storage.schema import INDEX_TABLES
    from mappings import convert

    out = []
    for n in range(start, start + count):
        # the sending Organization recurs in every message; a repeat is not a new row
        bundle = convert(parse_message(oru_r01(n, tag)), organization="HOSPA").bundle
        res, idx = [], {}
        for e in bundle["entry"]:
            r = e["resource"]
            if (r["resourceType"], r["id"]) in seen:
                continue
            seen.add((r["resourceType"], r["id"]))
            res.append((r["resourceType"], r["id"], orjson.dumps(r).decode()))
            rows = stored_rows(r["resourceType"], extract_index(r))
            for kind in INDEX_TABLES:
                for row in getattr(rows, kind):
                    idx.setdefault(kind, []).append((r["resourceType"], r["id"], len(res) - 1) + row)
        out.append((res, idx))
    return out


def apply(con: sqlite3.Connection, messages, batch: int, next_pk: int, only: str | None = None) -> tuple[float, int]:
    """Insert ``messages``' rows, ``batch`` per transaction; (CPU seconds, next free res_pk)."""
    from hub.storage.schema import INDEX_TABLES

    res_sql = ("INSERT INTO resources (res_type, res_id, version, last_updated, deleted, content, method, res_pk)"
               " VALUES (?, ?, 1, ?, 0, ?, 'PUT', ?)")
    idx_sql = {}
    for kind, (table, cols) in INDEX_TABLES.items():
        names = ("res_type", "res_id", "res_pk") + cols
        idx_sql[kind] = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    cpu = 0.0
    for b in range(0, len(messages), batch):
        group = messages[b:b + batch]
        # the rows with their keys, built before the clock starts
        res_rows, idx_rows = [], {}
        for res, idx in group:
            base = next_pk
            next_pk += len(res)
            res_rows += [(t, i, 1_700_000_000_000_000, c, base + k) for k, (t, i, c) in enumerate(res)]
            for kind, rows in idx.items():
                idx_rows.setdefault(kind, []).extend((t, i, base + k, *rest) for t, i, k, *rest in rows)
        c0 = time.thread_time()
        con.execute("BEGIN IMMEDIATE")
        if only in (None, "resources"):
            con.executemany(res_sql, res_rows)
        for kind, rows in idx_rows.items():
            if only in (None, kind):
                con.executemany(idx_sql[kind], rows)
        con.execute("COMMIT")
        cpu += time.thread_time() - c0
        # the hub's checkpointer thread copies the WAL back outside the writer's lock
        con.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return cpu, next_pk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warm", type=int, default=3000)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=20)
    args = ap.parse_args()

    from hub.storage.engine import make_engine
    from hub.storage.migrate import upgrade
    from hub.storage.schema import INDEX_TABLES

    tag = str(int(time.time()))
    print(f"building the rows of {args.warm + args.messages} messages ...", file=sys.stderr)
    seen: set[tuple[str, str]] = set()
    warm = message_rows(0, args.warm, tag, seen)
    measured = message_rows(args.warm, args.messages, tag, seen)
    per_msg = sum(len(r) for r in measured[0][1].values())
    print(f"{len(measured[0][0])} resources rows and {per_msg} index rows per message (the sending Organization once)")

    def fresh(drop_secondary: bool | str = False) -> sqlite3.Connection:
        path = Path(tempfile.mkdtemp(prefix="yilian-floor-")) / "hub.db"
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        engine.dispose()
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # the pragmas of hub.storage.engine's connections
        for p in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-65536", "temp_store=MEMORY",
                  "wal_autocheckpoint=0"):
            con.execute(f"PRAGMA {p}")
        if drop_secondary:
            for table, _ in INDEX_TABLES.values():
                for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=? "
                                           "AND sql IS NOT NULL", (table.name,)).fetchall():
                    if drop_secondary is True or name.endswith(drop_secondary):
                        con.execute(f"DROP INDEX {name}")
        return con

    def run(label: str, only: str | None = None, drop_secondary: bool | str = False) -> float:
        con = fresh(drop_secondary)
        _, pk = apply(con, warm, args.batch, 1, only)
        cpu, _ = apply(con, measured, args.batch, pk, only)
        ms = cpu / len(measured) * 1e3
        print(f"{label:<44} {ms:6.3f} ms CPU per message" + (f"  (ceiling {1e3 / ms:,.0f} messages/s)"
                                                              if only is None else ""))
        con.close()
        return ms

    run("all rows, schema as migrated")
    run("all rows, index tables without ix_* B-trees", drop_secondary=True)
    run("all rows, index tables without ix_*_pk", drop_secondary="_pk")
    run("all rows, index tables without ix_*_value", drop_secondary="_value")
    run("resources rows only", only="resources")
    for kind in INDEX_TABLES:
        if any(kind in m[1] for m in measured[:1]):
            run(f"  {kind} rows only", only=kind)


if __name__ == "__main__":
    main()
