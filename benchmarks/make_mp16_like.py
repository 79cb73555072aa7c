"""Write an MP16-Pro-shaped input of any size, built from the IM2GPS3K sample.

``DIR/MP16_Pro_places365.csv`` has MP16-Pro's columns and ids (``xx/yy/<flickr id>.jpg``);
``DIR/mp-16-images00``, ``01``, ... are byte-split parts (cut at arbitrary offsets) of one tar
whose members are ``mp-16-images/xx/yy/<flickr id>.jpg``. Photos are the IM2GPS3K JPEGs, cycled
as often as needed, under new ids, new authors and coordinates jittered by a few km; location
text comes from an offline reverse geocode (``reverse_geocoder``) of the jittered point. A few
percent of members are bad on purpose: truncated JPEGs (broken), valid JPEGs under 5120 bytes
(tiny), rows with no member (missing) and members with no row (extra). ``DIR/expected.json``
counts each kind and the ledger statuses the shard stage should report for ``min_bytes`` 0, 5000
and 5121 (G3 keeps members > 5120 bytes), so a test can check ledger + outputs = inputs.

Streams in chunks of rows (memory does not grow with ``--rows``) and is byte-reproducible for a
seed: fixed tar mtime/uid/gid/names, deterministic order, per-chunk seeded random draws.

    python -m benchmarks.make_mp16_like --rows N --out DIR [--seed S] [--part-size 64M]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import re
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GEOBUILD_SHARED", REPO.parent / "shared")).resolve()
ZIP = SHARED / "data/im2gps3k/im2gps3ktest.zip"
CSV = SHARED / "data/im2gps3k/im2gps3k_places365.csv"

COLUMNS = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label", "Prob_indoor", "Prob_natural",
           "Prob_urban", "neighbourhood", "city", "county", "state", "region", "country", "continent"]
SCENE = COLUMNS[4:10]
CSV_NAME = "MP16_Pro_places365.csv"
STEM = "mp-16-images"  # part stem and the tar's leading folder
MTIME = 1_500_000_000  # fixed member mtime (2017-07-14)
CHUNK = 1024  # rows generated, geocoded and written at a time
STRIDE = 997  # flickr ids: 1e9 + serial * STRIDE + offset < STRIDE, so unique
TINY_LIMIT = 5120  # G3's tar_index keeps members > 5120 bytes
MIN_BYTES = (0, 5000, 5121)  # shard --min-bytes values expected.json gives statuses for (5121: G3 keeps > 5120)
PLACE_KM, COUNTRY_KM = 50.0, 300.0  # same cut-offs as geobuild's reverse geocode
# ISO alpha-2 -> continent (GeoNames countryInfo, as geobuild/data/country_continent.csv)
CONTINENTS = {
    "Africa": "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG ML MR MU MW MZ "
              "NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
    "Antarctica": "AQ BV GS HM TF",
    "Asia": "AE AF AM AZ BD BH BN BT CC CN CX GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM MN MO MV MY NP "
            "OM PH PK PS QA SA SG SY TH TJ TM TR TW UZ VN YE",
    "Europe": "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI LT LU LV MC MD ME "
              "MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA XK",
    "North America": "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI PA PM PR "
                     "SV SX TC TT US VC VG VI",
    "Oceania": "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TL TO TV UM VU WF WS",
    "South America": "AR BO BR CL CO EC FK GF GY PE PY SR UY VE",
}
CONTINENT_OF = {cc: name for name, codes in CONTINENTS.items() for cc in codes.split()}
NAME_OVERRIDES = {"XK": "Kosovo", "PS": "Palestine", "VA": "Vatican City", "CD": "Democratic Republic of the Congo",
                  "CG": "Republic of the Congo", "FM": "Micronesia", "BQ": "Caribbean Netherlands"}


class SplitWriter(io.RawIOBase):
    """A write-only file that fills ``DIR/<stem>00``, ``01``, ... with ``part_size`` bytes each."""

    def __init__(self, folder: Path, stem: str, part_size: int):
        super().__init__()
        self.folder, self.stem, self.part_size = folder, stem, part_size
        self.parts: list[Path] = []
        self.total = 0
        self._f: BinaryIO | None = None
        self._room = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        while view:
            if self._f is None:
                self.parts.append(self.folder / f"{self.stem}{len(self.parts):02d}")
                self._f, self._room = open(self.parts[-1], "wb"), self.part_size
            n = min(self._room, len(view))
            self._f.write(view[:n])
            view, self._room, self.total = view[n:], self._room - n, self.total + n
            if self._room == 0:
                self._f.close()
                self._f = None
        return len(b)

    def tell(self) -> int:
        return self.total

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        super().close()


class TarStream:
    """A minimal streaming tar writer (GNU headers, fixed owner and mtime; keeps no member list)."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.size = 0

    def _write(self, b: bytes) -> None:
        self.out.write(b)
        self.size += len(b)

    def add(self, name: str, data: bytes | None) -> None:
        """A regular file, or a directory when ``data`` is None."""
        ti = tarfile.TarInfo(name)
        ti.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
        ti.mode = 0o755 if data is None else 0o644
        ti.size = 0 if data is None else len(data)
        ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "root", "root"
        self._write(ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        if data:
            self._write(data)
            self._write(b"\0" * (-len(data) % tarfile.BLOCKSIZE))

    def close(self) -> None:
        self._write(b"\0" * (2 * tarfile.BLOCKSIZE))
        self._write(b"\0" * (-self.size % tarfile.RECORDSIZE))


def parse_size(text: str) -> int:
    """``123``, ``64K``, ``20M``, ``1.5G`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2000000, 64K, 20M, 1.5G)")
    unit = 1024 ** ("kmgt".index(m.group(2)) + 1) if m.group(2) else 1
    return max(1, int(float(m.group(1)) * unit))


def _h(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def author_id(seed: int, author: str, cycle: int) -> str:
    """A Flickr-like NSID, the same for every photo of one source author within one cycle."""
    h = _h(seed, author, cycle)
    return f"{h % 10**8:08d}@N{(h >> 32) % 8:02d}"


def member_id(number: int) -> str:
    """``xx/yy/<number>.jpg`` with two hex levels derived from the number."""
    d = hashlib.blake2b(str(number).encode(), digest_size=2).hexdigest()
    return f"{d[:2]}/{d[2:]}/{number}.jpg"


def tiny_jpeg(data: bytes, target: int) -> bytes:
    """A valid 48-px thumbnail JPEG of ``data``, padded with a comment segment to ``target`` bytes."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (96, 96))
    img = img.convert("RGB")
    img.thumbnail((48, 48))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    out = buf.getvalue()
    pad = target - len(out) - 4
    if pad > 0:
        out = out[:2] + b"\xff\xfe" + (pad + 2).to_bytes(2, "big") + b"\0" * pad + out[2:]
    return out


class Geocoder:
    """Offline reverse geocode to MP16-Pro-style text (city, county, state, country, continent)."""

    def __init__(self) -> None:
        import pycountry
        import reverse_geocoder as rg

        self._rg = rg.RGeocoder(mode=1, verbose=False)
        self._pycountry = pycountry
        self._names: dict[str, str] = {}

    def country(self, cc: str) -> str:
        if cc not in self._names:
            c = self._pycountry.countries.get(alpha_2=cc) if cc else None
            self._names[cc] = NAME_OVERRIDES.get(cc) or (getattr(c, "common_name", None) or c.name if c else "")
        return self._names[cc]

    def __call__(self, lat: np.ndarray, lon: np.ndarray) -> list[dict[str, str]]:
        res = self._rg.query([(float(a), float(b)) for a, b in zip(lat, lon)])
        plat = np.radians([float(r["lat"]) for r in res])
        plon = np.radians([float(r["lon"]) for r in res])
        la, lo = np.radians(lat), np.radians(lon)
        a = np.sin((plat - la) / 2) ** 2 + np.cos(la) * np.cos(plat) * np.sin((plon - lo) / 2) ** 2
        km = 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
        out = []
        for r, d in zip(res, km):
            near, inland = d <= PLACE_KM, d <= COUNTRY_KM
            out.append({"city": r["name"] if near else "", "county": r["admin2"] if near else "",
                        "state": r["admin1"] if near else "", "country": self.country(r["cc"]) if inland else "",
                        "continent": CONTINENT_OF.get(r["cc"], "") if inland else ""})
        return out


def expected_status(kind: str, size: int, min_bytes: int) -> str:
    """The shard ledger status of one member of ``kind`` and ``size`` bytes under ``--min-bytes``."""
    if kind == "extra":
        return "no_metadata"
    if size == 0:
        return "empty_file"
    if min_bytes and size < min_bytes:
        return "too_few_bytes"
    return "bad_image" if kind == "broken" else "ok"


def generate(rows: int, out: Path, seed: int = 0, part_size: int | None = None, jitter_km: float = 5.0,
             broken: float = 0.015, tiny: float = 0.015, missing: float = 0.01, extra: float = 0.01,
             empty_country: float = 0.03, zip_path: Path = ZIP, csv_path: Path = CSV) -> dict[str, Any]:
    """Write the CSV, the tar parts and expected.json into ``out``; returns the expected counts."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():  # parts of an earlier, larger run would join this tar
        if re.fullmatch(re.escape(STEM) + r"\d+", stale.name):
            stale.unlink()
    zf = zipfile.ZipFile(zip_path)
    by_name = {i.filename.rsplit("/", 1)[-1]: i for i in zf.infolist() if not i.is_dir()}
    with open(csv_path, newline="", encoding="utf-8") as f:
        src = [r for r in csv.DictReader(f) if r["IMG_ID"] in by_name]
    n_src = len(src)
    src_lat = np.array([float(r["LAT"]) for r in src])
    src_lon = np.array([float(r["LON"]) for r in src])
    if part_size is None:  # about 6 parts, never aligned to tar blocks
        avg = sum(by_name[r["IMG_ID"]].file_size for r in src) / n_src + 2 * tarfile.BLOCKSIZE
        part_size = max(64 * 1024, math.ceil(rows * avg / 6)) | 1
    geocode = Geocoder()
    kinds: Counter[str] = Counter()
    statuses = {mb: Counter() for mb in MIN_BYTES}
    small_ok = no_country = members = 0
    split = SplitWriter(out, STEM, part_size)
    tar = TarStream(split)
    tar.add(f"{STEM}/", None)
    with open(out / CSV_NAME, "w", newline="", encoding="utf-8") as fcsv:
        w = csv.writer(fcsv, lineterminator="\n")
        w.writerow(COLUMNS)
        for c, start in enumerate(range(0, rows, CHUNK)):
            n = min(CHUNK, rows - start)
            rng = np.random.default_rng([seed, c])
            idx = np.arange(start, start + n)
            s, cyc = idx % n_src, idx // n_src
            r_km = jitter_km * np.sqrt(rng.random(n))
            theta = 2 * np.pi * rng.random(n)
            lat = np.clip(src_lat[s] + r_km * np.cos(theta) / 111.32, -89.9999, 89.9999)
            lon = src_lon[s] + r_km * np.sin(theta) / (111.32 * np.maximum(np.cos(np.radians(lat)), 0.01))
            lat, lon = np.round(lat, 6), np.round((lon + 180.0) % 360.0 - 180.0, 6)
            u = rng.random(n)
            kind = np.select([u < broken, u < broken + tiny, u < broken + tiny + missing], ["broken", "tiny", "missing"], "ok")
            has_extra = rng.random(n) < extra
            offsets = rng.integers(0, STRIDE, size=(n, 2))
            cut = rng.uniform(0.3, 0.8, n)
            tiny_size = rng.integers(600, TINY_LIMIT, n)
            extra_src = rng.integers(0, n_src, n)
            blank = rng.random(n) < empty_country
            text = geocode(lat, lon)
            todo: list[tuple[str, str, int, int]] = []  # (member name, kind, source, row in chunk)
            for j in range(n):
                i, sr = int(idx[j]), src[s[j]]
                img_id = member_id(1_000_000_000 + (2 * i) * STRIDE + int(offsets[j, 0]))
                t = {"neighbourhood": "", "region": "", **text[j]}
                if blank[j]:
                    t = dict.fromkeys(t, "")
                no_country += not t["country"]
                w.writerow([img_id, author_id(seed, sr["AUTHOR"], int(cyc[j])), f"{lat[j]:.6f}", f"{lon[j]:.6f}",
                            *(sr[k] for k in SCENE), *(t[k] for k in COLUMNS[10:])])
                kinds[str(kind[j])] += 1
                if kind[j] != "missing":
                    todo.append((f"{STEM}/{img_id}", str(kind[j]), int(s[j]), j))
                if has_extra[j]:
                    extra_id = member_id(1_000_000_000 + (2 * i + 1) * STRIDE + int(offsets[j, 1]))
                    todo.append((f"{STEM}/{extra_id}", "extra", int(extra_src[j]), j))
            for name, k, si, j in sorted(todo):  # tar order differs from CSV order, as in the real tar
                data = zf.read(by_name[src[si]["IMG_ID"]])
                if k == "broken":
                    data = data[: max(1, min(len(data) - 2, int(len(data) * cut[j])))]
                elif k == "tiny":
                    data = tiny_jpeg(data, int(tiny_size[j]))
                elif k == "ok" and len(data) < TINY_LIMIT:
                    small_ok += 1
                kinds["extra"] += k == "extra"
                for mb in MIN_BYTES:
                    statuses[mb][expected_status(k, len(data), mb)] += 1
                tar.add(name, data)
                members += 1
    tar.close()
    split.close()
    zf.close()
    for mb in MIN_BYTES:
        statuses[mb]["missing_image"] += kinds["missing"]
    expected = {
        "rows": rows, "ok": kinds["ok"], "broken": kinds["broken"], "tiny": kinds["tiny"], "missing": kinds["missing"],
        "extra": kinds["extra"], "members": members, "small_ok": small_ok, "empty_country": no_country,
        "seed": seed, "tar_bytes": split.total, "part_size": part_size, "parts": [p.name for p in split.parts],
        "ledger_by_status": {f"min_bytes={mb}": dict(sorted(statuses[mb].items())) for mb in MIN_BYTES},
        "notes": "ok/broken/tiny/missing partition rows; extra = tar members with no row; small_ok = intact photos "
                 "under 5120 bytes (IM2GPS3K has a few); ledger_by_status sums to rows + extra.",
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    expected["seconds"] = time.perf_counter() - t0
    return expected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, required=True, help="CSV rows to write")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part-size", type=parse_size, default=None,
                    help="bytes per tar part, e.g. 20M (default: about six parts)")
    ap.add_argument("--jitter-km", type=float, default=5.0, help="largest coordinate jitter")
    ap.add_argument("--broken", type=float, default=0.015, help="share of rows whose JPEG is truncated")
    ap.add_argument("--tiny", type=float, default=0.015, help="share of rows whose photo is a JPEG under 5120 bytes")
    ap.add_argument("--missing", type=float, default=0.01, help="share of rows with no tar member")
    ap.add_argument("--extra", type=float, default=0.01, help="tar members with no row, per row")
    ap.add_argument("--empty-country", type=float, default=0.03, help="share of rows with empty location text")
    ap.add_argument("--zip", type=Path, default=ZIP, help="IM2GPS3K photo zip")
    ap.add_argument("--csv", type=Path, default=CSV, help="IM2GPS3K metadata CSV")
    args = ap.parse_args()
    if args.rows < 1 or args.seed < 0:
        ap.error("--rows must be at least 1 and --seed non-negative")
    if args.broken + args.tiny + args.missing > 1:
        ap.error("--broken + --tiny + --missing must not exceed 1")
    exp = generate(args.rows, args.out, args.seed, args.part_size, args.jitter_km, args.broken, args.tiny, args.missing,
                   args.extra, args.empty_country, args.zip, args.csv)
    print(f"{args.out}: {exp['rows']} rows (ok {exp['ok']}, broken {exp['broken']}, tiny {exp['tiny']}, missing "
          f"{exp['missing']}), {exp['extra']} extra members, {exp['empty_country']} without country; "
          f"{exp['tar_bytes']} tar bytes in {len(exp['parts'])} parts; {exp['seconds']:.1f} s")


if __name__ == "__main__":
    main()
