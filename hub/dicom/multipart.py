"""multipart/related (RFC 2387) as DICOMweb uses it (PS3.18 8.6.1.2): writing parts, and a
streaming reader that spools each part of a STOW-RS request to its own file."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path

from hub.errors import InvalidRequest

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)


def new_boundary() -> str:
    return "yilian-" + uuid.uuid4().hex


def boundary_of(content_type: str) -> str:
    m = _BOUNDARY.search(content_type or "")
    if not m or not content_type.lower().startswith("multipart/related"):
        raise InvalidRequest("the body must be multipart/related with a boundary (PS3.18 10.5.1.2)",
                             status=415)
    return m.group(1)


def parts(boundary: str, items: Iterable[tuple[str, bytes | Iterator[bytes]]],
          chunk_size: int = 1 << 22) -> Iterator[bytes]:
    """The body of a multipart/related response: (content type, bytes or chunks) per part.
    Yields chunks of about ``chunk_size`` bytes (several small parts with their delimiters in one):
    each chunk of a streamed response costs a hop to a worker thread and a write to the socket,
    so a series of 0.5 MB instances goes out in a few dozen chunks, not three per instance."""
    b = boundary.encode()
    pending: list[bytes] = []
    size = 0
    for ctype, data in items:
        pieces = (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data
        pending.append(b"--" + b + b"\r\nContent-Type: " + ctype.encode() + b"\r\n\r\n")
        size += len(pending[-1])
        for piece in pieces:
            pending.append(bytes(piece))
            size += len(piece)
            if size >= chunk_size:
                yield b"".join(pending)
                pending, size = [], 0
        pending.append(b"\r\n")
        size += 2
    pending.append(b"--" + b + b"--\r\n")
    yield b"".join(pending)


async def spool_parts(stream: AsyncIterator[bytes], boundary: str,
                      new_file: Callable[[], tuple[int, Path]]) -> list[tuple[str, Path]]:
    """Read a multipart/related body chunk by chunk; each part goes to a new file as it arrives
    (a 2 GB STOW-RS request never sits in memory). Returns (content type, path) per part."""
    sep = b"\r\n--" + boundary.encode()
    buf = b"\r\n"  # the first delimiter has no CRLF before it
    out: list[tuple[str, Path]] = []
    fh = None
    state = "preamble"  # preamble | headers | body | done
    ctype = ""
    try:
        async for chunk in stream:
            buf += chunk
            while True:
                if state == "preamble":
                    i = buf.find(sep)
                    if i < 0:
                        buf = buf[-len(sep):]
                        break
                    buf = buf[i + len(sep):]
                    state = "after-sep"
                if state == "after-sep":
                    if len(buf) < 2:
                        break
                    if buf[:2] == b"--":
                        state = "done"
                        break
                    state = "headers"
                if state == "headers":
                    j = buf.find(b"\r\n\r\n")
                    if j < 0:
                        if len(buf) > 65536:
                            raise InvalidRequest("a multipart part has no end of headers")
                        break
                    headers = buf[:j].decode("latin-1").split("\r\n")
                    ctype = ""
                    for h in headers:
                        name, _, value = h.partition(":")
                        if name.strip().lower() == "content-type":
                            ctype = value.strip()
                    buf = buf[j + 4:]
                    fd, path = new_file()
                    fh = os.fdopen(fd, "wb")
                    out.append((ctype, path))
                    state = "body"
                if state == "body":
                    i = buf.find(sep)
                    if i < 0:
                        keep = len(sep) - 1
                        if len(buf) > keep:
                            fh.write(buf[:-keep])
                            buf = buf[-keep:]
                        break
                    fh.write(buf[:i])
                    fh.close()
                    fh = None
                    buf = buf[i + len(sep):]
                    state = "after-sep"
                    continue
                if state == "done":
                    break
            if state == "done":
                break
        if state != "done":
            raise InvalidRequest("the multipart/related body ends before its closing delimiter")
    except BaseException:
        if fh is not None:
            fh.close()
        for _, p in out:
            try:
                os.unlink(p)
            except OSError:
                pass
        raise
    return out
