"""`review.html`: one self-contained page per run to review the flagged labels by keyboard.

The page walks the flagged examples (`label_issues.csv`'s `flagged`), up to `REVIEW_LIMIT` of
them, most suspicious first within each suggested class and the classes in turn
(`review_order`): the image (or the row of feature values), the given and the suggested
label and the model's most probable classes. One key each:

    k / Enter   keep the given label         a   take the suggested label
    0-9         that class (with more than 10 classes: type its number, Enter if it could go on)
    s / →       skip                         b / ← / Backspace   back

Decisions are kept in the browser's `localStorage` under a key of the run (its directory's name
and a fingerprint of the examples), so closing and reopening the page loses nothing; the
button "Download corrections.csv" (or `d`) saves them: `id, given_label, reviewed_label,
decision, suggested_label, rank, score, given_class, reviewed_class`, which
`python -m gdw_tf.train ... --corrections=corrections.csv` reads (`gdw_tf.data.corrections`).

Everything the page shows comes from one JSON block; labels, class names and ids are user data,
inserted as text only (never as HTML), and the JSON cannot close its `<script>` element.
Images are inline PNG (`gdw_tf.labels.report.png_data_uri`); no network, no server.
"""

import hashlib
import html
import json
import math
import re

import numpy as np

from gdw_tf.labels import report

REVIEW_LIMIT = 2000  # flagged examples on the page, most suspicious first
IMAGE_BUDGET = 40_000_000  # bytes of inline images at most; examples beyond are left out
_IMAGE_PIXELS = 160  # longest side of an image on the page (larger ones are subsampled)
_FEATURES_SHOWN = 64  # values of a feature row shown


