"""DICOMweb on the hub's HTTP API under ``/dicom-web`` (PS3.18): QIDO-RS (10.6), WADO-RS (10.4),
STOW-RS (10.5), rendered frames (10.4.1.1.3), and deletion of studies, series and instances.

Authorization is the FHIR one: a bearer token whose scopes grant ``ImagingStudy`` read
(search and retrieve), create (store) or delete. Objects are served as stored: WADO-RS
returns each instance's Part 10 bytes in the transfer syntax it arrived in.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from hub.api.auth import authorize
from hub.dicom import index
from hub.dicom.attributes import qido_json, keyword_of
from hub.dicom.audit import dicom_event
from hub.dicom.frames import bulk_data, frame_bytes, render
from hub.dicom.multipart import boundary_of, new_boundary, parts, spool_parts
from hub.dicom.store import BULK_PREFIX
from hub.errors import InvalidRequest, NotFound
from hub.storage.db import read_tx

log = logging.getLogger("yilian.dicom")
router = APIRouter(prefix="/dicom-web", tags=["DICOMweb"])
DICOM_JSON = "application/dicom+json"
_CHUNK = 1 << 20


def _hub(request: Request):
    return request.app.state.hub


def _base(request: Request) -> str:
    return _hub(request).dicom.web_base


def _audit(request: Request, access, kind: str, studies: list[str], status: int = 200, **kw) -> None:
    hub = _hub(request)
    if hub.audit is not None:
        hub.audit.record(dicom_event(kind, who=access.principal.subject, address=access.address,
                                     observer=_base(request), studies=studies, status=status, **kw))


# ---------------------------------------------------------------------- QIDO-RS
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}


def _qido(request: Request, level: str, fixed: dict[str, str]) -> Response:
    access = authorize(request, resource=("ImagingStudy", "read"))
    hub = _hub(request)
    params = parse_qsl(request.url.query, keep_blank_values=True)
    keys: dict[str, str] = {}
    fields: list[str] = []
    include_all = False
    limit, offset, fuzzy = None, 0, False
    for name, value in params:
        if name == "includefield":
            for f in value.split(","):
                if f == "all":
                    include_all = True
                elif keyword_of(f):
                    fields.append(keyword_of(f))
                else:
                    raise InvalidRequest(f"includefield {f!r} is not an attribute keyword or tag")
        elif name == "limit":
            limit = _int(name, value)
        elif name == "offset":
            offset = _int(name, value)
        elif name == "fuzzymatching":
            fuzzy = value.lower() == "true"
        else:
            kw = keyword_of(name.split(".")[0])
            if kw is None:
                raise InvalidRequest(f"{name!r} is not an attribute keyword or tag (PS3.18 8.3.4.1)")
            keys[kw] = value
    keys.update(fixed)
    limit = min(limit or hub.settings.max_page_size, hub.settings.max_page_size)
    def run() -> list[dict]:
        with read_tx(hub.engine) as conn:
            return index.query(conn, level, keys, pn_case_insensitive=hub.settings.dicom_pn_case_insensitive,
                               limit=limit, offset=offset, fuzzy=fuzzy)

    rows = run()
    if level == "IMAGE" and (fields or include_all) and any(not r.get("_meta") for r in rows):
        for study in {r["StudyInstanceUID"] for r in rows if not r.get("_meta")}:
            hub.dicom.store.fill_metadata(study)  # headers not filled in yet: do it now
        rows = run()
    base = _base(request)
    out = []
    for r in rows:
        url = f"{base}/studies/{r['StudyInstanceUID']}"
        if level in ("SERIES", "IMAGE"):
            url += f"/series/{r['SeriesInstanceUID']}"
        if level == "IMAGE":
            url += f"/instances/{r['SOPInstanceUID']}"
        out.append(qido_json(r, level, fields, url, include_all))
    _audit(request, access, "query", [r["StudyInstanceUID"] for r in rows])
    return Response(orjson.dumps(out), media_type=DICOM_JSON)


def _int(name: str, value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a number") from None
    if v < 0:
        raise InvalidRequest(f"{name} must not be negative")
    return v


@router.get("/studies")
def search_studies(request: Request) -> Response:
    return _qido(request, "STUDY", {})


@router.get("/series")
def search_all_series(request: Request) -> Response:
    return _qido(request, "SERIES", {})


@router.get("/instances")
def search_all_instances(request: Request) -> Response:
    return _qido(request, "IMAGE", {})


@router.get("/studies/{study}/series")
def search_series(request: Request, study: str) -> Response:
    return _qido(request, "SERIES", {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances")
def search_study_instances(request: Request, study: str) -> Response:
    return _qido(request, "IMAGE", {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}/instances")
def search_instances(request: Request, study: str, series: str) -> Response:
    return _qido(request, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series})


# ---------------------------------------------------------------------- WADO-RS
def _rows(request: Request, study: str, series: str | None = None, sop: str | None = None):
    hub = _hub(request)
    keys = {"StudyInstanceUID": study, "SeriesInstanceUID": series or "", "SOPInstanceUID": sop or ""}
    with read_tx(hub.engine) as conn:
        rows = index.instances(conn, level="IMAGE", keys=keys)
    if not rows:
        raise NotFound("no such study, series or instance")
    return rows


def _check_accept(request: Request, wanted: tuple[str, ...]) -> str:
    accept = request.headers.get("accept", "*/*")
    for part in accept.split(","):
        media = part.strip().lower()
        if not media or media.startswith("*/*"):
            return wanted[0]
        for w in wanted:
            if w in media:
                return w
    raise InvalidRequest(f"cannot answer with {accept!r}; offered: {', '.join(wanted)}", status=406)


_WHOLE_BODY_MAX = 16 << 20  # a response up to this size is read and sent whole, not streamed


def _instances_response(hub, rows) -> Response:
    boundary = new_boundary()
    media_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    if all(r.size for r in rows) and sum(r.size for r in rows) <= _WHOLE_BODY_MAX:
        # one instance or a few small ones: read in this (worker) thread and sent with its
        # Content-Length; a streamed body costs each chunk, and its end, a hop to a worker thread
        body = b"".join(parts(boundary, ((f"application/dicom; transfer-syntax={r.transfer_syntax}",
                                          hub.dicom.blobs.read(r.blob_key)) for r in rows)))
        return Response(body, media_type=media_type)

    def chunks(row):
        with hub.dicom.blobs.open(row.blob_key) as f:
            while data := f.read(_CHUNK * 4):
                yield data

    body = parts(boundary, ((f"application/dicom; transfer-syntax={r.transfer_syntax}", chunks(r)) for r in rows))
    return StreamingResponse(body, media_type=media_type)


def _retrieve(request: Request, study: str, series: str | None = None, sop: str | None = None):
    access = authorize(request, resource=("ImagingStudy", "read"))
    _check_accept(request, ("multipart/related", "application/dicom"))
    rows = _rows(request, study, series, sop)
    _audit(request, access, "transferred", [study])
    return _instances_response(_hub(request), rows)


@router.get("/studies/{study}")
def retrieve_study(request: Request, study: str):
    return _retrieve(request, study)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(request: Request, study: str, series: str):
    return _retrieve(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def retrieve_instance(request: Request, study: str, series: str, sop: str):
    return _retrieve(request, study, series, sop)


def _metadata(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    access = authorize(request, resource=("ImagingStudy", "read"))
    hub = _hub(request)
    with read_tx(hub.engine) as conn:
        rows = index.metadata_rows(conn, study, series, sop)
    if not rows:
        raise NotFound("no such study, series or instance")
    if any(not meta for _, _, meta in rows):  # asked for before the background fill got there
        hub.dicom.store.fill_metadata(study)
        with read_tx(hub.engine) as conn:
            rows = index.metadata_rows(conn, study, series, sop)
    base = _base(request)
    pieces = []
    for sop_uid, series_uid, meta in rows:
        url = f"{base}/studies/{study}/series/{series_uid}/instances/{sop_uid}/bulkdata/"
        if BULK_PREFIX in meta:
            meta = meta.replace(BULK_PREFIX, url)
        if meta.endswith("}") and '"7FE00010"' not in meta:
            meta = meta[:-1] + (',' if meta != "{}" else '') + f'"7FE00010":{{"vr":"OW","BulkDataURI":"{url}7FE00010"}}}}'
        pieces.append(meta)
    _audit(request, access, "query", [study])
    return Response(b"[" + ",".join(pieces).encode() + b"]", media_type=DICOM_JSON)


@router.get("/studies/{study}/metadata")
def study_metadata(request: Request, study: str) -> Response:
    return _metadata(request, study)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(request: Request, study: str, series: str) -> Response:
    return _metadata(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata(request: Request, study: str, series: str, sop: str) -> Response:
    return _metadata(request, study, series, sop)


def _raw(request: Request, study: str, series: str, sop: str) -> bytes:
    (row,) = _rows(request, study, series, sop)
    return _hub(request).dicom.blobs.read(row.blob_key)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
def retrieve_frames(request: Request, study: str, series: str, sop: str, frames: str):
    authorize(request, resource=("ImagingStudy", "read"))
    try:
        numbers = [int(f) for f in frames.split(",")]
    except ValueError:
        raise InvalidRequest("frame numbers are positive integers separated by commas") from None
    ctype, data = frame_bytes(_raw(request, study, series, sop), numbers)
    boundary = new_boundary()
    return Response(b"".join(parts(boundary, ((ctype, d) for d in data))),
                    media_type=f'multipart/related; type="{ctype.split(";")[0]}"; boundary={boundary}')


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
def retrieve_bulkdata(request: Request, study: str, series: str, sop: str, tag: str):
    authorize(request, resource=("ImagingStudy", "read"))
    data = bulk_data(_raw(request, study, series, sop), tag)
    boundary = new_boundary()
    return Response(b"".join(parts(boundary, [("application/octet-stream", data)])),
                    media_type=f'multipart/related; type="application/octet-stream"; boundary={boundary}')


def _rendered(request: Request, study: str, series: str, sop: str, frame: int) -> Response:
    authorize(request, resource=("ImagingStudy", "read"))
    media = _check_accept(request, ("image/jpeg", "image/png"))
    quality = _int("quality", request.query_params.get("quality", "90"))
    return Response(render(_raw(request, study, series, sop), frame, media, min(max(quality, 1), 100)),
                    media_type=media)


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
def rendered_instance(request: Request, study: str, series: str, sop: str) -> Response:
    return _rendered(request, study, series, sop, 1)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered")
def rendered_frame(request: Request, study: str, series: str, sop: str, frame: int) -> Response:
    return _rendered(request, study, series, sop, frame)


# ---------------------------------------------------------------------- STOW-RS
async def _stow(request: Request, study: str | None) -> Response:
    access = authorize(request, resource=("ImagingStudy", "create"))
    hub = _hub(request)
    boundary = boundary_of(request.headers.get("content-type", ""))
    spooled = await spool_parts(request.stream(), boundary, hub.dicom.blobs.temp_file)
    base = _base(request)
    ok, failed = [], []
    for n, (ctype, path) in enumerate(spooled):
        if ctype and not ctype.lower().startswith("application/dicom"):
            path.unlink(missing_ok=True)
            failed.append({"00081197": {"vr": "US", "Value": [0xC000]}})
            continue
        try:
            r = await run_in_threadpool(hub.dicom.store.ingest_path, path,
                                        source_ae=f"web:{access.principal.client_id}"[:16], expect_study=study)
        except BaseException:  # e.g. the database busy (503): the parts not ingested yet are not kept either
            for _, rest in spooled[n + 1:]:
                rest.unlink(missing_ok=True)
            raise
        ref = {"00081150": {"vr": "UI", "Value": [r.sop_class]} if r.sop_class else {"vr": "UI"},
               "00081155": {"vr": "UI", "Value": [r.sop_uid]} if r.sop_uid else {"vr": "UI"}}
        if r.status == 0:
            ref["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{r.study_uid}"]}
            ok.append(ref)
        else:
            ref["00081197"] = {"vr": "US", "Value": [r.status]}
            failed.append(ref)
    body: dict = {}
    if study:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if ok:
        body["00081199"] = {"vr": "SQ", "Value": ok}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if ok else 409)
    studies = sorted({s["00081190"]["Value"][0].rsplit("/", 1)[1] for s in ok})
    for s in studies:
        hub.dicom.imaging.notify(s)
    _audit(request, access, "import", studies, status=status)
    return Response(orjson.dumps(body), status_code=status, media_type=DICOM_JSON)


@router.post("/studies")
async def store_instances(request: Request) -> Response:
    return await _stow(request, None)


@router.post("/studies/{study}")
async def store_study_instances(request: Request, study: str) -> Response:
    return await _stow(request, study)


# ---------------------------------------------------------------------- deletion
def _delete(request: Request, study: str, series: str | None = None, sop: str | None = None) -> Response:
    access = authorize(request, resource=("ImagingStudy", "delete"))
    _hub(request).dicom.delete(access, study_uid=study, series_uid=series, sop_uid=sop)
    return Response(status_code=204)


@router.delete("/studies/{study}")
def delete_study(request: Request, study: str) -> Response:
    return _delete(request, study)


@router.delete("/studies/{study}/series/{series}")
def delete_series(request: Request, study: str, series: str) -> Response:
    return _delete(request, study, series)


@router.delete("/studies/{study}/series/{series}/instances/{sop}")
def delete_instance(request: Request, study: str, series: str, sop: str) -> Response:
    return _delete(request, study, series, sop)


# ---------------------------------------------------------------------- de-identified export
@router.post("/studies/{study}/deidentify")
def deidentified_export(request: Request, study: str):
    """A de-identified copy of the study (PS3.15 Annex E basic profile with the configured retain
    options; hub.dicom.deidentify) as multipart/related application/dicom. Needs ImagingStudy
    read; one Export AuditEvent (DCM 110106) names the original study."""
    from hub.dicom.deidentify import Deidentifier

    access = authorize(request, resource=("ImagingStudy", "read"))
    _check_accept(request, ("multipart/related", "application/dicom"))
    hub = _hub(request)
    rows = _rows(request, study)
    deid = Deidentifier(hub.settings.dicom_deid_retain)
    body = [("application/dicom", deid.apply(hub.dicom.blobs.read(r.blob_key))) for r in rows]
    new_study = deid.uids.get(study, study)
    _audit(request, access, "export", [study],
           detail=f"de-identified export of {len(rows)} instance(s), PS3.15 E basic"
                  + "".join(f" +{o}" for o in deid.retain))
    boundary = new_boundary()
    return Response(b"".join(parts(boundary, body)), headers={"X-Deidentified-Study": new_study},
                    media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')
