"""The overview page's HTML: the run (stages, rejects, configuration) and the data (map of the
queries, candidates per source, distance histograms, accuracy, country and continent mix).

Charts are inline SVG in equirectangular or log-km coordinates; nothing is loaded from elsewhere.
"""

from __future__ import annotations

import math
import re
from html import escape
from typing import Any

import numpy as np
import yaml

from ..geo.sphere import THRESHOLD_NAMES, THRESHOLDS_KM
from ..stages.mine.quality import GROUPS
from ..stages.publish.plots import DIST_BINS_KM
from .context import ReportContext
from .datastats import GRID_DEG, NO_COUNTRY, SOURCES, DataStats, PlaceMix

SOURCE_LABELS = {"image": "image neighbours", "gps": "GPS gallery", "negative": "distance bands"}
GROUP_LABELS = {
    "top1_image": "nearest image (top-1)",
    "image": "any image candidate",
    "gps": "any GPS candidate",
    "image+gps": "any image or GPS candidate",
    "all": "any candidate",
}
DENSITY_COLOURS = ("#fcd38d", "#f9a03f", "#ec6b2d", "#c9302c", "#7a1020")
TOP_COUNTRIES = 15
OPEN_REASONS = 6  # up to this many reasons in all, their examples are shown unfolded
_ABS_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/:'\"]+/)+")


def esc(x: Any) -> str:
    return escape(str(x), quote=True)


def fmt_int(n: int | float | None) -> str:
    return "–" if n is None else f"{int(n):,}".replace(",", "\u202f")


def fmt_s(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f}" if s < 100 else f"{s:,.0f}".replace(",", "\u202f")


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def scrub(message: str) -> str:
    """A ledger message with absolute paths cut to their last component."""
    return _ABS_PATH.sub("…/", message)


def _message(example: dict[str, str]) -> str:
    """The ledger message without the id it starts with (shown beside it), paths shortened."""
    msg, name = example["message"], example["id"] or example["key"]
    if name and msg.startswith(f"{name}: "):
        msg = msg[len(name) + 2 :]
    return scrub(msg)


# -- run ----------------------------------------------------------------------------------------
def tiles(ctx: ReportContext) -> str:
    reps = {s.report.stage: s.report for s in ctx.stages}
    stats: DataStats | None = ctx.stats
    items = []
    if "shard" in reps:
        items.append(("photos in", reps["shard"].samples_in, "tile-photos-in"))
        items.append(("sharded", reps["shard"].samples_out, "tile-sharded"))
    if stats is not None:
        items.append(("queries mined", stats.queries, "tile-queries"))
        for s in SOURCES:
            if stats.candidates(s):
                items.append((f"{s} candidates", stats.candidates(s), f"tile-cand-{s}"))
    rejected = sum(sum(s.report.rejects.values()) for s in ctx.stages)
    items.append(("rejected", rejected, "tile-rejected"))
    return "<section class=tiles>" + "".join(
        f'<div class=tile><div class=num id="{i}">{fmt_int(v)}</div><div class=lbl>{esc(label)}</div></div>' for label, v, i in items
    ) + "</section>"


def stage_table(ctx: ReportContext) -> str:
    head = ("stage", "status", "units", "samples in", "samples out", "rejected", "unit s", "wall s")
    rows = []
    few = sum(len(row.report.rejects) for row in ctx.stages) <= OPEN_REASONS
    for row in ctx.stages:
        r = row.report
        rejected = sum(r.rejects.values())
        units = f"{r.units}"
        status = f'<span class="badge {esc(r.status.replace(" ", "-"))}">{esc(r.status)}</span>'
        rows.append(
            f'<tr id="stage-{esc(r.stage)}"><th>{esc(r.stage)}</th><td>{status}</td><td class="n units">{units}</td>'
            f'<td class="n in">{fmt_int(r.samples_in)}</td><td class="n out">{fmt_int(r.samples_out)}</td>'
            f'<td class="n rejected">{fmt_int(rejected)}</td><td class=n>{fmt_s(r.unit_seconds)}</td><td class=n>{fmt_s(row.wall_seconds)}</td></tr>'
        )
        for reason, count in r.rejects.items():
            examples = "".join(
                f'<li><code>{esc(e["id"] or e["key"])}</code> <span class=muted>(unit {esc(e["unit"])})</span> {esc(_message(e))}</li>'
                for e in row.examples.get(reason, [])
            )
            rows.append(
                f'<tr class=reject data-stage="{esc(r.stage)}" data-reason="{esc(reason)}"><td></td><td colspan=7>'
                f'<details{" open" if few else ""}><summary><b>{esc(reason)}</b>: <span class=count>{fmt_int(count)}</span> sample(s)'
                f"</summary><ul>{examples}</ul></details></td></tr>"
            )
    return (
        '<table class="stages"><thead><tr>' + "".join(f"<th{' class=n' if k > 1 else ''}>{h}</th>" for k, h in enumerate(head))
        + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table>"
    )


