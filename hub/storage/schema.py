"""The hub's one relational schema (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Resources are stored whole (JSON; JSONB on PostgreSQL) in ``resources`` (current version) and
``resource_history`` (every earlier version: an update moves the version it replaces there, so
that a create writes one row, not two; reads of versions and history look at both). Search runs on index tables,
one per search-parameter type, filled from the FHIRPath expressions of the R4 SearchParameter
definitions (``hub.fhir.search.extract``) — the layout HAPI FHIR and Medplum use, so that every
search parameter is an indexed lookup instead of a JSON scan.

Times are integers: microseconds since 1970-01-01 UTC, identical on both engines and cheap to
compare and sort.

Each resource has an integer key, ``res_pk``, given when it is created (increasing: from
``RES_PK_SEQUENCE`` on PostgreSQL, max + 1 under SQLite's write lock) and kept by its updates;
its index rows carry it and are found by it. Ids are hash-like (deterministic ids made from
business identifiers), so an index by (res_type, res_id) took every new resource's rows to a
random leaf of each index table's B-tree; by ``res_pk`` they append.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
)

from hub.storage.types import JsonDocument

metadata = MetaData()



def Str(n: int) -> String:
    """A string compared byte-wise on both engines (PostgreSQL collation "C"), so that prefix
    searches are index range scans and ordering does not depend on the server's locale."""
    return String(n).with_variant(String(n, collation="C"), "postgresql")


TYPE = Str(64)
ID = Str(64)
PARAM = Str(100)
#: every string column of the index tables holds at most this many characters; longer values are
#: indexed by their beginning (a search on the 256th character of a value is not meaningful),
#: clipped where the rows are made (hub.fhir.search.extract)
INDEX_STR_MAX = 255
INDEX_STR = Str(INDEX_STR_MAX)

