"""Per-sending-facility mapping profiles for the ingest (``ingest_profiles_file``, TOML).

The file is read with :func:`mappings.profiles.load_profiles` and read again whenever it changes,
so connecting a hospital or fixing its profile needs no restart: reprocess the messages that
failed and they are mapped with the new profile.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

log = logging.getLogger("yilian.ingest")


class ProfileFile:
    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._stamp: tuple | None = None
        self._profiles: dict = {}
        self._lock = threading.Lock()

    def profile_for(self, organization: str, sending_facility: str | None = None):
        """The profile of ``organization`` (profiles are keyed by alliance code), or None."""
        if self.path is None:
            return None
        return self._current().get(organization)

    def _current(self) -> dict:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    self._profiles = self._load() if stamp else {}
                    self._stamp = stamp
        return self._profiles

    def _load(self) -> dict:
        from mappings.profiles import load_profiles

        try:
            return load_profiles(self.path)
        except Exception as e:  # a broken file must not stop the ingest: keep the last good profiles
            log.error("ingest: facility profiles not reloaded, keeping the previous ones: %s", e)
            return self._profiles
