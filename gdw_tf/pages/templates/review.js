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
function shown(item, d) {
  return d.decision === "remove" ? "removed from the next run"
    : `${className(d.label)} (${describe(d.decision)})`;
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
    if (d.decision === "remove" || d.label !== item.given) changed++;
  }
  return { reviewed, changed, skipped };
}
function decide(label, decision) {
  const item = ITEMS[position];
  if (!item) return;
  store.decisions[item.id] = { label: label, decision: decision };
  last = `last: ${item.set} rank ${item.rank} → ` +
    (decision === "skip" ? "skipped" : shown(item, store.decisions[item.id]));
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
    : "Nothing to review: every example has been reviewed.";
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
  $("set").textContent = (item.set === "trusted"
    ? "TRUSTED example: its label steers the whole run; most of its nearest training " +
      "examples carry another label"
    : "training example") + (item.reviewed ? " · SECOND LOOK: an earlier review gave " +
      "this label, and this run contradicts it" : "");
  $("set").className = item.set === "trusted" || item.reviewed ? "set alert" : "set";
  $("given-what").firstChild.textContent =
    item.set === "trusted" ? "trusted label " : "given label ";
  $("top-what").textContent = item.set === "trusted"
    ? (DATA.trusted_evidence === "model" ? "the model's most probable classes"
       : "labels of its nearest training examples")
    : "the model's most probable classes";
  const d = store.decisions[item.id];
  $("given-name").textContent = className(item.given);
  $("suggested-name").textContent = className(item.suggested);
  const chosen = (k) => !!d && d.decision !== "skip" && d.decision !== "remove" && d.label === k;
  $("given-box").classList.toggle("choice", chosen(item.given));
  $("suggested-box").classList.toggle("choice", chosen(item.suggested));
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
    if (chosen(k)) b.classList.add("picked");
    b.addEventListener("click", () => pick(k));
    buttons.appendChild(b);
  });
  $("decision").textContent = !d ? "not reviewed yet"
    : d.decision === "skip" ? "skipped" : "reviewed: " + shown(item, d);
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
                 "score", "given_class", "reviewed_class", "set"]];
  for (const item of ITEMS) {
    const d = store.decisions[item.id];
    if (!d || d.decision === "skip") continue;
    const removed = d.decision === "remove";
    rows.push([item.id, item.given, removed ? "" : d.label, d.decision, item.suggested,
               item.rank, item.score, CLASSES[item.given], removed ? "" : CLASSES[d.label],
               item.set]);
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
  else if (key === "r") { if (item) decide(null, "remove"); }
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
