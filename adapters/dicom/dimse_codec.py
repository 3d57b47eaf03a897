"""Command sets of the DIMSE-C messages encoded and decoded directly (one version-checked adjustment).

pynetdicom 3.0 turns every DIMSE message into a pydicom ``Dataset`` and back: to send one it
creates a command-set ``Dataset`` (one ``setattr`` per element, each validated), encodes it once
to learn the Command Group Length and once more to send it; to receive one it decodes the command
set into a ``Dataset`` and copies its elements onto the primitive. That is about 0.3 ms of CPU
per message, more than everything else an in-association C-ECHO costs, and it is paid again for
every C-FIND pending response and for both messages of every C-GET / C-MOVE sub-operation.

A command set is a handful of Implicit VR Little Endian elements whose tags and VRs are fixed
(PS3.7 E.1), so :class:`FastCommandSets` writes and reads them with ``struct``:

- ``send_msg`` of a C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE or C-CANCEL message builds the command
  set's bytes straight from the primitive (same elements, order, padding and group length as
  pynetdicom's encoder: the tests compare the two byte for byte) and fragments it, and the data
  set, into P-DATA primitives exactly as ``DIMSEMessage.encode_msg`` does;
- ``receive_primitive`` of such a message whose command set arrives in one fragment reads it onto
  a new primitive, and collects the data set that follows (a query identifier) as pynetdicom
  does, in a ``BytesIO``; a C-STORE-RQ keeps pynetdicom's path, which streams the instance to a
  file.

A message of more than one fragment (a C-STORE of an image: 30 or more PDUs at dcmtk's default
maximum PDU of 16 kB) is handed to the DUL as :class:`PDataBurst` primitives: each carries up to
:data:`BURST_BYTES` of complete P-DATA-TF PDUs, encoded here, which the event-driven DUL
(:mod:`adapters.dicom.reactor`) writes to the socket at once, instead of one queue hand-off,
state-machine action and socket write per PDU. The peer receives the same PDUs, each within its
maximum length; bursts are used only while nothing is bound to ``EVT_PDU_SENT``.

Anything else (DIMSE-N messages, a value of a type or VM these encoders do not expect, a
fragmented command set) goes through pynetdicom unchanged, and so does every message while a
handler is bound to ``EVT_DIMSE_SENT`` / ``EVT_DIMSE_RECV`` (those receive pynetdicom's message
objects): the hub sets ``_config.LOG_HANDLER_LEVEL = "none"``, which leaves them unbound. On
another pynetdicom version nothing is changed (:mod:`adapters.dicom.reactor` checks it).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import time
from io import BytesIO
from pathlib import Path
from itertools import chain
from math import ceil

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, evt
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS, _MESSAGE_TYPES, _MSG_TO_PRIMITVE
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification

from adapters.dicom import header

_C_PRIMITIVES = (C_ECHO, C_STORE, C_FIND, C_GET, C_MOVE, C_CANCEL)
_RETRIEVE_AND_FIND = (C_FIND, C_GET, C_MOVE)
_PENDING = (0xFF00, 0xFF01)
_NO_DATASET = 0x0101
_WITH_DATASET = 0x0001
_GROUP_LENGTH = 0x00000000
_COMMAND_FIELD = 0x00000100
_DATASET_TYPE = 0x00000800
_MULTI_VALUED = frozenset({"OffendingElement", "AttributeIdentifierList"})
BURST_BYTES = 1 << 20  # at most this many bytes of PDUs per hand-off to the DUL
_P_DATA_TF = 0x04
try:
    _IOV_MAX = os.sysconf("SC_IOV_MAX")
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 1024


class PDataBurst(bytearray):
    """Complete P-DATA-TF PDUs, ready to be written, as the one PDV of a P-DATA primitive (see
    module); only a DUL that knows it (``sends_bursts``) is given one. A ``bytearray``, so that
    a stored file is read straight into it (:func:`_file_bursts`)."""


def p_data_tf_header(context_id: int, fragment_length: int) -> bytes:
    """The header of a P-DATA-TF PDU of one PDV, up to its message control header (PS3.8 9.3.5:
    PDU type and length, then the item's length and presentation context ID)."""
    return struct.pack(">BBIIB", _P_DATA_TF, 0, fragment_length + 6, fragment_length + 2, context_id)


class _Unsupported(Exception):
    """A value this codec does not encode or decode as pynetdicom would: take pynetdicom's path."""


class _MessageLayout:
    """One DIMSE-C message type: its Command Field and its elements (keyword, tag, VR) by tag."""

    def __init__(self, name: str, field: int):
        self.name = name  # e.g. "C_FIND_RSP"
        self.field = field
        self.elements = sorted((tag_for_keyword(kw), kw, dictionary_VR(kw))
                               for kw in _COMMAND_SET_KEYWORDS[name.replace("_", "-")])
        self.dataset_keyword = _DATASET_KEYWORDS.get(name)
        self.primitive_class = _MSG_TO_PRIMITVE[name[:name.rfind("_R")]]


_LAYOUTS = {field: _MessageLayout(cls.__name__, field) for field, (_, cls) in _MESSAGE_TYPES.items()
            if cls.__name__.startswith("C_")}
_LAYOUT_OF_CLASS = {layout.name: layout for layout in _LAYOUTS.values()}
_RQ_LAYOUT = {p: _LAYOUT_OF_CLASS[_RQ_TO_MESSAGE[p].__name__] for p in _C_PRIMITIVES if p in _RQ_TO_MESSAGE}
_RSP_LAYOUT = {p: _LAYOUT_OF_CLASS[_RSP_TO_MESSAGE[p].__name__] for p in _C_PRIMITIVES}


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _text(value, pad: bytes) -> bytes:
    if not isinstance(value, str) or "\\" in value:
        raise _Unsupported
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise _Unsupported from None
    return raw + pad if len(raw) % 2 else raw


def _encode_value(vr: str, keyword: str, value) -> bytes:
    if vr == "US":
        if type(value) is not int or not 0 <= value <= 0xFFFF:
            raise _Unsupported
        return struct.pack("<H", value)
    if vr == "UI":
        return _text(value, b"\0")
    if vr in ("AE", "LO", "SH", "CS"):
        return _text(value, b" ")
    if vr == "AT" and keyword in _MULTI_VALUED:
        tags = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(t, int) and 0 <= t <= 0xFFFFFFFF for t in tags):
            raise _Unsupported
        return b"".join(struct.pack("<HH", t >> 16, t & 0xFFFF) for t in tags)
    raise _Unsupported


