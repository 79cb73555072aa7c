"""What the VLM ranker is shown: a query photo, one candidate (coordinates, location text, optionally
its photo) and the negative examples, as one chat turn per (query, candidate) pair.

Two wordings (``style``):

* ``geobuild``: coordinates rounded to 6 decimals, empty text parts dropped, the candidate photo
  introduced as "A photo taken there:", the negative examples only when there are some;
* ``georanker``: GeoRanker's training prompt word for word (``finetune_geo_ranker.py``): query
  photo, ``How far is this place from latitude: {lat}, longitude: {lon}, {texts}?`` with the
  coordinates as Python prints the stored floats and the texts joined by one space (empty ones
  included), the candidate photo, then ``Negative examples: {'; '.join(negatives)}``; a candidate
  without a photo (a GPS candidate) as GeoRanker's ``evaluate.py`` asks about one:
  ``How far is this place from latitude: {lat}, longitude: {lon}?`` and no second image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class RankCandidate:
    """One candidate location: coordinates, location text and optionally its own photo."""

    lat: float
    lon: float
    text: str = ""  # "city state country"
    image: "Image.Image | None" = None


@dataclass
class RankGroup:
    """A query photo and the candidates to rank for it (``negatives``: optional context strings)."""

    query_image: "Image.Image"
    candidates: list[RankCandidate]
    negatives: list[str] = field(default_factory=list)


def format_location(lat: float, lon: float, text: str = "") -> str:
    """``latitude: {lat}, longitude: {lon}, {text}`` with coordinates rounded to 6 decimals."""
    loc = f"latitude: {round(float(lat), 6)}, longitude: {round(float(lon), 6)}"
    text = " ".join(str(text).split())
    return f"{loc}, {text}" if text else loc


STYLES = ("geobuild", "georanker")


def build_messages(
    group: RankGroup, cand: RankCandidate, style: str = "geobuild"
) -> tuple[list[dict[str, Any]], list["Image.Image"]]:
    """The chat turn for one (query, candidate) pair and its images in order of appearance."""
    if style == "georanker":
        return _georanker_messages(group, cand)
    content: list[dict[str, Any]] = [
        {"type": "image"},
        {"type": "text", "text": f"How far is this place from {format_location(cand.lat, cand.lon, cand.text)}?"},
    ]
    images = [_rgb(group.query_image)]
    if cand.image is not None:
        content.append({"type": "text", "text": " A photo taken there:"})
        content.append({"type": "image"})
        images.append(_rgb(cand.image))
    if group.negatives:
        content.append({"type": "text", "text": f" Negative examples: {'; '.join(group.negatives)}"})
    return [{"role": "user", "content": content}], images


def _georanker_messages(group: RankGroup, cand: RankCandidate) -> tuple[list[dict[str, Any]], list["Image.Image"]]:
    # a candidate without a photo is one of GeoRanker's GPS ("zero-shot") candidates: evaluate.py
    # asks about its coordinates only
    where = f"latitude: {cand.lat}, longitude: {cand.lon}" + (f", {cand.text}" if cand.image is not None else "")
    content: list[dict[str, Any]] = [{"type": "image"}, {"type": "text", "text": f"How far is this place from {where}?"}]
    images = [_rgb(group.query_image)]
    if cand.image is not None:
        content.append({"type": "image"})
        images.append(_rgb(cand.image))
    content.append({"type": "text", "text": f"Negative examples: {'; '.join(group.negatives)}"})
    return [{"role": "user", "content": content}], images


def location_text(texts: Sequence[str] | None, style: str = "geobuild") -> str:
    """The candidate's text: ``city state country`` with empty parts dropped, or (``georanker``)
    every part joined by one space, as GeoRanker's ``' '.join(ref_texts[i])``."""
    if style == "georanker":
        return " ".join("" if t is None else str(t) for t in (texts or ()))
    return " ".join(str(t) for t in (texts or ()) if t not in (None, ""))


def _rgb(img: "Image.Image") -> "Image.Image":
    return img if img.mode == "RGB" else img.convert("RGB")
