"""GPS coordinates from a photo's EXIF (GPSInfo IFD: degree/minute/second rationals and N/S/E/W)."""

from __future__ import annotations

import io
import math

from PIL import Image

GPS_IFD = 0x8825
LAT_REF, LAT, LON_REF, LON = 1, 2, 3, 4


def _to_float(v) -> float:
    if isinstance(v, tuple) and len(v) == 2:  # (numerator, denominator)
        return float(v[0]) / float(v[1]) if v[1] else math.nan
    return float(v)


def dms_to_degrees(dms, ref: str | bytes | None) -> float:
    """(deg, min, sec) rationals and a hemisphere letter to signed decimal degrees."""
    if isinstance(dms, (int, float)) or (hasattr(dms, "numerator") and not isinstance(dms, (tuple, list))):
        parts = [_to_float(dms)]
    else:
        parts = [_to_float(x) for x in dms]
    deg = sum(p / 60**i for i, p in enumerate(parts[:3]))
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    if ref and ref.strip().upper()[:1] in ("S", "W"):
        deg = -deg
    return deg


def gps_from_bytes(data: bytes) -> tuple[float, float] | None:
    """(lat, lon) from the EXIF GPSInfo of an image file, or None when it has none."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            gps = img.getexif().get_ifd(GPS_IFD)
    except Exception:  # noqa: BLE001 - unreadable EXIF means no GPS
        return None
    if not gps or LAT not in gps or LON not in gps:
        return None
    try:
        return dms_to_degrees(gps[LAT], gps.get(LAT_REF)), dms_to_degrees(gps[LON], gps.get(LON_REF))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
