"""Blocking keys: short strings a database indexes so candidates are found by equality
lookups instead of comparing a new record with everyone.

A record is compared with every stored record that shares at least one key. Each key is
chosen to be selective at millions of people (nothing like "sex" or "birth year" alone) and
the set together tolerates the errors the comparators tolerate: a missing or mistyped ID,
a homophone or similar-character typo, a day/month swap, a one-digit date typo, pinyin-only
registration, a changed phone.

Key prefixes (stable; stored by the database layer):

``rid:``  usable resident ID                     ``id:``  other identifier (system|value)
``tel:``  phone                                  ``sd:``  surname + birth date (day/month order-free)
``nd:``   full-name pinyin + birth year          ``fd:``  fuzzy full-name pinyin + birth month-day
``gd:``   given-name pinyin + birth date         ``nb:``  newborn placeholder parent + birth date
``na:``   full-name pinyin + street and number (records without a birth date)
"""

from __future__ import annotations

import re

from .normalize import Demographics, fuzzy_pinyin_key

_HOUSE_RE = re.compile(r"^(.+?\d+号)")


def _dates(iso: str) -> tuple[str, str, str]:
    """(year, order-free month/day, month-day) of an ISO date."""
    y, m, d = iso[:4], iso[5:7], iso[8:10]
    md = m + d if m <= d else d + m
    return y, md, m + d


def blocking_keys(demo: Demographics) -> set[str]:
    """Index keys of a record. Two records that refer to the same person share at least one
    key unless several independent fields are wrong at once."""
    keys: set[str] = set()
    if demo.rid is not None and demo.rid_usable:
        keys.add("rid:" + demo.rid.value)
    for system, value in demo.identifiers:
        keys.add(f"id:{system}|{value}")
    for phone in demo.phones:
        keys.add("tel:" + phone)
    if demo.is_newborn_placeholder:
        if demo.birth_date and demo.newborn_parent:
            keys.add(f"nb:{demo.newborn_parent}|{demo.birth_date}")
        return keys
    if demo.surname_py and demo.given_py and demo.address is not None:
        house = _HOUSE_RE.match(demo.address.street)
        if house:
            keys.add(f"na:{demo.surname_py}{demo.given_py}|{house.group(1)}")
    if not demo.birth_date:
        return keys
    year, md_free, md = _dates(demo.birth_date)
    surname, given = demo.surname_py, demo.given_py
    orders = [(surname, given)]
    if demo.pinyin_order_ambiguous:
        orders.append((given, surname))
    for sur, giv in orders:
        if sur:
            keys.add(f"sd:{sur}|{year}{md_free}")
        if sur and giv:
            keys.add(f"nd:{sur}{giv}|{year}")
            keys.add(f"fd:{fuzzy_pinyin_key(sur + giv)}|{md}")
        if giv and len(giv) >= 4:
            keys.add(f"gd:{giv}|{demo.birth_date}")
    return keys
