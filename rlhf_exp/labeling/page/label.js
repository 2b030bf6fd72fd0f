// The labeling page of `rlhf-exp stage=label`: who is labeling, the instructions, then one set at a
// time. The ranking being built is `ranks`: per completion (in file order) an integer rank 1..K,
// "F" (nonsense) or null (not ranked yet). The cards are always shown best first (sorted by rank),
// so ordering them (drag, ↑/↓, Alt+arrows) and numbering them (keys, the rank menu) are two views
// of the same ranking.
"use strict";

const LABELER_RE = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/;
const STORE_KEY = "rlhf-exp-labeler";
const $ = (id) => document.getElementById(id);

const state = { labeler: null, set: null, ranks: [], cards: [] };

// -- server ---------------------------------------------------------------------------------------

async function api(path, body) {
  const res = await fetch(path, body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await res.json().catch(() => ({ error: `HTTP ${res.status}`, problems: [] }));
  if (!res.ok) throw Object.assign(new Error(data.error || `HTTP ${res.status}`), { problems: data.problems || [] });
  return data;
}

// -- screens --------------------------------------------------------------------------------------

function show(id) {
  for (const s of ["login", "instructions", "ranking", "done"]) $(s).hidden = s !== id;
}

function setLabeler(name) {
  state.labeler = name;
  localStorage.setItem(STORE_KEY, name);
  const url = new URL(location.href);
  url.searchParams.set("labeler", name);
  history.replaceState(null, "", url);  // the URL names the labeler: a bookmark continues as them
  $("who-name").textContent = name;
  $("who").hidden = false;
}

function showLogin() {
  $("who").hidden = true;
  $("progress").textContent = "";
  show("login");
  $("labeler-id").value = state.labeler || "";
  $("labeler-id").focus();
}

async function showInstructions() {
  show("instructions");
  const { text } = await api("/api/instructions");
  $("instructions-text").textContent = text;
  $("start").focus();
}

function showProgress(p) {
  $("progress").textContent = `${p.ranked} of ${p.total} sets ranked by ${p.labeler}`;
}

async function loadNext() {
  try {
    const data = await api(`/api/next?labeler=${encodeURIComponent(state.labeler)}`);
    showProgress(data.progress);
    data.set ? showSet(data.set) : showDone(data.progress);
  } catch (err) {
    showErrors(err, $("start-errors"));
  }
}

function showDone(p) {
  show("done");
  $("done-text").textContent = `All ${p.total} sets are ranked by ${p.labeler}. Thank you!`;
  $("done-title").focus();
}

// -- one set --------------------------------------------------------------------------------------

function showSet(set) {
  state.set = set;
  const k = set.completions.length;
  state.ranks = set.ranks ? set.ranks.slice() : new Array(k).fill(null);
  show("ranking");
  $("errors").textContent = "";
  $("kmax").textContent = String(k);
  $("set-title").textContent = `Set ${set.index + 1}` + (set.set_id != null ? ` (set_id ${set.set_id})` : "");
  const prompt = $("prompt");
  prompt.replaceChildren(...set.turns.map(({ role, content }) => {
    const turn = el("div", `turn ${role}`);
    turn.append(el("div", "role", role), el("div", "content", content));
    return turn;
  }));
  state.cards = set.completions.map((text, i) => makeCard(i, text, k));
  $("completions").replaceChildren(...state.cards);
  render();
  state.cards[0].focus();
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;  // text, never HTML: completions are model output
  return e;
}

const letter = (i) => String.fromCharCode(65 + (i % 26)) + (i >= 26 ? String(Math.floor(i / 26)) : "");

function button(cls, text, label, onClick) {
  const b = el("button", cls, text);
  b.type = "button";
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function makeCard(i, text, k) {
  const card = el("li", "card");
  card.tabIndex = 0;
  card.dataset.index = String(i);
  const handle = el("span", "handle", "⠿");
  handle.title = "drag to move";
  handle.setAttribute("aria-hidden", "true");
  const select = el("select");
  select.setAttribute("aria-label", `rank of answer ${letter(i)}`);
  select.append(new Option("–", ""), ...Array.from({ length: k }, (_, r) => new Option(String(r + 1), String(r + 1))),
                new Option("F (nonsense)", "F"));
  select.addEventListener("change", () => setRank(i, select.value === "" ? null : select.value === "F" ? "F" : Number(select.value)));
  const rankLabel = el("label", "", "rank ");
  rankLabel.append(select);
  const bar = el("div", "bar");
  bar.append(handle, el("span", "letter", `Answer ${letter(i)}`), el("span", "badge", "–"),
    button("up", "↑", `move answer ${letter(i)} up`, () => moveBy(i, -1)),
    button("down", "↓", `move answer ${letter(i)} down`, () => moveBy(i, +1)),
    button("tie", "= tie with above", `answer ${letter(i)} ties with the one above`, () => toggleTie(i)),
    button("flag", "F nonsense", `answer ${letter(i)} is nonsense (F)`, () => setRank(i, state.ranks[i] === "F" ? null : "F")),
    rankLabel);
  card.append(bar, el("div", "text", text));
  card.addEventListener("keydown", (e) => onCardKey(e, i));
  handle.addEventListener("pointerdown", (e) => dragStart(e, i));
  return card;
}

// -- the ranking ----------------------------------------------------------------------------------

function sortKey(i) {
  const r = state.ranks[i], k = state.ranks.length;
  return r === "F" ? k + 2 : r === null ? k + 1 : r;
}

function displayOrder() {  // best first; unranked, then F, at the bottom; equal ranks in file order
  return state.ranks.map((_, i) => i).sort((a, b) => sortKey(a) - sortKey(b) || a - b);
}

function setRank(i, rank) {
  state.ranks[i] = rank;
  render(i);
}

// Which card each card is tied with: the one just above it, when both have the same numeric rank.
function tiesAbove(order) {
  const ties = new Map();
  const ranked = order.filter((j) => state.ranks[j] !== "F");
  ranked.forEach((j, p) => {
    if (p > 0 && state.ranks[j] !== null && state.ranks[j] === state.ranks[ranked[p - 1]]) ties.set(j, ranked[p - 1]);
  });
  return ties;
}

// The ranking read from an order of the cards: every card not marked F is ranked by its position
// (competition ranking: two tied for 1st, the next is 3rd), a card keeping its tie with the one
// above when that one is still just above it.
function applyOrder(order, ties) {
  let pos = 0, prev = null, prevRank = 0;
  for (const j of order) {
    if (state.ranks[j] === "F") continue;
    pos += 1;
    const rank = prev !== null && ties.get(j) === prev ? prevRank : pos;
    state.ranks[j] = rank;
    prev = j;
    prevRank = rank;
  }
}

function moveTo(i, order) {  // `order`: the new display order, with card i where it was dropped
  const ties = tiesAbove(displayOrder());
  ties.delete(i);  // a card that moved leaves its tie
  if (state.ranks[i] === "F") state.ranks[i] = null;  // moved into the ranking: no longer nonsense
  applyOrder(order, ties);
  render(i);
}

function moveBy(i, delta) {
  const order = displayOrder().filter((j) => j !== i);
  const at = displayOrder().indexOf(i) + delta;
  if (at < 0 || at > order.length) return;
  order.splice(at, 0, i);
  moveTo(i, order);
}

function toggleTie(i) {
  const order = displayOrder();
  const ties = tiesAbove(order);
  const ranked = order.filter((j) => state.ranks[j] !== "F");
  const p = ranked.indexOf(i);
  if (p <= 0) return;
  ties.has(i) ? ties.delete(i) : ties.set(i, ranked[p - 1]);
  applyOrder(order, ties);
  render(i);
}

function onCardKey(e, i) {
  if (e.target !== e.currentTarget) return;  // keys in the rank menu and on buttons do their own thing
  const k = state.ranks.length;
  if (e.altKey && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
    moveBy(i, e.key === "ArrowUp" ? -1 : +1);
  } else if (/^[1-9]$/.test(e.key) && Number(e.key) <= k) {
    setRank(i, Number(e.key));
  } else if (e.key === "f" || e.key === "F") {
    setRank(i, state.ranks[i] === "F" ? null : "F");
  } else if (e.key === "0" || e.key === "Backspace" || e.key === "Delete") {
    setRank(i, null);
  } else {
    return;
  }
  e.preventDefault();
}

// Cards are re-ordered, never rebuilt, so focus stays on the card (or button) that was used.
function render(focusCard) {
  const active = document.activeElement;
  const list = $("completions");
  const order = displayOrder();
  if (order.some((j, p) => list.children[p] !== state.cards[j])) list.append(...order.map((j) => state.cards[j]));
  const ties = tiesAbove(order);
  const ranked = order.filter((j) => state.ranks[j] !== "F");
  order.forEach((j, p) => {
    const card = state.cards[j], r = state.ranks[j];
    const shown = r === null ? "–" : String(r);
    card.querySelector(".badge").textContent = shown;
    card.querySelector(".badge").classList.toggle("set", r !== null && r !== "F");
    card.querySelector("select").value = r === null ? "" : String(r);
    card.classList.toggle("flagged", r === "F");
    card.setAttribute("aria-label", `Answer ${letter(j)}, ${r === null ? "not ranked" : r === "F" ? "marked nonsense" : `rank ${r}`}`);
    card.querySelector(".flag").setAttribute("aria-pressed", String(r === "F"));
    const tie = card.querySelector(".tie");
    tie.setAttribute("aria-pressed", String(ties.has(j)));
    tie.disabled = r === "F" || ranked.indexOf(j) <= 0;
    card.querySelector(".up").disabled = p === 0;
    card.querySelector(".down").disabled = p === order.length - 1;
  });
  if (active && document.activeElement !== active && document.contains(active) && !active.disabled) active.focus();
  else if (focusCard !== undefined && document.activeElement === document.body) state.cards[focusCard].focus();
}

// -- drag and drop (pointer events: mouse, pen and touch alike) -----------------------------------

let drag = null;

function dropOrder(i, y) {  // the display order with card i put where the pointer is
  const others = displayOrder().filter((j) => j !== i);
  const at = others.filter((j) => {
    const box = state.cards[j].getBoundingClientRect();
    return box.top + box.height / 2 < y;
  }).length;
  others.splice(at, 0, i);
  return others;
}

function dragStart(e, i) {
  e.preventDefault();
  drag = { i, handle: e.currentTarget };
  drag.handle.setPointerCapture(e.pointerId);
  state.cards[i].classList.add("dragging");
  drag.handle.addEventListener("pointermove", dragMove);
  drag.handle.addEventListener("pointerup", dragEnd);
  drag.handle.addEventListener("pointercancel", dragEnd);
}

function clearMarks() {
  for (const c of state.cards) c.classList.remove("drop-before", "drop-after");
}

function dragMove(e) {
  clearMarks();
  const order = dropOrder(drag.i, e.clientY);
  const p = order.indexOf(drag.i);
  if (p + 1 < order.length) state.cards[order[p + 1]].classList.add("drop-before");
  else if (p > 0) state.cards[order[p - 1]].classList.add("drop-after");
}

function dragEnd(e) {
  const { i, handle } = drag;
  handle.removeEventListener("pointermove", dragMove);
  handle.removeEventListener("pointerup", dragEnd);
  handle.removeEventListener("pointercancel", dragEnd);
  state.cards[i].classList.remove("dragging");
  clearMarks();
  drag = null;
  if (e.type === "pointerup") moveTo(i, dropOrder(i, e.clientY));
}

// -- submitting -----------------------------------------------------------------------------------

function showErrors(err, box = $("errors")) {
  box.replaceChildren(el("p", "", err.message), ...(err.problems || []).map((p) => el("p", "", p)));
}

async function submit() {
  const missing = state.ranks.flatMap((r, i) => (r === null ? [letter(i)] : []));
  if (missing.length) {
    showErrors({ message: `Give every answer a rank or F first: answer ${missing.join(", ")} has none.` });
    return;
  }
  $("submit").disabled = true;
  try {
    const data = await api("/api/rankings", {
      labeler: state.labeler, index: state.set.index, set_id: state.set.set_id, ranks: state.ranks });
    showProgress(data.progress);
    data.next ? showSet(data.next) : showDone(data.progress);
  } catch (err) {
    showErrors(err);
  } finally {
    $("submit").disabled = false;
  }
}

// -- start ----------------------------------------------------------------------------------------

function init() {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("labeler-id").value.trim();
    if (!LABELER_RE.test(name)) return;
    setLabeler(name);
    showInstructions();
  });
  $("switch").addEventListener("click", showLogin);
  $("start").addEventListener("click", loadNext);
  $("submit").addEventListener("click", submit);
  const given = new URL(location.href).searchParams.get("labeler") || localStorage.getItem(STORE_KEY);
  if (given && LABELER_RE.test(given)) {
    setLabeler(given);
    showInstructions();
  } else {
    showLogin();
  }
}

init();
