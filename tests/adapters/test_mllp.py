"""MLLP framing helpers and the incremental frame reader (HL7 v2 Appendix C)."""

from __future__ import annotations

import pytest

from adapters.mllp import MLLPFrameError, MLLPFrameReader, frame, unframe

MSG = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1\r"


def test_frame_and_unframe():
    assert frame(MSG) == b"\x0b" + MSG + b"\x1c\r"
    assert unframe(frame(MSG)) == MSG
    assert unframe(MSG) == MSG
    assert unframe(b"\r\n\x0b" + MSG + b"\x1c") == MSG
    with pytest.raises(ValueError):
        frame(b"a\x1cb")


def test_reader_yields_frames_split_across_feeds():
    reader = MLLPFrameReader()
    data = frame(MSG) + frame(b"second")
    out = []
    for i in range(len(data)):
        out += reader.feed(data[i:i + 1])
    assert out == [MSG, b"second"]
    assert reader.pending == 0 and reader.junk_bytes == 0


def test_reader_skips_junk_between_frames_and_missing_cr():
    reader = MLLPFrameReader()
    frames = reader.feed(b"noise\x0bone\x1c\r\r\n  \x0btwo\x1cgarbage\x0bthr")
    assert frames == [b"one", b"two"]
    assert reader.pending == 3
    assert reader.feed(b"ee\x1c\r") == [b"three"]
    assert reader.junk_bytes == len(b"noise") + len(b"  ") + len(b"garbage")


def test_reader_drops_a_frame_interrupted_by_a_new_start_block():
    reader = MLLPFrameReader()
    assert reader.feed(b"\x0bpartial\x0bwhole\x1c\r") == [b"whole"]
    assert reader.junk_bytes == len(b"partial") + 1


def test_reader_enforces_a_size_limit():
    reader = MLLPFrameReader(max_frame_size=10)
    with pytest.raises(MLLPFrameError):
        reader.feed(b"\x0b" + b"x" * 11)
    assert reader.feed(b"\x0bok\x1c\r") == [b"ok"]