def run_header(ctx: ReportContext) -> str:
    saved, pipe = ctx.saved, ctx.pipeline
    bits = []
    if pipe.get("name"):
        bits.append(f"pipeline <b>{esc(pipe['name'])}</b>")
    if saved:
        bits.append(f"last <code>geobuild run</code>: <b>{'ok' if saved.get('ok') else 'failed'}</b> in {fmt_s(saved.get('seconds'))} s"
                    f" on the {esc(saved.get('executor', ''))} executor")
    if ctx.gallery_name:
        bits.append(f"candidates mined against the gallery run <b>{esc(ctx.gallery_name)}</b>")
    elif ctx.gallery_recorded:
        bits.append("mined against a gallery run that is not here")
    desc = f"<p class=desc>{esc(pipe['description'])}</p>" if pipe.get("description") else ""
    return desc + (f"<p class=meta>{' · '.join(bits)}</p>" if bits else "")


def config_block(ctx: ReportContext) -> str:
    text = yaml.safe_dump(ctx.config, sort_keys=False, allow_unicode=True) if ctx.config else "(no config.yaml)\n"
    return f"<details class=config><summary>resolved configuration (local paths shortened)</summary><pre>{esc(text)}</pre></details>"


# -- data ---------------------------------------------------------------------------------------
def _lat_range(grid: np.ndarray) -> tuple[float, float]:
    rows = np.flatnonzero(grid.sum(axis=1))
    south = 90 - (rows.max() + 1) * GRID_DEG if rows.size else -58.0
    return 84.0, -90.0 if south < -58 else -58.0


def density_legend(edges: list[int]) -> str:
    parts = []
    for k, colour in enumerate(DENSITY_COLOURS[: len(edges) - 1]):
        lo, hi = edges[k], edges[k + 1] - 1
        label = f"{lo}" if lo == hi else f"{lo}–{hi}"
        parts.append(f'<span><i style="background:{colour}"></i>{label}</span>')
    return f'<div class=legend>queries per {GRID_DEG:g}° cell: {"".join(parts)}</div>'


def density_map(stats: DataStats, land: str) -> str:
    """The queries as a density of 1° cells over the land outline."""
    grid = stats.density
    top, bottom = _lat_range(grid)
    vmax = int(grid.max()) if grid.size else 0
    edges = sorted({1, *(int(round(x)) for x in np.geomspace(1, vmax + 1, len(DENSITY_COLOURS) + 1)[1:])}) if vmax else [1, 2]
    if edges[-1] <= vmax:
        edges.append(vmax + 1)
    cells = []
    for i, j in zip(*np.nonzero(grid)):
        c = int(grid[i, j])
        k = min(int(np.searchsorted(edges, c, side="right")) - 1, len(DENSITY_COLOURS) - 1)
        x, y = -180 + j * GRID_DEG, -90 + i * GRID_DEG
        cells.append(f'<rect x="{x:g}" y="{y:g}" width="{GRID_DEG:g}" height="{GRID_DEG:g}" fill="{DENSITY_COLOURS[k]}"><title>{c}</title></rect>')
    grat = "".join(f'<line x1="{x}" y1="{-top}" x2="{x}" y2="{-bottom}"/>' for x in range(-150, 180, 30))
    grat += "".join(f'<line x1="-180" y1="{-y}" x2="180" y2="{-y}"/>' for y in range(-60, 90, 30) if bottom < y < top)
    h = top - bottom
    return (
        f'<svg class=worldmap id=density-map viewBox="-180 {-top:g} 360 {h:g}" preserveAspectRatio="xMidYMid meet" role=img '
        f'aria-label="density of query locations">'
        f'<rect class=sea x="-180" y="{-top:g}" width="360" height="{h:g}"/><g class=grat>{grat}</g>'
        f'<path class=land d="{land}"/><g class=cells>{"".join(cells)}</g></svg>' + density_legend(edges)
    )


def _bars(values: list[tuple[str, float, str]], scale: float = 1.0) -> str:
    """Table cells with a bar of length value / scale behind the text."""
    return "".join(
        f'<td class=barcell><div class=bar style="width:{max(0.0, min(1.0, v / scale)) * 100:.1f}%"></div><span>{text}</span></td>'
        for _, v, text in values
    )