resources = Table(
    "resources",
    metadata,
    Column("res_type", TYPE, primary_key=True),
    Column("res_id", ID, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", JsonDocument(), nullable=True),
    Column("method", String(8), nullable=True),  # of the current version, as in resource_history
    Column("res_pk", BigInteger, nullable=False),
    Index("ix_resources_type_updated", "res_type", "last_updated"),
    Index("ix_resources_updated", "last_updated"),  # system-level history
    # unique: a second resource given the same key would share the first one's index rows;
    # also where SQLite finds the largest key
    Index("ix_resources_pk", "res_pk", unique=True),
)

#: the source of ``res_pk`` on PostgreSQL (concurrent writers each take their own values;
#: a counter row would serialize them)
RES_PK_SEQUENCE = Sequence("resources_res_pk_seq", metadata=metadata)

resource_history = Table(
    "resource_history",
    metadata,
    Column("res_type", TYPE, primary_key=True),
    Column("res_id", ID, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("last_updated", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("method", String(8), nullable=False),  # POST | PUT | PATCH | DELETE
    Column("content", JsonDocument(), nullable=True),
    Index("ix_history_updated", "last_updated"),
    Index("ix_history_type_updated", "res_type", "last_updated"),
)


def _index_table(name: str, *cols: Column, value_index: tuple[str, ...]) -> Table:
    """An index table: (res_type, res_id, param, values…, res_pk), looked up by (param, values,
    res_type) (``value_index`` names the whole key where it does not start with ``param``), and
    a resource's rows by its ``res_pk``."""
    key = value_index if "param" in value_index else ("param", *value_index, "res_type")
    return Table(
        name,
        metadata,
        Column("res_type", TYPE, nullable=False),
        Column("res_id", ID, nullable=False),
        Column("param", PARAM, nullable=False),
        *cols,
        Column("res_pk", BigInteger, nullable=False),  # last: where the migration added it
        Index(f"ix_{name}_pk", "res_pk"),
        Index(f"ix_{name}_value", *key),
    )


sp_string = _index_table(
    "sp_string",
    Column("value_norm", INDEX_STR),
    Column("value_exact", INDEX_STR),
    value_index=("value_norm",),
)
sp_token = _index_table(
    "sp_token",
    Column("system", INDEX_STR),
    Column("code", INDEX_STR),
    Column("text_norm", INDEX_STR),
    Column("type_system", INDEX_STR),
    Column("type_code", INDEX_STR),
    value_index=("code", "system"),
)
sp_reference = _index_table(
    "sp_reference",
    Column("target_type", TYPE),
    Column("target_id", ID),
    Column("url", INDEX_STR),
    Column("id_system", INDEX_STR),
    Column("id_value", INDEX_STR),
    # target first: the one index serves searches (param and target), _revinclude, _has,
    # compartments and $everything (target and params), and the master patient index's merge
    # (every row pointing at a patient, whatever the param); a second index by target cost
    # every reference row one more B-tree leaf, 10 % of the pages an HL7 message writes
    value_index=("target_id", "param", "target_type", "res_type"),
)
sp_date = _index_table(
    "sp_date",
    Column("low", BigInteger),
    Column("high", BigInteger),
    value_index=("low", "high"),
)
sp_number = _index_table("sp_number", Column("value", Float), value_index=("value",))
sp_quantity = _index_table(
    "sp_quantity",
    Column("value", Float),
    Column("system", INDEX_STR),
    Column("code", INDEX_STR),
    Column("unit", INDEX_STR),
    value_index=("value",),
)
sp_uri = _index_table("sp_uri", Column("uri", INDEX_STR), value_index=("uri",))
sp_composite = _index_table(
    "sp_composite",
    Column("c1_system", INDEX_STR),
    Column("c1_code", INDEX_STR),
    Column("c2_system", INDEX_STR),
    Column("c2_code", INDEX_STR),
    Column("c2_number", Float),
    Column("c2_low", BigInteger),
    Column("c2_high", BigInteger),
    value_index=("c1_code", "c1_system"),
)

#: index table per IndexRows attribute, with the value columns in the order of the row tuples
INDEX_TABLES: dict[str, tuple[Table, tuple[str, ...]]] = {
    "string": (sp_string, ("param", "value_norm", "value_exact")),
    "token": (sp_token, ("param", "system", "code", "text_norm", "type_system", "type_code")),
    "reference": (sp_reference, ("param", "target_type", "target_id", "url", "id_system", "id_value")),
    "date": (sp_date, ("param", "low", "high")),
    "number": (sp_number, ("param", "value")),
    "quantity": (sp_quantity, ("param", "value", "system", "code", "unit")),
    "uri": (sp_uri, ("param", "uri")),
    "composite": (
        sp_composite,
        ("param", "c1_system", "c1_code", "c2_system", "c2_code", "c2_number", "c2_low", "c2_high"),
    ),
}

# References by canonical URL or by identifier (``:identifier``) have no target id: partial
# indexes hold only the few rows that have one, so they cost the common reference nothing.
Index("ix_sp_reference_url", sp_reference.c.param, sp_reference.c.url,
      sqlite_where=sp_reference.c.url.is_not(None), postgresql_where=sp_reference.c.url.is_not(None))
Index("ix_sp_reference_identifier", sp_reference.c.param, sp_reference.c.id_value,
      sqlite_where=sp_reference.c.id_value.is_not(None), postgresql_where=sp_reference.c.id_value.is_not(None))
# ``:exact`` string searches bind value_norm as well (hub.fhir.search.query) and so use
# ix_sp_string_value: no index of their own.

#: registered OAuth2 clients (front-end processors, integration jobs, apps)
oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(100), primary_key=True),
    Column("secret_hash", LargeBinary, nullable=False),
    Column("secret_salt", LargeBinary, nullable=False),
    Column("scopes", Text, nullable=False),  # space-separated SMART v2 scopes the client may ask for
    Column("organization", String(100)),  # alliance code of the member it acts for, if any
    Column("description", Text),
    Column("created", BigInteger, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)
