"""Write the report's files: ``index.html`` (the run and the data), ``queries.html`` (the query
browser), ``assets/`` (CSS, JS, the land outline) and ``data/`` (the search index and one script
per page of queries). Scripts, not JSON files, so that the pages also open from the file system."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .. import __version__
from .context import ReportContext
from .overview import esc, overview_body
from .sample import CANDIDATE_FIELDS, INDEX_FIELDS, index_rows
from .worldmap import land_path

ASSETS = Path(__file__).resolve().parent / "assets"


def js_data(target: str, value: Any) -> str:
    """A script that stores ``value`` (JSON) as ``GB.<target>`` (e.g. ``land``, ``pages[3]``)."""
    payload = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return f"window.GB=window.GB||{{}};GB.pages=GB.pages||{{}};GB.{target}={payload};\n"


def page(title: str, active: str, run_name: str, body: str, scripts: list[str]) -> str:
    """One HTML page: the header with the two pages' links, ``body``, then ``scripts``."""
    nav = "".join(
        f'<a href="{href}"{" class=on" if key == active else ""}>{label}</a>'
        for key, href, label in (("overview", "index.html", "Overview"), ("queries", "queries.html", "Queries"))
    )
    tags = "".join(f'<script src="{s}"></script>' for s in scripts)
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><link rel=stylesheet href=assets/report.css></head>\n"
        f'<body class="{active}"><header class=top><div class=brand>geobuild <span>report</span></div><nav>{nav}</nav>'
        f'<div class=runname>run <b>{esc(run_name)}</b></div></header>\n<main>{body}</main>\n'
        f"<footer>geobuild {esc(__version__)} · a static report: every file it uses is in this folder</footer>\n{tags}</body></html>\n"
    )


QUERIES_BODY = """
<div class=toolbar>
  <input id=search type=search placeholder="Search id, city, country or continent" autocomplete=off>
  <span id=query-count class=muted></span>
  <span class=pager><button id=prev type=button>‹ prev</button><span id=page-label></span><button id=next type=button>next ›</button></span>
</div>
<div id=list class=cards></div>
<div id=detail hidden></div>
<noscript><p class=note>The query browser needs JavaScript.</p></noscript>
"""


def write_site(folder: Path, ctx: ReportContext) -> None:
    """All files of the report into ``folder`` (which exists and is empty but for photos)."""
    assets = folder / "assets"
    assets.mkdir(exist_ok=True)
    for name in ("report.css", "report.js"):
        shutil.copyfile(ASSETS / name, assets / name)
    land = land_path() if ctx.stats else ""  # no queries, no maps
    (assets / "world.js").write_text(js_data("land", land), encoding="utf-8")
    data = folder / "data"
    data.mkdir(exist_ok=True)
    size, records = ctx.page_size, ctx.records
    meta = {
        "fields": list(INDEX_FIELDS), "candidate_fields": list(CANDIDATE_FIELDS), "page_size": size,
        "pages": (len(records) + size - 1) // size, "queries": ctx.stats.queries if ctx.stats else 0, "seed": ctx.seed,
        "gallery": ctx.gallery_name,
    }
    (data / "queries.js").write_text(js_data("meta", meta) + js_data("index", index_rows(records)), encoding="utf-8")
    for p in range(meta["pages"]):
        (data / f"page-{p:04d}.js").write_text(js_data(f"pages[{p}]", records[p * size : (p + 1) * size]), encoding="utf-8")
    title = f"geobuild report: {ctx.run_name}"
    (folder / "index.html").write_text(page(title, "overview", ctx.run_name, overview_body(ctx, land), ["assets/report.js"]), encoding="utf-8")
    (folder / "queries.html").write_text(
        page(f"{title} (queries)", "queries", ctx.run_name, QUERIES_BODY, ["assets/world.js", "data/queries.js", "assets/report.js"]),
        encoding="utf-8",
    )