def per_source_table(stats: DataStats) -> str:
    rows = []
    for s in SOURCES:
        c = stats.per_query[s]
        total = stats.candidates(s)
        if not total:
            continue
        counts = sorted(c)
        with_any = sum(v for k, v in c.items() if k > 0)
        mean = total / stats.queries if stats.queries else 0.0
        rows.append(
            f'<tr id="per-query-{s}"><th><i class="dot {s}"></i>{esc(SOURCE_LABELS[s])}</th><td class="n total">{fmt_int(total)}</td>'
            f"<td class=n>{fmt_int(with_any)}</td><td class=n>{counts[0]}</td><td class=n>{mean:.1f}</td><td class=n>{counts[-1]}</td></tr>"
        )
    return (
        "<table class=numbers><thead><tr><th>source</th><th class=n>candidates</th><th class=n>queries with any</th><th class=n>min</th>"
        "<th class=n>mean</th><th class=n>max</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table><p class=note>per query: min, mean and max number of candidates of each source</p>"
    )


def accuracy_table(stats: DataStats) -> str:
    acc = stats.accuracy()
    if not acc:
        return "<p class=note>no queries</p>"
    head = "".join(f"<th>{t:g} km<br><small>{n}</small></th>" for t, n in zip(THRESHOLDS_KM, THRESHOLD_NAMES))
    rows = []
    for g in ("top1_image", *GROUPS):
        members = GROUPS.get(g, ("image",))
        if not any(stats.candidates(s) for s in members):
            continue
        vals = [(f"{t:g}", v, pct(v)) for t, v in zip(THRESHOLDS_KM, acc[g])]
        rows.append(f'<tr id="acc-{esc(g)}"><th>{esc(GROUP_LABELS[g])}</th>{_bars(vals)}</tr>')
    return (
        f'<table class="numbers acc"><thead><tr><th>share of the {fmt_int(stats.recall_n)} queries with …</th>{head}</tr></thead>'
        f'<tbody>{"".join(rows)}</tbody></table><p class=note>"any … candidate" is the oracle: the accuracy a perfect ranker '
        "could reach with those candidates; the nearest image is what retrieval alone gets (strictly closer than the threshold to "
        "the query's true position).</p>"
    )


def histogram_svg(stats: DataStats, source: str) -> str:
    """Candidate distances of one source on a log km axis, with the benchmark thresholds."""
    hist = stats.hist[source]
    w, h, pad_l, pad_b, pad_t = 520.0, 190.0, 44.0, 26.0, 14.0
    lo, hi = math.log10(DIST_BINS_KM[0]), math.log10(DIST_BINS_KM[-1])
    x = lambda km: pad_l + (math.log10(km) - lo) / (hi - lo) * (w - pad_l - 6)  # noqa: E731
    ymax = max(int(hist.counts.max()), 1)
    y = lambda c: h - pad_b - (c / ymax) * (h - pad_b - pad_t)  # noqa: E731
    bars = "".join(
        f'<rect x="{x(a):.1f}" y="{y(c):.1f}" width="{max(x(b) - x(a) - 0.6, 0.5):.1f}" height="{h - pad_b - y(c):.1f}">'
        f"<title>{a:.3g}–{b:.3g} km: {c}</title></rect>"
        for a, b, c in zip(DIST_BINS_KM[:-1], DIST_BINS_KM[1:], hist.counts) if c
    )
    ticks = "".join(
        f'<line class=tick x1="{x(t):.1f}" y1="{h - pad_b}" x2="{x(t):.1f}" y2="{h - pad_b + 4}"/>'
        f'<text class=ticklbl x="{x(t):.1f}" y="{h - pad_b + 15}">{label}</text>'
        for t, label in ((0.01, "10 m"), (0.1, "100 m"), (1, "1"), (10, "10"), (100, "100"), (1000, "1000"), (10000, "10000 km"))
    )
    thr = "".join(
        f'<line class=thr x1="{x(t):.1f}" y1="{pad_t - 4}" x2="{x(t):.1f}" y2="{h - pad_b}"/>'
        f'<text class=thrlbl x="{x(t) + 3:.1f}" y="{pad_t + 4 + 11 * (k % 2)}">{t:g} km</text>' for k, t in enumerate(THRESHOLDS_KM)
    )
    axis = (f'<line class=axis x1="{pad_l}" y1="{h - pad_b}" x2="{w - 4}" y2="{h - pad_b}"/>'
            f'<text class=ticklbl x="{pad_l - 6}" y="{pad_t + 4}" text-anchor=end>{ymax}</text>'
            f'<text class=ticklbl x="{pad_l - 6}" y="{h - pad_b}" text-anchor=end>0</text>')
    n = stats.candidates(source)
    within = "".join(f"<span><b>{pct(k / n) if n else '–'}</b> &lt; {t:g} km</span>" for t, k in zip(THRESHOLDS_KM, stats.within[source]))
    return (
        f'<div class=hist id="hist-{source}"><h4><i class="dot {source}"></i>{esc(SOURCE_LABELS[source])} '
        f'<span class=muted>({fmt_int(n)} candidates)</span></h4>'
        f'<svg viewBox="0 0 {w:g} {h:g}" class="histsvg {source}" role=img aria-label="distance histogram">{axis}{bars}{thr}{ticks}</svg>'
        f"<div class=within>{within}</div></div>"
    )


