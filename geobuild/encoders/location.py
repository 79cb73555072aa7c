"""GeoCLIP's pretrained GPS location encoder, loaded offline from the ``geoclip`` wheel.

Only the location encoder is built (``geoclip.model.location_encoder.LocationEncoder``) and its
weights are read from the wheel's ``weights/location_encoder_weights.pth``; GeoCLIP's image
backbone (fetched from the model hub) is never instantiated.

>>> enc = load_location_encoder()
>>> feats = encode_gps([48.85], [2.35])          # float32 [1, 512], L2-normalised
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..core.errors import GeobuildError, require

FEATURE_DIM = 512


def geoclip_dir() -> Path:
    """The ``geoclip/model`` folder of the installed wheel."""
    geoclip = require("geoclip", "ml")
    return Path(geoclip.__file__).resolve().parent / "model"


def geoclip_gallery_csv() -> Path:
    """GeoCLIP's 100K GPS gallery (``gps_gallery/coordinates_100K.csv``, columns LAT, LON)."""
    p = geoclip_dir() / "gps_gallery" / "coordinates_100K.csv"
    if not p.exists():
        raise GeobuildError(f"GeoCLIP's GPS gallery is missing from the geoclip wheel ({p}); reinstall geoclip")
    return p


def weights_path() -> Path:
    p = geoclip_dir() / "weights" / "location_encoder_weights.pth"
    if not p.exists():
        raise GeobuildError(f"GeoCLIP's location encoder weights are missing ({p}); reinstall geoclip")
    return p


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise GeobuildError("--device cuda: torch sees no CUDA device")
    return device


@lru_cache(maxsize=4)
def load_location_encoder(device: str = "auto"):
    """GeoCLIP's ``LocationEncoder`` with its pretrained weights, in eval mode on ``device``."""
    torch = require("torch", "ml")
    require("geoclip", "ml")
    from geoclip.model.location_encoder import LocationEncoder

    model = LocationEncoder(from_pretrained=False)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(_device(device)).eval()


def encode_gps(
    lat, lon, device: str = "auto", batch_size: int = 8192, normalize: bool = True, progress_desc: str | None = None
) -> np.ndarray:
    """Location features float32 [n, 512] for degrees ``lat``/``lon`` (L2-normalised as GeoCLIP's
    ``forward``/``predict`` does before the similarity), in batches without gradients."""
    import torch

    from ..core.log import progress

    lat = np.asarray(lat, dtype=np.float32).reshape(-1)
    lon = np.asarray(lon, dtype=np.float32).reshape(-1)
    if lat.shape != lon.shape:
        raise GeobuildError(f"encode_gps: {lat.shape[0]} latitudes but {lon.shape[0]} longitudes")
    model = load_location_encoder(device)
    dev = next(model.parameters()).device
    out = np.empty((lat.shape[0], FEATURE_DIM), dtype=np.float32)
    bar = progress(total=lat.shape[0], desc=progress_desc or "encode gps", unit="pt", disable=None if progress_desc else True)
    with torch.inference_mode():
        for i in range(0, lat.shape[0], batch_size):
            x = torch.from_numpy(np.stack([lat[i : i + batch_size], lon[i : i + batch_size]], axis=1)).to(dev)
            f = model(x)
            if normalize:
                f = torch.nn.functional.normalize(f, dim=1)
            out[i : i + f.shape[0]] = f.float().cpu().numpy()
            bar.update(f.shape[0])
    bar.close()
    return out
