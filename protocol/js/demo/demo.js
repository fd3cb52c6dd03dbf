// The demo page's logic: everything it does goes through roost.js, as an application's would.
import { Roost, RoostError } from "/js/roost.js";

const $ = (id) => document.getElementById(id);
const demo = { client: null, room: null, members: new Map(), receipts: new Map(), messages: new Map(), oldest: null, transitions: [] };
window.demo = demo; // for the browser tests and the console

async function devToken(user) {
  const res = await fetch(`/dev/token?user=${encodeURIComponent(user)}`);
  if (!res.ok) throw new Error((await res.json()).error?.message ?? `HTTP ${res.status}`);
  return (await res.json()).token;
}

function showError(err) {
  $("error").textContent = err instanceof RoostError ? `${err.code}${err.retryMs != null ? ` (retry in ${err.retryMs} ms)` : ""}: ${err.message}` : String(err?.message ?? err);
}
function clearError() { $("error").textContent = ""; }

async function guarded(fn) {
  clearError();
  try { return await fn(); } catch (err) { showError(err); return undefined; }
}

async function connect(user) {
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(user)) throw new Error("a name is 1-32 of A-Z a-z 0-9 _ -");
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
  const started = performance.now();
  demo.client = await Roost.connect(url, {
    token: () => devToken(user),
    onState: (state) => { demo.transitions.push({ state, at: performance.now() }); $("status").textContent = state === "open" ? `connected as ${user}` : state; $("status").dataset.state = state; },
    onError: (err) => console.warn("roost:", err),
  });
  demo.connectMs = performance.now() - started;
  $("status").textContent = `connected as ${user}`;
  $("status").dataset.state = "open";
  $("login").querySelector("button").disabled = true;
  $("lobby").hidden = false;
  await refreshLobby();
}

async function refreshLobby() {
  const page = await demo.client.lobby({ limit: 50 });
  const list = $("rooms");
  list.replaceChildren(...page.rooms.map((info) => {
    const li = document.createElement("li");
    li.dataset.code = info.code;
    li.textContent = `${info.code} · ${info.members}/${info.max} · ${info.phase} `;
    const button = document.createElement("button");
    button.textContent = "Join";
    button.onclick = () => guarded(() => enter(demo.client.join({ code: info.code })));
    li.append(button);
    return li;
  }));
}

async function enter(roomPromise) {
  const room = await roomPromise;
  demo.room = room;
  demo.members = new Map((room.snapshot.members ?? []).map((m) => [m.user, m]));
  demo.receipts = new Map();
  demo.messages = new Map();
  $("chat-log").replaceChildren();
  $("room").hidden = false;
  $("room-code").textContent = room.snapshot.code;
  room.on("presence", onPresence);
  room.on("chat", (e) => { addMessage(e.msg); markRead(e.msg.n); });
  room.on("receipt", (e) => { demo.receipts.set(e.user, e.n); renderReceipts(); });
  room.on("state", (e) => renderGame(e.phase, e.state, e.reason));
  room.on("sync", (e) => { demo.members = new Map((e.snapshot.members ?? []).map((m) => [m.user, m])); renderMembers(); renderGame(e.snapshot.phase, e.snapshot.state); });
  room.on("room_closed", () => { $("game-status").textContent = "the room was closed"; });
  renderMembers();
  renderGame(room.snapshot.phase, room.snapshot.state);
  const page = await demo.client.history(room, { limit: 50 });
  demo.oldest = page.next ?? null;
  $("older").disabled = demo.oldest == null;
  for (const msg of page.messages) addMessage(msg);
  const last = page.messages.at(-1);
  if (last) markRead(last.n);
}

function onPresence(e) {
  for (const m of [...(e.join ?? []), ...(e.update ?? [])]) demo.members.set(m.user, m);
  for (const user of e.leave ?? []) demo.members.delete(user);
  renderMembers();
}

function renderMembers() {
  $("members").replaceChildren(...[...demo.members.values()].map((m) => {
    const li = document.createElement("li");
    li.dataset.user = m.user;
    li.dataset.status = m.status;
    li.dataset.typing = m.typing ? "true" : "false";
    li.className = m.status;
    li.textContent = `${m.name || m.user}${m.user === demo.client.user ? " (you)" : ""} · ${m.status}`;
    if (m.typing) {
      const span = document.createElement("span");
      span.className = "typing";
      span.textContent = " typing…";
      li.append(span);
    }
    return li;
  }));
}

