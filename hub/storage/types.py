"""Column types that behave the same on both engines."""

from __future__ import annotations

from sqlalchemy import Text, cast
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, UserDefinedType


class _PgJsonbAsText(UserDefinedType):
    """JSONB in the database, text in Python: written with ``CAST(:p AS JSONB)``, read with
    ``CAST(col AS TEXT)``. The hub serves stored JSON as it is, so it never wants psycopg or
    SQLAlchemy to parse a document it will only send on."""

    cache_ok = True

    def get_col_spec(self, **kw) -> str:
        return "JSONB"

    def bind_expression(self, bindvalue):
        return cast(bindvalue, JSONB)

    def column_expression(self, col):
        return cast(col, Text)


class JsonDocument(TypeDecorator):
    """A JSON document kept as text: TEXT on SQLite, JSONB on PostgreSQL."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(_PgJsonbAsText())
        return dialect.type_descriptor(Text())
