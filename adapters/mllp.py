"""Minimal Lower Layer Protocol (MLLP) framing.

HL7 v2.5 chapter 2, Appendix C (C.4 "Minimal Lower Layer Protocol"; MLLP release 2): a message
is sent as ``<VT> data <FS><CR>``, VT = 0x0B, FS = 0x1C, CR = 0x0D. The payload may not contain
VT or FS (neither can occur inside UTF-8 or GB18030 multi-byte characters).
"""

from __future__ import annotations

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\r"
_VT, _FS = 0x0B, 0x1C


class MLLPFrameError(Exception):
    """A frame exceeds the reader's size limit (the connection should be closed)."""


def frame(payload: bytes) -> bytes:
    """Wrap one message in an MLLP block: ``VT payload FS CR``.

    Raises ValueError when the payload contains VT or FS (it could not be unframed).
    """
    if b"\x0b" in payload or b"\x1c" in payload:
        raise ValueError("MLLP payload must not contain 0x0B or 0x1C")
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


def unframe(data: bytes) -> bytes:
    """Remove MLLP framing if present (lenient): leading junk up to VT, and FS[CR] + trailer.

    Bytes without a VT are returned unchanged apart from a trailing FS[CR], so this is safe on
    messages read from files.
    """
    start = data.find(START_BLOCK)
    if start >= 0:
        data = data[start + 1:]
    end = data.find(END_BLOCK)
    if end >= 0:
        data = data[:end]
    return data


class MLLPFrameReader:
    """Incremental MLLP decoder: ``feed()`` bytes as they arrive, get complete payloads back.

    Tolerates junk between frames (it is counted in :attr:`junk_bytes` and dropped, except for
    the CR/LF after an end block), a missing CR after FS, and a new VT before the end of a frame
    (the truncated frame is dropped as junk). Raises :class:`MLLPFrameError` when a frame grows
    past ``max_frame_size``.
    """

    def __init__(self, max_frame_size: int = 16 * 1024 * 1024):
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._in_frame = False
        self.junk_bytes = 0

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held in the buffer."""
        return len(self._buf) if self._in_frame else 0

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the payloads of the frames completed by them."""
        frames: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                skipped = data[pos:] if start < 0 else data[pos:start]
                self.junk_bytes += len(skipped.strip(b"\r\n"))
                if start < 0:
                    return frames
                self._in_frame = True
                self._buf.clear()
                pos = start + 1
                continue
            end = data.find(END_BLOCK, pos)
            restart = data.find(START_BLOCK, pos)
            if restart >= 0 and (end < 0 or restart < end):
                # a new frame starts before this one ended: drop the truncated frame
                self.junk_bytes += len(self._buf) + (restart - pos) + 1
                self._buf.clear()
                pos = restart + 1
                continue
            chunk_end = n if end < 0 else end
            self._buf += data[pos:chunk_end]
            if len(self._buf) > self.max_frame_size:
                self._buf.clear()
                self._in_frame = False
                raise MLLPFrameError(f"MLLP frame larger than {self.max_frame_size} bytes")
            if end < 0:
                return frames
            frames.append(bytes(self._buf))
            self._buf.clear()
            self._in_frame = False
            pos = end + 1
        return frames