def mix_table(title: str, queries: PlaceMix, gallery: PlaceMix | None, attr: str, top: int | None) -> str:
    qc: dict[str, int] = getattr(queries, attr)
    gc: dict[str, int] = getattr(gallery, attr) if gallery is not None else {}
    names = sorted(set(qc) | set(gc), key=lambda k: (-(qc.get(k, 0)), -(gc.get(k, 0)), k))
    shown = names[:top] if top else names
    rest = names[len(shown) :]
    cols = [("queries", qc, queries.n)] + ([("gallery", gc, gallery.n)] if gallery is not None else [])
    head = "".join(f"<th>{c} <small>({fmt_int(n)})</small></th>" for c, _, n in cols)
    scale = max([cnt.get(k, 0) / n for _, cnt, n in cols if n for k in shown] or [1.0]) or 1.0
    rows = []
    for name in shown:
        vals = [(c, cnt.get(name, 0) / n if n else 0.0, f"{fmt_int(cnt.get(name, 0))} · {pct(cnt.get(name, 0) / n) if n else '–'}")
                for c, cnt, n in cols]
        cls = " class=none" if name == NO_COUNTRY else ""
        rows.append(f"<tr{cls}><th>{esc(name)}</th>{_bars(vals, scale)}</tr>")
    if rest:
        vals = []
        for c, cnt, n in cols:
            k = sum(cnt.get(r, 0) for r in rest)
            vals.append((c, k / n if n else 0.0, f"{fmt_int(k)} · {pct(k / n) if n else '–'}"))
        rows.append(f"<tr class=rest><th>{len(rest)} more</th>{_bars(vals, scale)}</tr>")
    return f'<table class="numbers mix" id="mix-{attr}"><thead><tr><th>{esc(title)}</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def data_section(ctx: ReportContext, land: str) -> str:
    stats: DataStats | None = ctx.stats
    if stats is None:
        return "<section id=data><h2>Data</h2><p class=note>No mined candidates in this run yet (run the mine stage).</p></section>"
    gallery: PlaceMix | None = ctx.gallery_mix
    gname = "the gallery" + (f" ({esc(ctx.gallery_name)})" if ctx.gallery_name else " (this run's own photos)")
    hists = "".join(histogram_svg(stats, s) for s in SOURCES if stats.candidates(s))
    return (
        "<section id=data><h2>Data</h2>"
        f'<div class=card><h3>Where the <span id=map-queries>{fmt_int(stats.queries)}</span> queries are</h3>{density_map(stats, land)}</div>'
        f"<div class=\"grid2 wide-right\"><div class=card><h3>Candidates per query, by source</h3>{per_source_table(stats)}</div>"
        f"<div class=card><h3>Accuracy of the mined candidates</h3>{accuracy_table(stats)}</div></div>"
        f'<div class=card><h3>Distance from each candidate to its query\'s true position</h3>'
        f'<p class=note>log scale; dashed lines: the 1 / 25 / 200 / 750 / 2500 km thresholds (street, city, region, country, '
        f"continent)</p><div class=hists>{hists}</div></div>"
        f"<div class=card><h3>Continent and country mix of the queries and of {gname}</h3><p class=note>reverse-geocoded from the "
        f"coordinates with the bundled GeoNames towns</p><div class=grid2>"
        f'{mix_table("continent", stats.places, gallery, "continents", None)}'
        f'{mix_table(f"country (top {TOP_COUNTRIES})", stats.places, gallery, "countries", TOP_COUNTRIES)}</div></div>'
        "</section>"
    )


def overview_body(ctx: ReportContext, land: str) -> str:
    sampled = len(ctx.records)
    browse = (f'<p class=browse><a href=queries.html>Browse {fmt_int(sampled)} sampled queries with their candidates ›</a></p>'
              if sampled else "")
    return (
        f"<h1>{esc(ctx.run_name)}</h1>{run_header(ctx)}{tiles(ctx)}{browse}"
        f"<section id=run><h2>Run</h2><div class=card>{stage_table(ctx)}{config_block(ctx)}</div></section>"
        f"{data_section(ctx, land)}"
    )