def encode_command_set(primitive, layout: _MessageLayout) -> tuple[bytes, object, object]:
    """(command set bytes, data set, data set path) of ``primitive`` sent as ``layout``'s message,
    as ``DIMSEMessage.primitive_to_message`` + ``encode_msg`` would encode them."""
    dataset = getattr(primitive, layout.dataset_keyword) if layout.dataset_keyword else None
    path = getattr(primitive, "_dataset_path", None)
    has_dataset = bool(dataset) or bool(path)
    body = []
    for tag, keyword, vr in layout.elements:
        if tag == _GROUP_LENGTH:
            continue
        if tag == _COMMAND_FIELD:
            value = layout.field
        elif tag == _DATASET_TYPE:
            value = _WITH_DATASET if has_dataset else _NO_DATASET
        else:
            value = getattr(primitive, keyword, None)
            if value is None:
                continue
        body.append(_element(tag, _encode_value(vr, keyword, value)))
    encoded = b"".join(body)
    return _element(_GROUP_LENGTH, struct.pack("<I", len(encoded))) + encoded, dataset, path


def _fragments(data: bytes, max_pdu: int, more: bytes, last: bytes):
    """``encode_msg``'s PDVs of ``data`` (each at most ``max_pdu`` bytes with its item header), as
    (message control header, fragment): the fragments are views of ``data``, copied only once,
    into the burst or PDU that carries them."""
    size = max_pdu - 6 if max_pdu else max(1, len(data))
    count = max(1, ceil(len(data) / size))
    view = memoryview(data)
    for i in range(count):
        yield (last if i == count - 1 else more), view[i * size:(i + 1) * size]