def render_review(issues, *, run_name="run", images=None, limit=REVIEW_LIMIT):
    """The review page of a run, as a string (`gdw_tf.runs.run_dir.write_review` writes a run's).

    Args:
      issues: the run's `gdw_tf.labels.label_issues.LabelIssues` (with `top_classes`).
      run_name: titles the page and keys the decisions stored in the browser.
      images: optional training inputs in the order the issues were computed from
        (`issues.position` indexes them): uint8 images `[N, H, W, C]` are shown as images,
        anything else `[N, ...]` as rows of values.
      limit: at most this many flagged examples, the most suspicious.
    """
    data = review_data(issues, images=images, run_name=run_name, limit=limit)
    payload = (
        json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    values = {
        "title": html.escape(f"gdw_tf review: {run_name}"),
        "style": _STYLE,
        "script": _SCRIPT,
        "data": payload,
    }
    # One pass: what is inserted is not searched again.
    return re.sub(r"\{(title|style|script|data)\}", lambda m: values[m.group(1)], _PAGE)


def review_data(issues, *, images=None, run_name="run", limit=REVIEW_LIMIT):
    """The page's JSON: the run, the classes and the flagged examples to review (in
    `review_order`).

    Each item: `rank`, `id` (text), `given`, `suggested`, `score`, `top` (pairs of class and
    probability), and `image` (a PNG data URI) or `row` (feature values).
    """
    names = (
        [str(name) for name in issues.class_names]
        if issues.class_names is not None
        else [str(k) for k in range(issues.num_classes)]
    )
    flagged = review_order(issues)[:limit]
    is_image = images is not None and report._is_image_array(images)
    items, image_bytes = [], 0
    for i in flagged:
        item = {
            "rank": int(issues.rank[i]),
            "id": _text(issues.id[i]),
            "given": int(issues.given_label[i]),
            "suggested": int(issues.suggested_label[i]),
            "score": round(float(issues.score[i]), 4),
            "top": _top(issues, i),
        }
        if is_image:
            uri = report.png_data_uri(_shrink(images[issues.position[i]]))
            image_bytes += len(uri)
            if image_bytes > IMAGE_BUDGET:
                break
            item["image"] = uri
        elif images is not None:
            values = np.asarray(images[issues.position[i]]).reshape(-1)
            item["row"] = [_value(v) for v in values[:_FEATURES_SHOWN]]
            item["more"] = int(max(len(values) - _FEATURES_SHOWN, 0))
        items.append(item)
    fingerprint = hashlib.sha256(
        json.dumps([[it["id"], it["given"], it["score"]] for it in items]).encode()
    ).hexdigest()[:16]
    return {
        "run": run_name,
        "key": f"gdw_tf.review/{run_name}/{fingerprint}",
        "classes": names,
        "num_examples": len(issues),
        "num_flagged": issues.num_flagged,
        "items": items,
    }


def review_order(issues):
    """Positions (in `issues`' ranked order) of the flagged examples in the order of review.

    In rounds: the most suspicious flagged example of each suggested class, then the second
    most suspicious of each, and so on; within a round, most suspicious first. Any prefix of
    the review is thus spread over the classes as evenly as the flags allow, which is what
    lets the reviewed examples join the class-balanced trusted set
    (`gdw_tf.data.corrections`); in score order alone the first hundreds are mostly of the
    one or two classes the model is surest of.
    """
    flagged = np.flatnonzero(issues.flagged)  # ranked: most suspicious first
    suggested = issues.suggested_label[flagged]
    round_of = np.zeros(len(flagged), np.int64)
    for k in np.unique(suggested):
        members = suggested == k
        round_of[members] = np.arange(int(members.sum()))
    return flagged[np.lexsort((np.arange(len(flagged)), round_of))]


def _top(issues, i):
    if issues.top_classes is None:
        pairs = [(issues.suggested_label[i], issues.suggested_probability[i])]
        if issues.given_label[i] != issues.suggested_label[i]:
            pairs.append((issues.given_label[i], issues.given_probability[i]))
    else:
        pairs = zip(issues.top_classes[i], issues.top_probabilities[i])
    return [[int(k), round(float(p), 4)] for k, p in pairs]


def _shrink(image):
    """A uint8 image subsampled to at most `_IMAGE_PIXELS` on its longest side."""
    image = np.asarray(image)
    step = math.ceil(max(image.shape[:2]) / _IMAGE_PIXELS)
    return image[::step, ::step] if step > 1 else image


def _value(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return float(f"{number:.4g}") if math.isfinite(number) else str(number)


def _text(value):
    return str(value.item() if hasattr(value, "item") else value)


_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 12px 24px; color: #222; }
h1 { font-size: 20px; margin: 4px 0 8px; }
#bar { display: flex; align-items: center; gap: 16px; flex-wrap: wrap; }
#progress { flex: 1; min-width: 260px; }
#meter { height: 8px; background: #eee; border-radius: 4px; overflow: hidden; margin-top: 4px; }
#meter div { height: 100%; background: #3465a4; width: 0; }
button { font: inherit; padding: 5px 12px; border: 1px solid #bbb; border-radius: 5px;
         background: #f6f6f6; cursor: pointer; }
button:hover { background: #e8eef8; }
#main { display: flex; gap: 28px; margin-top: 14px; align-items: flex-start; flex-wrap: wrap; }
#view { width: 300px; min-height: 300px; background: #f4f5f7; border-radius: 8px;
        display: flex; align-items: center; justify-content: center; }
#view img { width: 280px; height: 280px; object-fit: contain; image-rendering: pixelated; }
#view table { font-size: 12px; border-collapse: collapse; margin: 8px; }
#view td { padding: 1px 6px; border-bottom: 1px solid #e4e4e4; }
#info { flex: 1; min-width: 360px; }
.meta { color: #555; font-size: 13px; word-break: break-all; }
.labels { display: flex; gap: 14px; margin: 10px 0; }
.label { padding: 8px 12px; border-radius: 6px; background: #f4f5f7; min-width: 150px; }
.label .what { font-size: 12px; color: #666; } .label .name { font-size: 18px; font-weight: 600; }
.given .name { color: #cc0000; } .suggested .name { color: #2c7a2c; }
.choice { outline: 3px solid #3465a4; }
.top { display: grid; grid-template-columns: 150px 1fr 56px; gap: 3px 8px; align-items: center;
       font-size: 13px; margin: 6px 0 12px; }
.top .p { height: 12px; background: #9fb6d9; border-radius: 2px; }
#classes { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 8px; }
#classes button { font-size: 13px; padding: 3px 8px; }
#classes button.given { border-color: #cc0000; }
#classes button.suggested { border-color: #2c7a2c; }
#classes button.picked { background: #3465a4; color: #fff; }
#decision { margin-top: 10px; font-weight: 600; min-height: 1.4em; }
#keys { font-size: 12px; color: #555; margin-top: 14px; }
kbd { border: 1px solid #bbb; border-bottom-width: 2px; border-radius: 3px; padding: 0 4px;
      font-size: 11px; background: #fafafa; }
#buffer { color: #3465a4; font-weight: 600; }
#done { display: none; padding: 16px; background: #eef6ee; border-radius: 8px; margin-top: 14px; }
"""

_SCRIPT = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("review-data").textContent);
const ITEMS = DATA.items, CLASSES = DATA.classes, C = CLASSES.length;
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}
function load() {
  try { return JSON.parse(localStorage.getItem(DATA.key)) || {}; } catch (e) { return {}; }
}
let store = load();
if (!store.decisions) store = { decisions: {}, position: 0 };
let position = Math.min(store.position || 0, Math.max(ITEMS.length - 1, 0));
let buffer = "", last = "";
function describe(decision) {
  return decision === "keep" ? "kept the given label"
    : decision === "suggested" ? "took the suggestion" : "another class";
}
function save() {
  store.position = position;
  try { localStorage.setItem(DATA.key, JSON.stringify(store)); }
  catch (e) { $("decision").textContent = "Could not save in this browser: " + e; }
}
function className(k) { return CLASSES[k] === String(k) ? String(k) : k + " " + CLASSES[k]; }
function counts() {
  let reviewed = 0, changed = 0, skipped = 0;
  for (const item of ITEMS) {
    const d = store.decisions[item.id];
    if (!d) continue;
    if (d.decision === "skip") { skipped++; continue; }
    reviewed++;
    if (d.label !== item.given) changed++;
  }
  return { reviewed, changed, skipped };
}
function decide(label, decision) {
  const item = ITEMS[position];
  if (!item) return;
  store.decisions[item.id] = { label: label, decision: decision };
  last = `last: rank ${item.rank} → ` +
    (decision === "skip" ? "skipped" : `${className(label)} (${describe(decision)})`);
  buffer = "";
  if (position < ITEMS.length - 1) position++;
  save();
  render();
}
function pick(label) {
  const item = ITEMS[position];
  if (!item) return;
  decide(label, label === item.given ? "keep" : label === item.suggested ? "suggested" : "other");
}
function move(step) {
  buffer = "";
  position = Math.min(Math.max(position + step, 0), Math.max(ITEMS.length - 1, 0));
  save();
  render();
}
function typed(digit) {
  buffer += digit;
  const value = parseInt(buffer, 10);
  if (value >= C) { buffer = ""; render(); return; }
  // Commit once no longer class number starts with these digits ("0" starts none).
  if (value === 0 || value * 10 >= C) pick(value);
  else render();
}
function render() {
  const c = counts();
  $("progress-text").textContent = ITEMS.length
    ? `example ${position + 1} of ${ITEMS.length} · ${c.reviewed} reviewed (${c.changed} ` +
      `changed), ${c.skipped} skipped · ${DATA.num_flagged} flagged of ${DATA.num_examples}`
    : "No flagged example to review: the model agrees with every given label.";
  $("meter-fill").style.width = ITEMS.length
    ? (100 * (c.reviewed + c.skipped) / ITEMS.length).toFixed(1) + "%" : "0";
  $("buffer").textContent = buffer ? "class " + buffer + "…" : "";
  const finished = ITEMS.length && c.reviewed + c.skipped === ITEMS.length;
  $("done").style.display = finished ? "block" : "none";
  const item = ITEMS[position];
  if (!item) return;
  const view = $("view");
  view.replaceChildren();
  if (item.image) {
    const img = el("img");
    img.alt = "example " + item.id;
    img.src = item.image;
    view.appendChild(img);
  } else if (item.row) {
    const table = el("table");
    item.row.forEach((v, j) => {
      const tr = el("tr");
      tr.append(el("td", "x" + j), el("td", v));
      table.appendChild(tr);
    });
    if (item.more) table.appendChild(el("tr")).appendChild(el("td", `… ${item.more} more`));
    view.appendChild(table);
  } else {
    view.appendChild(el("span", "(no image)", "meta"));
  }
  $("meta").textContent = `rank ${item.rank} · id ${item.id} · score ${item.score.toFixed(3)}`;
  const d = store.decisions[item.id];
  $("given-name").textContent = className(item.given);
  $("suggested-name").textContent = className(item.suggested);
  $("given-box").classList.toggle("choice", !!d && d.decision !== "skip" && d.label === item.given);
  $("suggested-box").classList.toggle(
    "choice", !!d && d.decision !== "skip" && d.label === item.suggested);
  const top = $("top");
  top.replaceChildren();
  for (const [k, p] of item.top) {
    const bar = el("div", null, "p");
    bar.style.width = (100 * p).toFixed(1) + "%";
    const cell = el("div");
    cell.appendChild(bar);
    top.append(el("div", className(k)), cell, el("div", (100 * p).toFixed(1) + "%"));
  }
  const buttons = $("classes");
  buttons.replaceChildren();
  CLASSES.forEach((name, k) => {
    const b = el("button", className(k));
    if (k === item.given) b.classList.add("given");
    if (k === item.suggested) b.classList.add("suggested");
    if (d && d.decision !== "skip" && d.label === k) b.classList.add("picked");
    b.addEventListener("click", () => pick(k));
    buttons.appendChild(b);
  });
  $("decision").textContent = !d ? "not reviewed yet"
    : d.decision === "skip" ? "skipped"
    : `reviewed: ${className(d.label)} (${describe(d.decision)})`;
  $("last").textContent = last;
  const next = ITEMS[position + 1];
  if (next && next.image) { const pre = new Image(); pre.src = next.image; }
}
function csvCell(value) {
  // gdw_tf.data.csv_cells.escape_cell: a leading ' on text a spreadsheet would evaluate.
  let text = String(value);
  if (/^'*[=+\-@\t\r]/.test(text)
      && !/^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$/.test(text)) text = "'" + text;
  return /[",\r\n]/.test(text) || /^\s|\s$/.test(text)
    ? '"' + text.replace(/"/g, '""') + '"' : text;
}
function correctionsCsv() {
  const rows = [["id", "given_label", "reviewed_label", "decision", "suggested_label", "rank",
                 "score", "given_class", "reviewed_class"]];
  for (const item of ITEMS) {
    const d = store.decisions[item.id];
    if (!d || d.decision === "skip") continue;
    rows.push([item.id, item.given, d.label, d.decision, item.suggested, item.rank, item.score,
               CLASSES[item.given], CLASSES[d.label]]);
  }
  return rows.map((row) => row.map(csvCell).join(",")).join("\r\n") + "\r\n";
}
function download() {
  const blob = new Blob([correctionsCsv()], { type: "text/csv" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "corrections.csv";
  document.body.appendChild(link);
  link.click();
  setTimeout(() => { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
}
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  const item = ITEMS[position];
  let handled = true;
  if (/^[0-9]$/.test(key)) typed(key);
  else if (key === "Enter") {
    if (buffer) pick(parseInt(buffer, 10));
    else if (item) pick(item.given);
  }
  else if (key === "k") { if (item) pick(item.given); }
  else if (key === "a") { if (item) pick(item.suggested); }
  else if (key === "s" || key === "ArrowRight") {
    if (item) decide(item.given, "skip");
  }
  else if (key === "b" || key === "ArrowLeft" || key === "Backspace") {
    if (buffer) { buffer = buffer.slice(0, -1); render(); } else move(-1);
  }
  else if (key === "Escape") { buffer = ""; render(); }
  else if (key === "d") download();
  else handled = false;
  if (handled) event.preventDefault();
});
$("download").addEventListener("click", download);
$("download-2").addEventListener("click", download);
$("reset").addEventListener("click", () => {
  if (!confirm("Forget every decision on this page?")) return;
  store = { decisions: {}, position: 0 };
  position = 0;
  save();
  render();
});
$("n-classes").textContent =
  C > 10 ? `0–${C - 1}, Enter when the number could go on` : `0–${C - 1}`;
render();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body><h1>{title}</h1>
<div id="bar"><div id="progress"><span id="progress-text"></span>
<div id="meter"><div id="meter-fill"></div></div></div>
<button id="download" title="key d">Download corrections.csv</button>
<button id="reset">Forget decisions</button></div>
<div id="main"><div id="view"></div>
<div id="info"><div class="meta" id="meta"></div>
<div class="labels"><div class="label given" id="given-box"><div class="what">given label
<kbd>k</kbd></div><div class="name" id="given-name"></div></div>
<div class="label suggested" id="suggested-box"><div class="what">suggested <kbd>a</kbd></div>
<div class="name" id="suggested-name"></div></div></div>
<div class="what">the model's most probable classes</div><div class="top" id="top"></div>
<div class="what">or pick the class <span id="buffer"></span></div><div id="classes"></div>
<div id="decision"></div><div class="meta" id="last"></div>
<div id="keys"><kbd>k</kbd>/<kbd>Enter</kbd> keep given · <kbd>a</kbd> take suggestion ·
<kbd>0</kbd>–<kbd>9</kbd> class (<span id="n-classes"></span>) · <kbd>s</kbd>/<kbd>→</kbd> skip
· <kbd>b</kbd>/<kbd>←</kbd> back · <kbd>d</kbd> download. Decisions stay in this browser
(localStorage) until you forget them.</div></div></div>
<div id="done">All examples on this page are done.
<button id="download-2">Download corrections.csv</button> then
<code>python -m gdw_tf.train ... --corrections=corrections.csv</code>.</div>
<script id="review-data" type="application/json">{data}</script>
<script>{script}</script>
</body></html>
"""
