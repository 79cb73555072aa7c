/* geobuild report: the query browser (search, pages, one query with its candidates and maps) and a
   check that every picture on the page loaded. Data comes from data/*.js (script tags, so the pages
   also open straight from the file system); nothing is fetched from anywhere else. */
(function () {
  "use strict";
  var GB = window.GB || {};
  var THRESHOLDS = [1, 25, 200, 750, 2500];

  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function km(d) {
    if (d == null) return "–";
    if (d < 1) return Math.round(d * 1000) + " m";
    if (d < 100) return d.toFixed(1) + " km";
    return Math.round(d).toLocaleString("en-US") + " km";
  }
  function band(d) {
    if (d == null) return 5;
    for (var i = 0; i < THRESHOLDS.length; i++) if (d < THRESHOLDS[i]) return i;
    return 5;
  }
  function kmBadge(d) { return '<span class="kmb k' + band(d) + '">' + km(d) + "</span>"; }

  /* every <img> on the page: count loaded and broken ones once all have settled (body data-*) */
  function checkImages() {
    var imgs = Array.prototype.slice.call(document.images), left = imgs.length, broken = 0;
    document.body.removeAttribute("data-images-ready");
    function done() {
      document.body.setAttribute("data-images", String(imgs.length));
      document.body.setAttribute("data-images-broken", String(broken));
      document.body.setAttribute("data-images-ready", "1");
    }
    if (!left) return done();
    imgs.forEach(function (img) {
      function settle() {
        if (!(img.naturalWidth > 0)) { broken++; img.classList.add("broken"); }
        if (--left === 0) done();
      }
      if (img.complete) settle();
      else { img.addEventListener("load", settle); img.addEventListener("error", settle); }
    });
  }

  var list = document.getElementById("list");
  if (!list || !GB.meta) { checkImages(); return; }

  var meta = GB.meta, F = meta.fields, C = meta.candidate_fields;
  var rows = GB.index.map(function (r, i) {
    var o = { pos: i };
    F.forEach(function (f, k) { o[f] = r[k]; });
    o.hay = [o.key, o.id, o.city, o.state, o.country, o.continent].join(" ").toLowerCase();
    return o;
  });
  var byKey = {};
  rows.forEach(function (r) { byKey[r.key] = r; });
  var search = document.getElementById("search"), count = document.getElementById("query-count");
  var detail = document.getElementById("detail"), toolbar = document.querySelector(".toolbar");
  var prev = document.getElementById("prev"), next = document.getElementById("next"), pageLabel = document.getElementById("page-label");
  var state = { page: 0, q: "" };
  var shown = rows;

  function parseHash() {
    var h = decodeURIComponent(location.hash.replace(/^#/, "")), out = {};
    h.split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) out[kv.slice(0, i)] = kv.slice(i + 1);
    });
    return out;
  }
  function setHash(o) {
    var parts = [];
    Object.keys(o).forEach(function (k) { if (o[k] !== "" && o[k] != null) parts.push(k + "=" + encodeURIComponent(o[k])); });
    location.hash = parts.join("&");
  }

  function loadPage(p, cb) {
    GB.pages = GB.pages || {};
    if (GB.pages[p]) return cb(GB.pages[p]);
    var s = document.createElement("script");
    s.src = "data/page-" + ("000" + p).slice(-4) + ".js";
    s.onload = function () { cb(GB.pages[p] || []); };
    s.onerror = function () { cb(null); };
    document.body.appendChild(s);
  }

  function photoTag(src, cls) {
    return src ? '<img class="' + cls + '" src="' + esc(src) + '" alt="" loading="eager">'
               : '<div class="' + cls + ' nophoto">no photo</div>';
  }
  function placeOf(r) { return [r.city, r.country].filter(Boolean).join(", ") || "(no place)"; }

  function renderList() {
    detail.hidden = true; detail.innerHTML = ""; list.hidden = false; toolbar.hidden = false;
    var q = state.q.trim().toLowerCase();
    shown = q ? rows.filter(function (r) { return r.hay.indexOf(q) >= 0; }) : rows;
    var pages = Math.max(1, Math.ceil(shown.length / meta.page_size));
    state.page = Math.min(Math.max(0, state.page), pages - 1);
    var slice = shown.slice(state.page * meta.page_size, (state.page + 1) * meta.page_size);
    count.innerHTML = '<b id="shown-count">' + shown.length + "</b> of <b id=sample-count>" + rows.length +
      "</b> sampled queries (of " + meta.queries.toLocaleString("en-US") + " mined, seed " + meta.seed + ")";
    pageLabel.textContent = "page " + (state.page + 1) + " / " + pages;
    prev.disabled = state.page === 0; next.disabled = state.page >= pages - 1;
    list.innerHTML = slice.map(function (r) {
      return '<a class="qcard" href="#q=' + encodeURIComponent(r.key) + '" data-key="' + esc(r.key) + '">' + photoTag(r.photo, "ph") +
        '<div class="body"><div class="pl">' + esc(placeOf(r)) + '</div><div class="id">' + esc(r.id) + "</div>" +
        '<div class="km">nearest image ' + kmBadge(r.top1_km) + "</div></div></a>";
    }).join("");
    checkImages();
  }

  /* equirectangular SVG: x = lon, y = -lat; the land outline from assets/world.js */
  function mapSvg(view, q, cands, cls) {
    var w = view[2], r = w / 150;
    var pts = cands.map(function (c) {
      if (c.lat == null || c.lon == null) return "";
      var t = '<title>' + esc(c.source + " #" + c.rank + " · " + km(c.km)) + "</title>";
      if (c.source === "gps") {
        return '<rect class="pt gps" x="' + (c.lon - r * 0.8) + '" y="' + (-c.lat - r * 0.8) + '" width="' + r * 1.6 + '" height="' + r * 1.6 + '">' + t + "</rect>";
      }
      return '<circle class="pt ' + esc(c.source) + '" cx="' + c.lon + '" cy="' + -c.lat + '" r="' + r + '">' + t + "</circle>";
    }).join("");
    var star = '<circle class="pt query" cx="' + q.lon + '" cy="' + -q.lat + '" r="' + r * 1.5 + '"><title>true position</title></circle>';
    var grat = "";
    for (var x = -150; x < 180; x += 30) grat += '<line x1="' + x + '" y1="-90" x2="' + x + '" y2="90"/>';
    for (var y = -60; y <= 60; y += 30) grat += '<line x1="-180" y1="' + y + '" x2="180" y2="' + y + '"/>';
    return '<svg class="' + cls + '" viewBox="' + view.join(" ") + '" preserveAspectRatio="xMidYMid slice">' +
      '<rect class="sea" x="-360" y="-180" width="720" height="360"/><g class="grat">' + grat + "</g>" +
      '<path class="land" d="' + (GB.land || "") + '"/>' + pts + star + "</svg>";
  }

  function renderDetail(key) {
    var r = byKey[key];
    if (!r) { state.q = ""; return renderList(); }
    list.hidden = true; toolbar.hidden = true; detail.hidden = false;
    detail.innerHTML = '<p class="muted">loading…</p>';
    var page = Math.floor(r.pos / meta.page_size);
    loadPage(page, function (recs) {
      var rec = (recs || []).filter(function (x) { return x.key === key; })[0];
      if (!rec) { detail.innerHTML = '<p class="note">data/page-' + page + ".js is missing from this folder</p>"; return; }
      var cands = rec.candidates.map(function (a) { var o = {}; C.forEach(function (f, k) { o[f] = a[k]; }); return o; });
      var n = { image: 0, gps: 0, negative: 0 };
      cands.forEach(function (c) { n[c.source] = (n[c.source] || 0) + 1; });
      var i = shown.indexOf(r), before = i > 0 ? shown[i - 1] : null, after = i >= 0 && i < shown.length - 1 ? shown[i + 1] : null;
      var nav = '<span class="nav">' +
        (before ? '<a href="#q=' + encodeURIComponent(before.key) + '">‹ previous</a>' : "") +
        (after ? '<a href="#q=' + encodeURIComponent(after.key) + '">next ›</a>' : "") + "</span>";
      var zoom = [rec.lon - 16, -rec.lat - 8, 32, 16];
      function row(label, text, raw) { return "<dt>" + label + "</dt><dd>" + (raw ? text : esc(text)) + "</dd>"; }
      var info = row("true position", rec.lat.toFixed(5) + ", " + rec.lon.toFixed(5)) +
        row("place", rec.place || "–") +
        row("country", [rec.country, rec.continent].filter(Boolean).join(" · ") || "–") +
        row("author", rec.author || "–") +
        row("candidates", '<span id="cand-count">' + cands.length + "</span> (" + n.image + " image, " + n.gps + " GPS" +
            (n.negative ? ", " + n.negative + " band" : "") + ")", true) +
        row("nearest image", kmBadge(rec.top1_km) + ' <span class="muted">top-1 of the image search</span>', true) +
        row("closest image", kmBadge(rec.best_km) + ' <span class="muted">best of the image candidates</span>', true);
      var html = '<div class="qhead"><a href="#' + (state.q ? "s=" + encodeURIComponent(state.q) + "&" : "") + "p=" + state.page +
        '">‹ all queries</a><h2 id="detail-id">' + esc(rec.id) + "</h2>" + nav + "</div>" +
        '<div class="qtop"><figure class="qphoto">' + photoTag(rec.photo, "big") + "</figure>" +
        '<div><div class="qmaps"><figure>' + mapSvg([-180, -84, 360, 144], rec, cands, "world") + "<figcaption>world</figcaption></figure>" +
        "<figure>" + mapSvg(zoom, rec, cands, "zoom") + "<figcaption>around the true position (±16° lon, ±8° lat)</figcaption></figure>" +
        '<div class="legend"><span><i class="dot query"></i>true position</span><span><i class="dot image"></i>image candidate</span>' +
        '<span><i class="dot gps" style="border-radius:1px"></i>GPS candidate</span>' + (n.negative ? '<span><i class="dot negative"></i>band point</span>' : "") +
        "</div></div>" + '<div class="qinfo"><dl>' + info + "</dl></div>" +
        '<div class="scale">distance to the truth: ' + ["&lt; 1 km", "&lt; 25 km", "&lt; 200 km", "&lt; 750 km", "&lt; 2500 km", "farther"].map(function (t, k) {
          return '<span class="kmb k' + k + '">' + t + "</span>";
        }).join("") + "</div></div></div>" +
        '<table class="cands"><thead><tr><th>#</th><th>photo</th><th>source</th><th>rank</th><th>score</th><th>place</th><th>id</th><th style="text-align:right">distance to truth</th></tr></thead><tbody>' +
        cands.map(function (c, k) {
          var thumb = c.source === "image" ? photoTag(c.thumb, "t") : '<div class="nophoto"></div>';
          return '<tr class="cand ' + esc(c.source) + '"><td class="n">' + (k + 1) + '</td><td class="th">' + thumb + "</td>" +
            '<td><span class="src ' + esc(c.source) + '">' + esc(c.source) + '</span></td><td class="n">' + c.rank + "</td>" +
            '<td class="n">' + (c.score == null ? "–" : c.score.toFixed(3)) + "</td><td>" + esc(c.place || "–") + "</td>" +
            '<td class="muted" style="font-size:.8rem;word-break:break-all">' + esc(c.id) + '</td><td class="n">' + kmBadge(c.km) + "</td></tr>";
        }).join("") + "</tbody></table>";
      detail.innerHTML = html;
      detail.setAttribute("data-key", rec.key);
      document.title = rec.id + " · geobuild report";
      checkImages();
    });
  }

  function route() {
    var h = parseHash();
    if (h.q) return renderDetail(h.q);
    state.q = h.s || "";
    state.page = parseInt(h.p || "0", 10) || 0;
    if (search.value !== state.q) search.value = state.q;
    renderList();
  }

  search.addEventListener("input", function () { setHash({ s: search.value, p: 0 }); });
  prev.addEventListener("click", function () { setHash({ s: state.q, p: state.page - 1 }); });
  next.addEventListener("click", function () { setHash({ s: state.q, p: state.page + 1 }); });
  window.addEventListener("hashchange", route);
  route();
})();
