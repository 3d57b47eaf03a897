"""Frames, bulk data and rendered images of a stored instance (PS3.18 8.3.5, 9.4, 10.4.1.1.3).

Frames of native (uncompressed) pixel data are byte ranges of Pixel Data; encapsulated frames
are returned as stored, in their compressed form. Rendering decodes with pydicom (native, RLE,
and whatever codecs are installed), applies the Modality and VOI LUTs (PS3.3 C.11), and scales
to 8 bits for JPEG or PNG. pydicom (with numpy and Pillow, which it imports) is imported when a
frame is asked for, not with this module.
"""

from __future__ import annotations

from io import BytesIO

from hub.errors import InvalidRequest, NotFound


def frame_bytes(raw: bytes, numbers: list[int]) -> tuple[str, list[bytes]]:
    """(media type, frames) for 1-based frame ``numbers`` of the Part 10 object ``raw``."""
    from pydicom import dcmread
    from pydicom.encaps import generate_frames
    from pydicom.uid import UID

    ds = dcmread(BytesIO(raw))
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    bad = [i for i in numbers if i < 1 or i > n]
    if bad:
        raise NotFound(f"frame {bad[0]} does not exist (the instance has {n})")
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts.is_encapsulated:
        all_frames = list(generate_frames(ds.PixelData, number_of_frames=n))
        return f"application/octet-stream; transfer-syntax={ts}", [all_frames[i - 1] for i in numbers]
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * (int(ds.BitsAllocated) // 8)
    data = ds.PixelData
    return "application/octet-stream", [data[(i - 1) * size:i * size] for i in numbers]


def bulk_data(raw: bytes, tag_hex: str) -> bytes:
    from pydicom import dcmread
    from pydicom.tag import Tag

    try:
        tag = Tag(int(tag_hex, 16))
    except ValueError:
        raise InvalidRequest(f"{tag_hex!r} is not a tag") from None
    ds = dcmread(BytesIO(raw))
    if tag not in ds:
        raise NotFound(f"the instance has no element {tag_hex}")
    v = ds[tag].value
    return v if isinstance(v, bytes) else str(v).encode()


def render(raw: bytes, frame: int, media: str, quality: int = 90) -> bytes:
    import numpy as np
    from PIL import Image
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = dcmread(BytesIO(raw))
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if frame < 1 or frame > n:
        raise NotFound(f"frame {frame} does not exist (the instance has {n})")
    try:
        arr = ds.pixel_array
    except Exception as e:
        raise InvalidRequest(f"the pixel data cannot be decoded here ({type(e).__name__})", status=406) from None
    if n > 1:
        arr = arr[frame - 1]
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            arr = apply_voi_lut(arr, ds)
        arr = arr.astype("float64")
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            arr = 255.0 - arr
        img = Image.fromarray(arr.astype("uint8"), mode="L")
    else:
        if arr.dtype != np.uint8:
            arr = (arr.astype("float64") / arr.max() * 255).astype("uint8")
        img = Image.fromarray(arr, mode="RGB")
    out = BytesIO()
    if media == "image/png":
        img.save(out, format="PNG")
    else:
        img.save(out, format="JPEG", quality=quality)
    return out.getvalue()