def _file_fragments(path, max_pdu: int):
    """``encode_msg``'s PDVs of a data set read from a file from an offset, as (message control
    header, fragment)."""
    with open(path[0], "rb") as f:
        end = f.seek(0, 2)
        length = end - f.seek(path[1])
        if max_pdu == 0:
            count, size = 1, length
        else:
            size = max_pdu - 6
            count = ceil(length / size)
        for i in range(int(count) - 1):
            yield b"\x00", f.read(size)
        yield b"\x02", f.read(size)


_META_READ = 4096  # a file meta group longer than this is left to pydicom


def file_meta_for_sending(path) -> tuple[int, str, str, str] | None:
    """``(offset of the data set, Media Storage SOP Class UID, Media Storage SOP Instance UID,
    Transfer Syntax UID)`` of a DICOM file, as ``pynetdicom``'s ``send_c_store`` takes them from
    ``dsutils.split_dataset`` (UIDs without their padding), or ``None`` when the walk of
    :func:`adapters.dicom.header.file_meta` cannot tell or a UID is missing, empty, multi-valued
    or not ASCII, or the meta group is longer than :data:`_META_READ`: then pydicom reads it."""
    with open(path, "rb") as f:
        head = f.read(_META_READ)
    try:
        offset, meta = header.file_meta(head)
    except header.Unhandled:
        return None
    uids = []
    for tag in (header.MEDIA_SOP_CLASS, header.MEDIA_SOP_INSTANCE, header.TRANSFER_SYNTAX):
        raw = meta.get(tag)
        if raw is None or b"\\" in raw or not raw.isascii():
            return None
        uid = raw.decode("ascii").rstrip("\0 ").strip()  # as pydicom's convert_UI and UID
        if not uid:
            return None
        uids.append(uid)
    return offset, *uids


def file_meta_bytes(sop_class: str, sop_instance: str, transfer_syntax: str,
                    implementation_uid: str = PYNETDICOM_IMPLEMENTATION_UID,
                    implementation_version: str = PYNETDICOM_IMPLEMENTATION_VERSION) -> bytes:
    """The preamble, ``DICM`` and File Meta Information pynetdicom writes before a received
    C-STORE data set (``dsutils.create_file_meta`` + pydicom's ``write_file_meta_info``: explicit
    VR little endian, group length first, UIDs padded with a NUL, the version name with a space),
    written with ``struct`` (pydicom's writer was about 0.2 ms per received instance).
    :class:`_Unsupported` for a value that is not ASCII."""
    body = b"".join((
        _explicit(0x00020001, b"OB", b"\x00\x01"),
        _explicit(0x00020002, b"UI", _text(sop_class, b"\0")),
        _explicit(0x00020003, b"UI", _text(sop_instance, b"\0")),
        _explicit(0x00020010, b"UI", _text(transfer_syntax, b"\0")),
        _explicit(0x00020012, b"UI", _text(implementation_uid, b"\0")),
        _explicit(0x00020013, b"SH", _text(implementation_version, b" ")),
    ))
    return b"\0" * 128 + b"DICM" + _explicit(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _received_file_meta(request: C_STORE, context) -> bytes | None:
    """:func:`file_meta_bytes` of a C-STORE request received under ``context`` (an accepted
    presentation context), or ``None`` when pynetdicom is to write it: no such context, a UID
    missing or empty, a value this writer does not encode."""
    if context is None or not request.AffectedSOPClassUID or not request.AffectedSOPInstanceUID:
        return None
    try:
        return file_meta_bytes(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                               str(context.transfer_syntax[0]))
    except _Unsupported:
        return None


def _received_instance_file(meta: bytes):
    """pynetdicom's file for a received C-STORE data set (a temporary ``.dcm`` file the
    Storage SCP closes and removes after ``EVT_C_STORE``, the handler reading it by
    ``event.dataset_path``), its File Meta Information (``meta``) written; unbuffered, so the
    handler reads every fragment written (pynetdicom flushed after each)."""
    fd, name = tempfile.mkstemp(suffix=".dcm")
    sink = io.FileIO(fd, "wb")
    sink.name = name  # the SCP removes the file by this name
    try:
        sink.write(meta)
    except BaseException:
        sink.close()
        os.unlink(name)
        raise
    return sink


def _p_data(context_id: int, pdv: bytes) -> P_DATA:
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, pdv))
    return pdata


