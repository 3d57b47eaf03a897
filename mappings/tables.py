"""Loading the mapping data files (``mappings/specs``) once, with the C YAML loader when present."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

SPEC_DIR = Path(__file__).with_name("specs")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_Loader)


@lru_cache(maxsize=1)
def tables() -> dict[str, Any]:
    """``specs/tables.yaml``: code maps the datatype mappers use (read once)."""
    data = load_yaml(SPEC_DIR / "tables.yaml")
    data["local_coding_systems"] = frozenset(s.upper() for s in data["local_coding_systems"])
    data["value_types"] = frozenset(data["value_types"])
    return data


def table(name: str) -> dict[str, str]:
    return tables()[name]