function addMessage(msg, { prepend = false } = {}) {
  if (demo.messages.has(msg.n)) return;
  demo.messages.set(msg.n, msg);
  const li = document.createElement("li");
  li.dataset.n = String(msg.n);
  li.dataset.user = msg.user;
  const time = new Date(msg.ts).toLocaleTimeString();
  li.textContent = `[${time}] ${msg.name || msg.user}: ${msg.deleted ? "(deleted)" : msg.text}`;
  const receipt = document.createElement("span");
  receipt.className = "receipt";
  li.append(receipt);
  if (prepend) $("chat-log").prepend(li);
  else $("chat-log").append(li);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  renderReceipts();
}

function renderReceipts() {
  for (const li of $("chat-log").children) {
    if (li.dataset.user !== demo.client.user) continue;
    const n = Number(li.dataset.n);
    const readers = [...demo.receipts].filter(([user, upTo]) => user !== demo.client.user && upTo >= n).map(([user]) => user);
    li.querySelector(".receipt").textContent = readers.length ? `✓ read by ${readers.sort().join(", ")}` : "";
  }
}

let lastRead = 0;
function markRead(n) {
  if (n <= lastRead || document.visibilityState === "hidden") return;
  lastRead = n;
  demo.client.read(demo.room, n).catch(showError);
}

function renderGame(phase, state, reason) {
  const board = $("board");
  const cells = state?.board ?? Array(9).fill("");
  board.replaceChildren(...cells.map((mark, cell) => {
    const button = document.createElement("button");
    button.dataset.cell = String(cell);
    button.textContent = mark;
    button.disabled = phase !== "playing" || Boolean(mark);
    button.onclick = () => guarded(() => demo.client.send(demo.room, "move", { cell }));
    return button;
  }));
  const me = demo.client.user;
  let text = "waiting for two players";
  if (phase === "playing" && state) {
    const mover = state.turn === "X" ? state.x : state.o;
    text = mover === me ? `your turn (${state.turn})` : `${mover}'s turn (${state.turn})`;
  } else if (phase === "ended" && state) {
    if (state.forfeit) text = `${state.winner} wins: ${state.forfeit} left the game`;
    else if (state.draw) text = "a draw";
    else text = `${state.winner} wins`;
  } else if (phase === "lobby" && reason === "member_inactive") {
    text = "a player left: back to the lobby";
  }
  $("game-status").textContent = text;
  $("game-status").dataset.phase = phase;
  $("start").textContent = phase === "ended" ? "Rematch" : "Start a game";
  $("start").disabled = phase === "playing";
}

// -- wiring ---------------------------------------------------------------------------------------
$("connect").onclick = () => guarded(() => connect($("user").value.trim()));
$("user").onkeydown = (e) => { if (e.key === "Enter") $("connect").click(); };
$("create").onclick = () => guarded(() => enter(demo.client.create({ public: true, max: 8, logic: "tictactoe", inactive: "end", meta: { title: "tic-tac-toe" } })));
$("join-code").onclick = () => guarded(() => enter(demo.client.join({ code: $("code-input").value.trim() })));
$("refresh-lobby").onclick = () => guarded(refreshLobby);
$("leave").onclick = () => guarded(async () => { await demo.client.leave(demo.room); demo.room = null; $("room").hidden = true; await refreshLobby(); });
$("start").onclick = () => guarded(() => demo.client.send(demo.room, $("start").textContent === "Rematch" ? "rematch" : "start"));
$("presence-status").onchange = () => guarded(() => demo.client.presenceSet(demo.room, { status: $("presence-status").value }));
$("older").onclick = () => guarded(async () => {
  const page = await demo.client.history(demo.room, { before: demo.oldest, limit: 50 });
  for (const msg of [...page.messages].reverse()) addMessage(msg, { prepend: true });
  demo.oldest = page.next ?? null;
  $("older").disabled = demo.oldest == null;
});
let typingSent = 0;
$("chat-input").oninput = () => {
  if (!demo.room || Date.now() - typingSent < 2000) return;
  typingSent = Date.now();
  demo.client.typing(demo.room, true).catch(showError);
};
async function sendChat() {
  const text = $("chat-input").value;
  if (!text) return;
  $("chat-input").value = "";
  typingSent = 0;
  await demo.client.chatSend(demo.room, text);
}
$("chat-send").onclick = () => guarded(sendChat);
$("chat-input").onkeydown = (e) => { if (e.key === "Enter") guarded(sendChat); };

const params = new URLSearchParams(location.search);
if (params.get("user")) {
  $("user").value = params.get("user");
  guarded(() => connect(params.get("user")));
}
