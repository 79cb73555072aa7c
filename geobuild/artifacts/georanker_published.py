"""A GeoRanker train bundle rebuilt from a published dataset: ``geobuild export georanker --from``.

A dataset published by ``geobuild publish`` holds the ``georanker`` config (the rows of
``GeoRanking.parquet``) and, in its ``-images`` companion, the photos as WebDataset tars whose
``json`` names each photo's id. This module reads both, from a local publish folder or from the
Hub, and writes the same bundle ``geobuild export georanker`` writes from a run: ``GeoRanking.parquet``
(the config's rows, train split then validation), ``images.tar`` + ``tar_index.pkl`` (every photo
the rows reference, members of 5120 bytes or less left out as GeoRanker's index leaves them out),
``ledger.parquet`` (rows left out and why) and ``bundle.json``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import GeobuildError
from ..core.log import get_logger, progress
from .georanker_bundle import TRAIN_TABLE, BundleResult, prepare_out, seal, write_photos
from .georanking import MIN_TAR_BYTES, gr_id
from .shards import iter_shard

log = get_logger("export")

SPLIT_ORDER = ("train", "validation")
HUB_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _download(repo: str, patterns: list[str]) -> Path:
    """A local snapshot of the Hub dataset repository ``repo`` (only ``patterns``)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a core dependency
        raise GeobuildError("reading a Hub dataset needs huggingface_hub: pip install huggingface_hub") from None
    try:
        return Path(snapshot_download(repo_id=repo, repo_type="dataset", allow_patterns=patterns))
    except Exception as exc:  # network, auth, missing repo: one line
        raise GeobuildError(f"cannot download the Hub dataset {repo} ({type(exc).__name__}: {exc})") from None


def locate(source: str, images: str | None = None) -> tuple[Path, Path]:
    """(dataset folder, images folder) of a publish folder (``DIR/dataset`` + ``DIR/images``), a
    dataset folder with ``images`` given, or a Hub repository ``ORG/NAME`` (+ ``ORG/NAME-images``)."""
    p = Path(source).expanduser()
    if p.is_dir():
        dataset = p / "dataset" if (p / "dataset").is_dir() else p
        imgs = Path(images).expanduser() if images else (p / "images" if (p / "images").is_dir() else None)
        if imgs is None or not imgs.is_dir():
            raise GeobuildError(f"no images folder for {p}: pass --images with the published images repository "
                                f"(the folder holding train/*.tar)")
        return dataset, imgs
    if HUB_REPO.match(source):
        dataset = _download(source, ["georanker/*", "README.md"])
        imgs = Path(images).expanduser() if images else _download(f"{source}-images", ["*/*.tar", "README.md"])
        return dataset, imgs
    raise GeobuildError(f"--from {source} is neither a folder nor a Hub dataset name (ORG/NAME)")


def read_georanker_config(dataset: Path) -> pa.Table:
    """The ``georanker`` config's rows, train split then validation, files in name order."""
    files = [f for s in SPLIT_ORDER for f in sorted((dataset / "georanker").glob(f"{s}-*.parquet"))]
    if not files:
        raise GeobuildError(f"no georanker config in {dataset} (georanker/<split>-*.parquet); publish the run "
                            f"again, or export straight from the run: geobuild export georanker --run RUN --out DIR")
    try:
        return pa.concat_tables([pq.read_table(f).replace_schema_metadata(None) for f in files])
    except (pa.ArrowInvalid, OSError) as exc:
        raise GeobuildError(f"unreadable georanker config in {dataset} ({exc}); download it again") from None


def _stage_published_photos(images: Path, wanted: set[str], staging: Path) -> dict[str, int]:
    """Stream every tar of the images repository once; write the photo of each wanted id to
    ``staging/<id>``. Returns id -> byte size of the photos found."""
    tars = sorted(images.glob("*/*.tar"))
    if not tars:
        raise GeobuildError(f"no image tars in {images} (expected <split>/*.tar)")
    staging.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    bar = progress(total=len(wanted), desc="photos", unit="img")
    try:
        for t in tars:
            try:
                for sample in iter_shard(t):
                    pid = (sample.get("json") or {}).get("id")
                    gid = gr_id(pid) if pid is not None else None
                    if gid not in wanted or gid in sizes or not sample.get("jpg"):
                        continue
                    (staging / gid).write_bytes(sample["jpg"])
                    sizes[gid] = len(sample["jpg"])
                    bar.update(1)
            except (OSError, ValueError, json.JSONDecodeError) as exc:
                raise GeobuildError(f"unreadable image tar {t} ({exc}); download it again") from None
    finally:
        bar.close()
    return sizes


def export_from_published(source: str, out: Path, images: str | None = None) -> BundleResult:
    """Write the train bundle of a published dataset (see the module docstring) to ``out``."""
    dataset, imgs = locate(source, images)
    table = read_georanker_config(dataset)
    ids = table.column("ref_img_id").to_pylist()
    wanted = {i for row in ids for i in row}
    out = Path(out).expanduser()
    tmp = prepare_out(out)
    try:
        sizes = _stage_published_photos(imgs, wanted, tmp / "_staging")
        keep, left = [], []
        for n, row in enumerate(ids):
            missing = [i for i in row if i not in sizes]
            small = [i for i in row if i in sizes and sizes[i] <= MIN_TAR_BYTES]
            if missing or small:
                why, bad = ("photo_missing", missing) if missing else ("photo_too_small", small)
                left.append({"key": row[0], "id": row[0], "status": why,
                             "error_message": f"photo {bad[0]} cannot be opened through tar_index ({why}); {len(bad)} of {len(row)} entries"})
            else:
                keep.append(n)
        kept = table.take(pa.array(keep, type=pa.int64()))
        pq.write_table(kept, tmp / TRAIN_TABLE)
        write_photos(tmp, {i for n in keep for i in ids[n]}, None)
        seal(tmp, out, left, {
            "mode": "train", "from": source if not Path(source).expanduser().is_dir() else "published folder",
            "rows": kept.num_rows, "left_out": len(left), "images_tar": "images.tar",
        })
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BundleResult("train", out, kept.num_rows, left)
