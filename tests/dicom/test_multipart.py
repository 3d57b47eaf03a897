"""multipart/related bodies of WADO-RS responses (PS3.18 8.6.1.2): coalesced chunks, same bytes."""

from __future__ import annotations

from email.parser import BytesParser
from email.policy import HTTP

from hub.dicom.multipart import parts


def _message(boundary: str, body: bytes):
    head = f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}\r\n\r\n'.encode()
    return BytesParser(policy=HTTP).parsebytes(head + body)


def test_parts_coalesce_small_parts_and_keep_every_byte():
    payloads = [bytes([i]) * (300_000 + i) for i in range(20)]  # 20 parts of about 0.3 MB
    items = [("application/dicom", p) if i % 2 else ("application/dicom", iter([p[:1000], p[1000:]]))
             for i, p in enumerate(payloads)]
    chunks = list(parts("BOUNDARY", items, chunk_size=1 << 20))
    assert len(chunks) <= 8  # not three or four chunks per part
    msg = _message("BOUNDARY", b"".join(chunks))
    got = [part.get_payload(decode=True) for part in msg.iter_parts()]
    assert got == payloads
    assert all(part.get_content_type() == "application/dicom" for part in msg.iter_parts())


def test_parts_of_nothing_is_only_the_closing_delimiter():
    assert b"".join(parts("B", [])) == b"--B--\r\n"