def _bursts(context_id: int, pdvs):
    """P-DATA primitives of :class:`PDataBurst` of the ``pdvs``, each at most :data:`BURST_BYTES`
    (or one PDU, when a PDU is larger)."""
    pending: list = []
    size = 0
    for control, fragment in pdvs:
        pdu_size = len(fragment) + 12
        if pending and size + pdu_size > BURST_BYTES:
            yield _p_data(context_id, _joined(pending, size))
            pending, size = [], 0
        pending += (p_data_tf_header(context_id, len(fragment)), control, fragment)
        size += pdu_size
    if pending:
        yield _p_data(context_id, _joined(pending, size))


def _joined(pieces: list, size: int) -> PDataBurst:
    burst = PDataBurst(size)
    offset = 0
    for piece in pieces:
        end = offset + len(piece)
        burst[offset:end] = piece
        offset = end
    return burst


def _file_bursts(context_id: int, path, max_pdu: int, prefix: bytes = b""):
    """:func:`_bursts` of ``_file_fragments(path, max_pdu)`` (the same PDUs) after the PDUs in
    ``prefix`` (the command set's), each burst's PDU headers written first and the file's bytes
    then read into place with one ``preadv`` (no fragment objects, no join: the bytes are copied
    once, from the page cache)."""
    with open(path[0], "rb") as f:
        fd = f.fileno()
        position = path[1]
        length = max(0, os.fstat(fd).st_size - position)
        size = max_pdu - 6 if max_pdu else max(1, length)
        count = max(1, ceil(length / size))
        per_burst = max(1, min(BURST_BYTES // (size + 12), _IOV_MAX))  # preadv takes at most IOV_MAX
        # every PDU but the file's last has the same header (full fragment, "more follows")
        full_header = p_data_tf_header(context_id, size) + b"\x00"
        last = count - 1
        for first in range(0, count, per_burst):
            n = min(per_burst, count - first)
            wanted = min(n * size, length - first * size)
            burst = PDataBurst(len(prefix) + wanted + 12 * n)
            burst[:len(prefix)] = prefix
            view = memoryview(burst)
            targets = []
            offset = len(prefix)
            for i in range(first, first + n):
                if i == last:
                    fragment_length = length - i * size
                    burst[offset:offset + 12] = p_data_tf_header(context_id, fragment_length) + b"\x02"
                else:
                    fragment_length = size
                    burst[offset:offset + 12] = full_header
                offset += 12
                targets.append(view[offset:offset + fragment_length])
                offset += fragment_length
            prefix = b""
            if wanted:
                _read_into(f, targets, position, wanted, path[0])
            position += wanted
            del targets, view  # a bytearray with views on it cannot be resized or handed on safely
            yield _p_data(context_id, burst)


def _read_into(f, targets: list, position: int, wanted: int, name) -> None:
    """Fill the views ``targets`` with the ``wanted`` bytes of the open file ``f`` from
    ``position``. A read may return fewer bytes than asked without being at the end (a signal,
    NFS, FUSE, SMB): the rest is read again from where it stopped; only the end of the file
    before ``wanted`` is an error. ``os.preadv`` where the platform has it (Linux, BSDs, macOS
    11+), else a seek and ``readinto`` per view."""
    preadv = getattr(os, "preadv", None)
    done = 0
    while done < wanted:
        if preadv is not None:
            got = preadv(f.fileno(), targets, position + done)
        else:
            f.seek(position + done)
            got = f.readinto(targets[0])
        if not got:
            # content-addressed blobs do not change; a file that did must not go out padded
            raise OSError(f"{name} changed while being sent")
        done += got
        # drop the views filled, and the filled part of the one the read stopped in
        while targets and got >= len(targets[0]):
            got -= len(targets[0])
            targets.pop(0)
        if got:
            targets[0] = targets[0][got:]


def _decode_value(vr: str, keyword: str, raw: bytes):
    if vr == "US":
        if len(raw) != 2:
            raise _Unsupported
        return struct.unpack("<H", raw)[0]
    if vr in ("UI", "AE", "LO", "SH", "CS"):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _Unsupported from None
        if "\\" in text:
            raise _Unsupported  # a VM > 1 value: pynetdicom warns and takes the first
        # pydicom strips UIDs of their trailing padding, and text values of trailing spaces
        if vr == "UI":
            return text.rstrip("\0 ")
        return text.strip(" ") if vr == "AE" else text.rstrip(" ")
    if vr == "AT" and keyword in _MULTI_VALUED:
        if len(raw) % 4:
            raise _Unsupported
        tags = [(g << 16) | e for g, e in struct.iter_unpack("<HH", raw)]
        return tags if len(tags) != 1 else tags[0]
    raise _Unsupported


def decode_command_set(raw: bytes):
    """``(primitive, data set keyword)`` of a complete command set, the keyword ``None`` when no
    data set follows, or ``None`` when it is not a DIMSE-C message this codec reads (then
    pynetdicom decodes it); a data set that follows is still to be received."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(raw)
    while offset < end:
        if end - offset < 8:
            raise _Unsupported
        group, elem, length = struct.unpack_from("<HHI", raw, offset)
        offset += 8
        if length == 0xFFFFFFFF or offset + length > end:
            raise _Unsupported
        elements[(group << 16) | elem] = raw[offset:offset + length]
        offset += length
    field = elements.get(_COMMAND_FIELD)
    dataset_type = elements.get(_DATASET_TYPE)
    if field is None or dataset_type is None or len(field) != 2 or len(dataset_type) != 2:
        return None
    layout = _LAYOUTS.get(struct.unpack("<H", field)[0])
    has_dataset = struct.unpack("<H", dataset_type)[0] != _NO_DATASET
    if layout is None or (has_dataset and layout.dataset_keyword is None):
        return None
    known = {tag for tag, _, _ in layout.elements}
    if any(tag not in known for tag in elements):
        raise _Unsupported  # pynetdicom would copy an unexpected element the primitive has
    primitive = layout.primitive_class()
    for tag, keyword, vr in layout.elements:
        if tag in elements and tag not in (_GROUP_LENGTH, _COMMAND_FIELD, _DATASET_TYPE) \
                and hasattr(primitive, keyword):
            setattr(primitive, keyword, _decode_value(vr, keyword, elements[tag]))
    if layout.dataset_keyword:
        # as pynetdicom's message_to_primitive: the data set received (so far: none), not None
        setattr(primitive, layout.dataset_keyword, BytesIO())
    return primitive, layout.dataset_keyword if has_dataset else None


class FastCommandSets(DIMSEServiceProvider):
    """pynetdicom's DIMSE service provider with the command sets of DIMSE-C messages encoded and
    decoded directly (see module)."""

    #: seconds between two pending C-GET / C-MOVE responses (``None``: one per sub-operation, as
    #: pynetdicom sends them); see :meth:`_progress_due`
    retrieve_progress_interval: float | None = None
    _next_progress_at: float | None = None

    def send_msg(self, primitive, context_id: int) -> None:
        layouts = _RQ_LAYOUT if primitive.MessageIDBeingRespondedTo is None else _RSP_LAYOUT
        layout = layouts.get(primitive.__class__)
        if layouts is _RSP_LAYOUT and primitive.__class__ in _RETRIEVE_AND_FIND:
            self._read_cancels(primitive)
            if primitive.__class__ is not C_FIND and not self._progress_due(primitive):
                return
        if layout is None or self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            return super().send_msg(primitive, context_id)
        try:
            command, dataset, path = encode_command_set(primitive, layout)
        except _Unsupported:
            return super().send_msg(primitive, context_id)
        max_pdu = self.maximum_pdu_size
        pdvs = list(_fragments(command, max_pdu, b"\x01", b"\x03"))
        if dataset is not None:
            encoded = dataset.getvalue()
            if encoded:
                pdvs = chain(pdvs, _fragments(encoded, max_pdu, b"\x00", b"\x02"))
        elif path is not None:
            pdvs = chain(pdvs, _file_fragments(path, max_pdu))
        if (isinstance(pdvs, list) and len(pdvs) == 1) or not getattr(self.dul, "sends_bursts", False) \
                or self.assoc.get_handlers(evt.EVT_PDU_SENT):
            for control, fragment in pdvs:
                self.dul.send_pdu(_p_data(context_id, control + fragment))
            return
        if dataset is None and path is not None:
            # the command set's PDU(s) first in the first burst, then the file's, read into place
            prefix = b"".join(p_data_tf_header(context_id, len(fragment)) + control + fragment
                              for control, fragment in _fragments(command, max_pdu, b"\x01", b"\x03"))
            for pdata in _file_bursts(context_id, path, max_pdu, prefix):
                self.dul.send_pdu(pdata)
            return
        for pdata in _bursts(context_id, pdvs):
            self.dul.send_pdu(pdata)

    def get_msg(self, block: bool = False):
        dul = self.dul
        if block and getattr(dul, "runs_here", None) is not None and dul.runs_here():
            # one-thread mode (adapters.dicom.reactor): read the peer's PDUs until the message is in
            dul.pump_until(self.msg_queue.qsize, self.dimse_timeout)
            block = False
        return super().get_msg(block)

    def _progress_due(self, primitive) -> bool:
        """Whether a C-GET / C-MOVE response goes out. pynetdicom sends a pending response after
        every sub-operation, only to report the counts so far; PS3.4 C.4.2.3.1 and C.4.3.3.1
        make them optional ("may"). With :attr:`retrieve_progress_interval` set, the first one of
        an operation goes out, then one whenever that many seconds have passed since the last one
        sent; the final response (any other status) always goes out, with the counts of all the
        sub-operations, and ends the operation. A pending response carrying an identifier is
        never held back. One retrieve runs at a time on an association (no asynchronous
        operations window is negotiated), so one deadline serves it."""
        interval = self.retrieve_progress_interval
        if primitive.Status not in _PENDING:
            self._next_progress_at = None
            return True
        if interval is None or primitive.Identifier is not None:
            return True
        now = time.monotonic()
        due = self._next_progress_at
        if due is not None and now < due:
            return False
        self._next_progress_at = now + interval
        return True

    def _read_cancels(self, primitive) -> None:
        """In one-thread mode nothing reads the socket while a service answers: before each
        pending response of a C-FIND, C-GET or C-MOVE, a PDU already received (a C-CANCEL) is
        read, as the DUL thread would have read it meanwhile."""
        dul = self.dul
        if primitive.Status in _PENDING and getattr(dul, "runs_here", None) is not None and dul.runs_here():
            dul.pump(0.0)

    def receive_primitive(self, primitive) -> None:
        pdvs = primitive.presentation_data_value_list if isinstance(primitive, P_DATA) else None
        if self.message is not None or not pdvs or self.assoc.get_handlers(evt.EVT_DIMSE_RECV):
            self.__dict__.pop("_receiving", None)
            return super().receive_primitive(primitive)
        receiving = self.__dict__.get("_receiving")
        if receiving is None:
            context_id, data = pdvs[0]
            if data[:1] != b"\x03":
                return super().receive_primitive(primitive)  # a command set in fragments
            try:
                decoded = decode_command_set(data[1:])
            except _Unsupported:
                decoded = None
            rest = pdvs[1:]
            # (a command fragment in the same P-DATA would be a second message: pynetdicom's)
            if decoded is None or any(d[0] & 1 for _, d in rest) or (rest and not decoded[1]):
                return super().receive_primitive(primitive)
            d_primitive, keyword = decoded
            d_primitive._context_id = context_id
            d_primitive._dataset_path = None
            d_primitive._dataset_file = None
            if keyword is None:
                return self._deliver(context_id, d_primitive)
            sink = getattr(d_primitive, keyword)
            if type(d_primitive) is C_STORE and _config.STORE_RECV_CHUNKED_DATASET:
                meta = _received_file_meta(d_primitive, self.assoc._accepted_cx.get(context_id))
                if meta is None:
                    return super().receive_primitive(primitive)  # pynetdicom's file meta (or failure)
                sink = d_primitive._dataset_file = _received_instance_file(meta)
                d_primitive._dataset_path = Path(sink.name)
            receiving = self._receiving = (context_id, d_primitive, sink)
        else:
            rest = pdvs
            if any(d[0] & 1 for _, d in rest):
                # a command set before the data set ended: left to pynetdicom as a new message
                del self._receiving
                return super().receive_primitive(primitive)
        # the data set's fragments, appended as pynetdicom's decode_msg appends them
        context_id, d_primitive, sink = receiving
        for _, data in rest:
            sink.write(memoryview(data)[1:])
            if data[0] & 2:
                del self._receiving
                return self._deliver(context_id, d_primitive)

    def _deliver(self, context_id: int, d_primitive) -> None:
        if type(d_primitive) is C_ECHO and self._answer_echo(context_id, d_primitive):
            return
        # as pynetdicom: C-CANCEL requests are kept apart (up to 10), the rest is queued
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            self.cancel_req[d_primitive.MessageIDBeingRespondedTo] = d_primitive
        else:
            self.msg_queue.put((context_id, d_primitive))

    def _answer_echo(self, context_id: int, request: C_ECHO) -> bool:
        """Answer a C-ECHO-RQ here, as it is read, when the handler bound to ``EVT_C_ECHO`` is
        :func:`verification_success` (nothing to decide per request) and pynetdicom would answer
        it next: one-thread mode (:mod:`adapters.dicom.reactor`) with no service running and no
        message queued before it, the association established, the request on an accepted
        Verification context. The response is the one ``VerificationServiceClass.SCP`` sends.
        Skipped: the queue and the reactor's turn, the service class and its handler call (about
        a third of an in-association C-ECHO's CPU). ``False``: left to pynetdicom."""
        command = self._echo_response(context_id, request)
        if command is None:
            return False
        dul = self.dul
        max_pdu = self.maximum_pdu_size
        if getattr(dul, "sends_bursts", False) and not (max_pdu and len(command) + 6 > max_pdu) \
                and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT) and not self.assoc.get_handlers(evt.EVT_PDU_SENT):
            pdu = PDataBurst(p_data_tf_header(context_id, len(command)) + b"\x03" + command)
            dul.send_pdu(_p_data(context_id, pdu))
            return True
        response = C_ECHO()
        response.MessageID = request.MessageID
        response.MessageIDBeingRespondedTo = request.MessageID
        response.AffectedSOPClassUID = request.AffectedSOPClassUID
        response.Status = 0x0000
        self.send_msg(response, context_id)
        return True

    def _echo_response(self, context_id: int, request: C_ECHO) -> bytes | None:
        """The command set of the Success response :meth:`_answer_echo` may send for ``request``
        (the conditions are its), or ``None``."""
        if request.MessageIDBeingRespondedTo is not None or request.AffectedSOPClassUID != Verification:
            return None
        message_id = request.MessageID
        if type(message_id) is not int or not 0 <= message_id <= 0xFFFF or not self._echo_answerable(context_id):
            return None
        return echo_success_command_set(message_id)

    def _echo_answerable(self, context_id: int) -> bool:
        """Whether a C-ECHO-RQ on ``context_id`` is answered by the codec now (see
        :meth:`_answer_echo`): the conditions that are not the request's own."""
        assoc = self.assoc
        dul = self.dul
        handler = assoc.get_handlers(evt.EVT_C_ECHO)
        if not handler or handler[0] is not verification_success:
            return False
        if not (getattr(dul, "runs_here", None) is not None and dul.runs_here()) or getattr(assoc, "_serving", True) \
                or self.msg_queue.qsize() or not assoc.is_established or assoc._sent_release:
            return False
        context = assoc._accepted_cx.get(context_id)
        return context is not None and context.abstract_syntax == Verification \
            and Verification not in assoc.acceptor.accepted_common_extended

    def echo_reply_pdu(self, pdu: bytes | bytearray) -> bytes | None:
        """The P-DATA-TF PDU answering ``pdu``, a P-DATA-TF just read from the peer, when it is a
        whole C-ECHO-RQ that :meth:`_answer_echo` would answer (one PDV, the command set in one
        last fragment, no message being received, no handler of the received PDU or DIMSE
        message bound), else ``None``. The one-thread DUL (``adapters.dicom.reactor``) then
        writes the reply itself: the PDU object, the state machine's event (Sta6 + Evt10 stays
        in Sta6, and so does the reply's Evt9) and the P-DATA primitive are skipped, most of an
        in-association C-ECHO's cost. A peer's requests differ only in their Message ID: the
        first one answered is kept as a template (its bytes around the Message ID), and a
        request that matches it is not decoded again."""
        n = len(pdu)
        if n < 12 or pdu[0] != 0x04 or pdu[11] != 0x03 or struct.unpack_from(">I", pdu, 6)[0] + 10 != n:
            return None
        assoc = self.assoc
        if self.message is not None or "_receiving" in self.__dict__ or assoc.get_handlers(evt.EVT_DIMSE_RECV) \
                or assoc.get_handlers(evt.EVT_PDU_RECV) or assoc.get_handlers(evt.EVT_DATA_RECV) \
                or assoc.get_handlers(evt.EVT_DIMSE_SENT) or assoc.get_handlers(evt.EVT_PDU_SENT):
            return None
        context_id = pdu[10]
        template = self.__dict__.get("_echo_template")
        if template is not None and n == template[0] and pdu.startswith(template[1]) and pdu.endswith(template[3]):
            if not self._echo_answerable(context_id):
                return None
            command = echo_success_command_set(struct.unpack_from("<H", pdu, template[2])[0])
        else:
            try:
                decoded = decode_command_set(bytes(pdu[12:]))
            except _Unsupported:
                return None
            if decoded is None or type(decoded[0]) is not C_ECHO or decoded[1] is not None:
                return None
            command = self._echo_response(context_id, decoded[0])
            if command is None:
                return None
            at = _message_id_offset(pdu, 12)
            if at is not None:  # (prefix includes the context ID: another context is decoded)
                self._echo_template = (n, bytes(pdu[:at]), at, bytes(pdu[at + 2:]))
        max_pdu = self.maximum_pdu_size
        if max_pdu and len(command) + 6 > max_pdu:
            return None
        return p_data_tf_header(context_id, len(command)) + b"\x03" + command


def _message_id_offset(raw, offset: int) -> int | None:
    """Where the value of the Message ID (0000,0110) of the command set at ``offset`` of ``raw``
    starts (2 bytes, little endian), or ``None``."""
    end = len(raw)
    while offset + 8 <= end:
        group, elem, length = struct.unpack_from("<HHI", raw, offset)
        offset += 8
        if (group, elem) == (0x0000, 0x0110):
            return offset if length == 2 else None
        offset += length
    return None


_C_ECHO_RSP = 0x8030
_MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
_ECHO_SUCCESS_BODY = (_element(0x00000002, _text(Verification, b"\0")),
                      _element(_COMMAND_FIELD, struct.pack("<H", _C_ECHO_RSP)),
                      _element(_DATASET_TYPE, struct.pack("<H", _NO_DATASET)), _element(0x00000900, b"\0\0"))
_ECHO_SUCCESS_HEAD = (_element(_GROUP_LENGTH, struct.pack("<I", sum(map(len, _ECHO_SUCCESS_BODY)) + 10))
                      + _ECHO_SUCCESS_BODY[0] + _ECHO_SUCCESS_BODY[1]
                      + struct.pack("<HHI", 0, _MESSAGE_ID_BEING_RESPONDED_TO, 2))
_ECHO_SUCCESS_TAIL = _ECHO_SUCCESS_BODY[2] + _ECHO_SUCCESS_BODY[3]


def echo_success_command_set(message_id: int) -> bytes:
    """The command set of a C-ECHO-RSP with Success to request ``message_id`` (Verification's
    SOP Class), as :func:`encode_command_set` writes it; only the message ID varies."""
    return _ECHO_SUCCESS_HEAD + struct.pack("<H", message_id) + _ECHO_SUCCESS_TAIL


def verification_success(event) -> int:
    """``EVT_C_ECHO`` handler answering every C-ECHO with Success (PS3.4 A.4: Verification as a
    ping, for any caller). Bound, it lets :class:`FastCommandSets` answer the requests itself."""
    return 0x0000
