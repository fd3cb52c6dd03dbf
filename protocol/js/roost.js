// roost.js: the JavaScript client of the Roost wire protocol (PROTOCOL.md), for browsers and Node.
//
// The same shape as the Python client (roost.client): `await Roost.connect(url, {token})`, awaited
// requests, per-room events with their (epoch, seq) tracked, heartbeats, token refresh before `exp`,
// and reconnect with backoff + jitter followed by `hello.session` and one `resume` per room.
//
// Traps this module exists to handle (each named where it is handled):
// - Browsers cannot set WebSocket headers and URLs end up in logs: the token goes in `hello`, never
//   in the URL (PROTOCOL.md §3, note 1).
// - JavaScript numbers hold integers exactly only up to 2^53-1: every integer sent is checked, and
//   64-bit integers read are decoded as BigInt and turned into numbers only when exact.
// - `Date` would encode as a msgpack timestamp ext, which the server refuses (`malformed`): it is
//   sent as milliseconds since the epoch. `undefined` map values are left out (nil means absent, §2).
// - `ws.close(code)` throws in browsers for codes other than 1000 and 3000-4999: this client only
//   ever closes with 1000, and drops a dead link without waiting for the server's Close.
// - The server sends a resume's replay after its `ok` (§5.3), every other request's events before.

import { Decoder, Encoder } from "@msgpack/msgpack";

export const PROTOCOL_VERSION = 1;
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const MAX_REQUEST_ID = 2 ** 32 - 1;
/** `moved` answers one room request follows before it gives up (two nodes that each say the other). */
const MAX_MOVES = 3;
const INT64_MIN = -(2n ** 63n);
const UINT64_MAX = 2n ** 64n - 1n;

/** PROTOCOL.md §8.2: name and whether a client reconnects by itself after each close code. */
export const CLOSE_CODES = Object.freeze({
  1000: { name: "normal", reconnect: false },
  1001: { name: "going_away", reconnect: true },
  1002: { name: "protocol_error", reconnect: false },
  1003: { name: "unsupported_data", reconnect: false },
  1006: { name: "abnormal", reconnect: true },
  1007: { name: "invalid_payload", reconnect: false },
  1008: { name: "policy_violation", reconnect: false },
  1009: { name: "message_too_big", reconnect: false },
  1011: { name: "internal_error", reconnect: true },
  1012: { name: "service_restart", reconnect: true },
  1013: { name: "try_again_later", reconnect: true },
  4000: { name: "slow_consumer", reconnect: true },
  4001: { name: "rate_limited", reconnect: true },
  4002: { name: "token_expired", reconnect: true },
  4003: { name: "heartbeat_timeout", reconnect: true },
  4004: { name: "auth_timeout", reconnect: true },
  4005: { name: "room_restarted", reconnect: true },
  4006: { name: "user_merged", reconnect: true },
  4500: { name: "bad_token", reconnect: false },
  4501: { name: "token_revoked", reconnect: false },
  4502: { name: "bad_frame", reconnect: false },
  4503: { name: "unsupported_version", reconnect: false },
  4504: { name: "superseded", reconnect: false },
  4505: { name: "kicked", reconnect: false },
  4506: { name: "too_many_sessions", reconnect: false },
});

/** The rule of §8.2, also for codes added later: 4000-4499 reconnect, 4500-4999 do not. */
export function mayReconnect(code) {
  if (code >= 4000 && code <= 4499) return true;
  if (code >= 4500 && code <= 4999) return false;
  return [1001, 1006, 1011, 1012, 1013].includes(code);
}

export function closeName(code) {
  return CLOSE_CODES[code]?.name ?? (code >= 4000 && code <= 4999 ? "application" : "unknown");
}

/** The error codes of PROTOCOL.md §8.1; an unknown one is read as `internal`. */
export const ERROR_CODES = Object.freeze([
  "malformed", "not_a_map", "unknown_type", "missing_field", "bad_field", "too_long", "too_deep",
  "too_large", "unauthorized", "token_expired", "forbidden", "not_found", "not_member", "room_full",
  "conflict", "invalid_state", "rate_limited", "limit_reached", "unsupported", "internal",
  "moved", "unavailable",
]);

/**
 * Every failure this client reports. `code` is a §8.1 error code for a refused request, or one of
 * the client's own: `connection_lost` (the link dropped before the reply; retry), `closed` (the
 * client is closed for good: `closeCode`/`closeReason` say why), `bad_argument` (nothing was sent),
 * `protocol_violation` (the server broke the contract).
 */
export class RoostError extends Error {
  constructor(code, message, { retryMs = null, requestId = null, closeCode = null, closeReason = "", wireCode = null, url = null } = {}) {
    super(message ? `${code}: ${message}` : code);
    this.name = "RoostError";
    this.code = code;
    this.wireCode = wireCode ?? code;
    this.retryMs = retryMs;
    /** With `moved`: the address of the cluster node that serves the room (§8.1). */
    this.url = url;
    this.requestId = requestId;
    this.closeCode = closeCode;
    this.closeReason = closeReason;
  }
}

function fail(message) {
  return new RoostError("bad_argument", message);
}

// -- values on the wire ---------------------------------------------------------------------------

/** Make `value` what msgpack should carry: Dates as ms, undefined left out, integers checked. */
export function toWire(value, depth = 0) {
  if (depth > 64) throw fail("value nested too deep");
  if (value === null || value === undefined) return null;
  switch (typeof value) {
    case "number":
      if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
        throw fail(`integer ${value} is outside +-(2^53-1): pass a BigInt to send it exactly`);
      }
      return value;
    case "bigint":
      if (value < INT64_MIN || value > UINT64_MAX) throw fail(`integer ${value} does not fit msgpack`);
      return value >= -MAX_SAFE && value <= MAX_SAFE ? Number(value) : value;
    case "string":
    case "boolean":
      return value;
    case "object":
      break;
    default:
      throw fail(`a ${typeof value} cannot be sent`);
  }
  if (value instanceof Date) {
    const ms = value.getTime();
    if (!Number.isFinite(ms)) throw fail("an invalid Date cannot be sent");
    return ms;
  }
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (Array.isArray(value)) return value.map((item) => (item === undefined ? null : toWire(item, depth + 1)));
  if (value instanceof Map) throw fail("send a plain object, not a Map (keys must be strings)");
  const out = {};
  for (const [key, item] of Object.entries(value)) {
    if (item !== undefined) out[key] = toWire(item, depth + 1);
  }
  return out;
}

/** Turn BigInts the decoder produced back into numbers where that is exact. */
function fromWire(value) {
  if (typeof value === "bigint") return value >= -MAX_SAFE && value <= MAX_SAFE ? Number(value) : value;
  if (value === null || typeof value !== "object" || value instanceof Uint8Array) return value;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) value[i] = fromWire(value[i]);
    return value;
  }
  for (const key of Object.keys(value)) value[key] = fromWire(value[key]);
  return value;
}

const encoder = new Encoder({ ignoreUndefined: true, useBigInt64: true });
const decoder = new Decoder({ useBigInt64: true });

/** Encode one client frame (a map with `t` first) as the bytes of one binary WebSocket message. */
export function encodeFrame(frame) {
  return encoder.encode(toWire(frame));
}

/** Decode one server frame; throws RoostError("protocol_violation") if it is not a map with a `t`. */
export function decodeFrame(data) {
  let value;
  try {
    value = decoder.decode(data instanceof ArrayBuffer ? new Uint8Array(data) : data);
  } catch (err) {
    throw new RoostError("protocol_violation", `undecodable server frame: ${err.message}`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value) || typeof value.t !== "string") {
    throw new RoostError("protocol_violation", "a server frame is not a map with a string t");
  }
  return fromWire(value);
}

// -- rooms ----------------------------------------------------------------------------------------

const ROOM_EVENTS = new Set([
  "presence", "chat", "chat_edited", "chat_deleted", "receipt", "host", "state", "message", "room_closed", "sync",
]);
/** Frames a room's handlers get besides its events: `receipts` (the status of one's own messages,
 * PROTOCOL.md §17.1) is not a room event (no seq, never replayed). */
const ROOM_FRAMES = new Set([...ROOM_EVENTS, "receipts"]);

/**
 * A room this client follows: its last processed (epoch, seq) and its event subscriptions.
 * `room.on("chat", fn)`; `room.on("*", fn)` gets every event. Handlers run synchronously in
 * arrival order; an event already seen (seq <= the position in the same epoch) is never delivered.
 */
export class Room {
  constructor(client, snapshot) {
    this.client = client;
    this.id = snapshot.room;
    this.snapshot = snapshot;
    this.epoch = snapshot.epoch;
    this.seq = snapshot.seq;
    this._handlers = new Map();
    this.active = true;
  }

  on(type, handler) {
    if (type !== "*" && !ROOM_FRAMES.has(type)) throw fail(`unknown room event ${type}`);
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this.off(type, handler);
  }

  off(type, handler) {
    this._handlers.get(type)?.delete(handler);
  }

  /** The next event of `type` (any with "*"), optionally one that `filter` accepts. */
  next(type = "*", filter = () => true, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { off(); reject(new RoostError("timeout", `no ${type} event in ${timeoutMs} ms`)); }, timeoutMs);
      const off = this.on(type, (event) => {
        if (!filter(event)) return;
        clearTimeout(timer);
        off();
        resolve(event);
      });
    });
  }

  _take(snapshot) {
    // A newer position already reached through events of the same epoch wins (§5.1).
    if (snapshot.epoch !== this.epoch || snapshot.seq > this.seq) {
      this.epoch = snapshot.epoch;
      this.seq = snapshot.seq;
    }
    this.snapshot = snapshot;
  }

  _deliver(event) {
    if (event.t === "sync") {
      this.snapshot = event.snapshot;
      this.epoch = event.snapshot.epoch;
      this.seq = event.snapshot.seq;
    } else {
      if (event.epoch === this.epoch && event.seq <= this.seq) {
        this.client.stats.duplicates += 1;
        return;
      }
      if (event.epoch === this.epoch && event.seq !== this.seq + 1) this.client.stats.gaps += 1;
      this.epoch = event.epoch;
      this.seq = event.seq;
    }
    this.client.stats.events += 1;
    if (event.t === "chat" && event.msg.user !== this.client.user) this.client._wantDelivered(this.id, event.msg.n);
    this._notify(event);
  }

  _notify(event) {
    for (const type of [event.t, "*"]) {
      for (const handler of [...(this._handlers.get(type) ?? [])]) {
        try {
          handler(event, this);
        } catch (err) {
          this.client._report(err);
        }
      }
    }
  }
}

// -- the client -----------------------------------------------------------------------------------

const DEFAULTS = {
  hb: 10000,
  agent: "roost.js/0.1",
  reconnect: true,
  backoffBaseMs: 250,
  backoffMaxMs: 10000,
  refreshMarginMs: 60000,
  connectTimeoutMs: 10000,
  deliver: true,
};

/**
 * One session with a Roost server. Make it with `await Roost.connect(url, options)`.
 * Options: `token` (a string, or an async function called at every connect and refresh), or instead
 * `guestKey` (an Ed25519 CryptoKeyPair, e.g. from `Roost.guestKey()`: where the server allows guests,
 * each attempt signs a fresh single-use guest proof with it, PROTOCOL.md §9.3) and `guestName`,
 * `WebSocket` (a constructor; defaults to the global one: pass `ws`'s in Node 20), `hb` (ms),
 * `agent`, `reconnect` (default true), `backoffBaseMs`, `backoffMaxMs`, `refreshMarginMs`,
 * `deliver` (default true: report delivered cursors by itself, §17.1),
 * `onError(err)` (handler exceptions and connection-level errors), `onState(state)`.
 */
const b64url = (bytes) => {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
};
const b64json = (value) => b64url(new TextEncoder().encode(JSON.stringify(value)));

/**
 * A guest proof (PROTOCOL.md §9.3): a compact JWS signed by the device key it names, for audience
 * `aud` (the server's host[:port], what the WebSocket upgrade's Host header says), living 60 s, with
 * a random single-use jti. WebCrypto Ed25519 (Node 20, Chromium, Firefox, Safari 17).
 */
export async function guestProof(keyPair, aud, name, now = Date.now()) {
  const key = b64url(await crypto.subtle.exportKey("raw", keyPair.publicKey));
  const iat = Math.floor(now / 1000);
  const claims = { key, aud, iat, exp: iat + 60, jti: b64url(crypto.getRandomValues(new Uint8Array(16))) };
  if (name !== undefined) claims.name = name;
  const input = `${b64json({ alg: "EdDSA", typ: "roost-guest" })}.${b64json(claims)}`;
  const signature = await crypto.subtle.sign({ name: "Ed25519" }, keyPair.privateKey, new TextEncoder().encode(input));
  return `${input}.${b64url(signature)}`;
}

export class Roost {
  /** A new device key for guest play: keep it (e.g. in IndexedDB; the private half is not extractable). */
  static async guestKey() {
    return crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
  }

  static async connect(url, options = {}) {
    const client = new Roost(url, options);
    await client._start();
    return client;
  }

  constructor(url, options) {
    if (typeof url !== "string" || !/^wss?:\/\//.test(url)) throw fail("url must be ws:// or wss://");
    if (url.includes("token=")) throw fail("put the token in the token option, never in the URL");
    const { token, guestKey } = options;
    if (guestKey !== undefined) {
      if (token !== undefined) throw fail("give token or guestKey, not both");
      if (!guestKey?.privateKey || !guestKey?.publicKey) throw fail("guestKey must be an Ed25519 CryptoKeyPair");
    } else if (typeof token !== "string" && typeof token !== "function") throw fail("token must be a string or an async function");
    this.url = url;
    this._openedHost = new URL(url).hostname;
    this._openedSecure = url.startsWith("wss:");
    this._moving = false;
    this.options = { ...DEFAULTS, ...options };
    this._guestKey = guestKey ?? null;
    this._tokenSource = typeof token === "string" ? async () => token : token;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") throw fail("no WebSocket constructor: pass options.WebSocket");
    this.rooms = new Map();
    this.welcome = null;
    this.session = null;
    this.state = "connecting";
    this.closeError = null;
    this.stats = { connects: 0, reconnects: 0, resent: 0, duplicates: 0, gaps: 0, events: 0, pings: 0, inboxResyncs: 0, delivered: 0, moves: 0 };
    /** The last inbox entry processed, `{ epoch, seq }` (§16): what `inbox_resume` continues from. */
    this.inbox = null;
    /** Per room: the newest chat number received (`want`), the newest acknowledged, one in flight. */
    this._delivery = new Map();
    this._nextId = 0;
    this._pending = new Map();
    this._ws = null;
    this._ready = null;
    this._readyResolve = null;
    this._timers = new Set();
    this._listeners = new Map();
    this._newReadyPromise();
  }

  get user() { return this.welcome?.user; }
  get sid() { return this.welcome?.sid; }
  get connected() { return this.state === "open"; }

  /** Client-level events: "state" (connecting/open/reconnecting/closed), "welcome", "error", "pong",
   * "inbox" (an entry of the user's inbox), "inbox_unread" (the read cursor moved on another device),
   * "inbox_resync" (entries missed while offline were dropped: page `inboxHistory` again). */
  on(type, handler) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(handler);
    return () => this._listeners.get(type)?.delete(handler);
  }

  _emit(type, value) {
    for (const handler of [...(this._listeners.get(type) ?? [])]) {
      try { handler(value); } catch (err) { if (type !== "error") this._report(err); }
    }
  }

  _report(err) {
    this._emit("error", err);
    this.options.onError?.(err);
  }

  _setState(state) {
    this.state = state;
    this._emit("state", state);
    this.options.onState?.(state);
  }

  _newReadyPromise() {
    this._ready = new Promise((resolve) => { this._readyResolve = resolve; });
  }

  // -- requests ----------------------------------------------------------------------------------

  create({ public: isPublic, max, logic, inactive, meta } = {}) {
    return this._room({ t: "create", public: isPublic, max, logic, inactive, meta });
  }

  join(target) {
    const { room, code } = typeof target === "string" ? { room: target } : target ?? {};
    if ((room == null) === (code == null)) throw fail("join takes exactly one of room and code");
    return this._room({ t: "join", room, code });
  }

  joinOrCreate(code, { public: isPublic, max, logic, inactive, meta } = {}) {
    return this._room({ t: "join_or_create", code, public: isPublic, max, logic, inactive, meta });
  }

  async leave(room) {
    this._delivery.delete(roomId(room));
    const id = roomId(room);
    await this.request({ t: "leave", room: id });
    const followed = this.rooms.get(id);
    if (followed) followed.active = false;
    this.rooms.delete(id);
  }

  lobby({ cursor, limit } = {}) { return this.request({ t: "lobby", cursor, limit }); }
  members(room, { cursor, limit } = {}) { return this.request({ t: "members", room: roomId(room), cursor, limit }); }
  presenceSet(room, { data, status } = {}) { return this.request({ t: "presence_set", room: roomId(room), data, status }); }
  typing(room, on) { return this.request({ t: "typing", room: roomId(room), on: Boolean(on) }); }
  history(room, { before, limit } = {}) { return this.request({ t: "history", room: roomId(room), before, limit }); }
  read(room, n) { return this.request({ t: "read", room: roomId(room), n }); }
  /** Move the delivered cursor by hand (the client does it by itself unless `deliver: false`). */
  delivered(room, n) { return this.request({ t: "delivered", room: roomId(room), n }); }
  /** One message's status: `{n, delivered, read, of, users?, next?}`; `who`: "delivered" | "read" pages the ids. */
  chatStatus(room, n, { who, cursor, limit } = {}) { return this.request({ t: "chat_status", room: roomId(room), n, who, cursor, limit }); }
  chatEdit(room, msg, text) { return this.request({ t: "chat_edit", room: roomId(room), msg, text }); }
  chatDelete(room, msg) { return this.request({ t: "chat_delete", room: roomId(room), msg }); }
  send(room, kind, body) { return this.request({ t: "send", room: roomId(room), kind, body }); }
  kick(room, user) { return this.request({ t: "kick", room: roomId(room), user }); }
  hostSet(room, user) { return this.request({ t: "host_set", room: roomId(room), user }); }
  admin(key, op, args) { return this.request({ t: "admin", key, op, args }); }
  /** Put an entry in `user`'s inbox (admin `notify`, service credential `key`): `{ id, epoch, seq, ts }`. */
  notify(key, user, kind, body) { return this.admin(key, "notify", { user, kind, body }); }
  /** Move the inbox read cursor to entry `n`: `{ read, unread }` (other devices get "inbox_unread"). */
  inboxRead(n) { return this.request({ t: "inbox_read", n }); }
  inboxHistory({ before, limit } = {}) { return this.request({ t: "inbox_history", before, limit }); }
  /** The user's rooms with unread chat counts (`welcome.rooms` is the first page, `rooms_next` its cursor). */
  myRooms({ cursor, limit } = {}) { return this.request({ t: "my_rooms", cursor, limit }); }

  /** Post a message; resolves with its ChatAck once committed. Re-sent with its cid after a reconnect. */
  chatSend(room, text, { meta, cid } = {}) {
    cid = cid ?? randomCid();
    return this.request({ t: "chat_send", room: roomId(room), cid, text, meta }, { resend: true });
  }

  /** Compare-and-set of the game state (host only); resolves with the new version. */
  async stateSet(room, { version, state, phase }) {
    const result = await this.request({ t: "state_set", room: roomId(room), version, state, phase });
    if (typeof result?.version !== "number") throw new RoostError("protocol_violation", "state_set result without version");
    return result.version;
  }

  /** Move the connection's expiry with a fresh token (the token source is asked when none is given). */
  async refresh(token) {
    const fresh = token ?? (await this._tokenSource());
    const result = await this.request({ t: "refresh", token: fresh });
    if (this.welcome && typeof result?.exp === "number") this.welcome = { ...this.welcome, exp: result.exp };
    this._scheduleRefresh();
    return result;
  }

  /** Send any request frame (with `t`); resolves with `ok.result`, rejects with RoostError. */
  async request(frame, { resend = false } = {}) {
    if (this.closeError) throw this.closeError;
    this._nextId = (this._nextId % MAX_REQUEST_ID) + 1;
    const id = this._nextId;
    const data = encodeFrame({ t: frame.t, id, ...withoutT(frame) });
    return new Promise((resolve, reject) => {
      const pending = { id, frame, data, resend, resolve, reject };
      this._pending.set(id, pending);
      if (this.state === "open") this._transmit(data);
      else if (!resend) {
        // Not sent yet: it goes out once the connection is ready (after the resumes).
        pending.deferred = true;
      }
    });
  }

  async _room(frame) {
    let snapshot;
    for (let moves = 0; ; moves++) {
      try {
        snapshot = await this.request(frame);
        break;
      } catch (err) {
        if (err.code !== "moved" || moves >= MAX_MOVES || !this._follow(err.url)) throw err;
      }
    }
    let room = this.rooms.get(snapshot.room);
    if (room) room._take(snapshot);
    else {
      room = new Room(this, snapshot);
      this.rooms.set(room.id, room);
    }
    return room;
  }

  /**
   * Follow `moved` (§8.1, a cluster): reconnect to the room's node, then the request goes again. Only
   * while the client is in no room (a connection serves one node's rooms: a client in rooms on two
   * nodes uses a client per node), only to the host it was opened with or one of `followHosts`, and
   * never from wss to ws: the token goes wherever the client connects, and the address comes from the
   * cluster's directory.
   */
  _follow(url) {
    // Another request in flight would be lost with the connection (and may have taken effect): then
    // the application gets `moved` and decides.
    // (The client's own inbox_resume is sent again by the next connection.)
    const busy = [...this._pending.values()].some((pending) => pending.frame.t !== "inbox_resume");
    if (!url || this.rooms.size || busy || !this.options.reconnect) return false;
    let target;
    try { target = new URL(url); } catch { return false; }
    // Hosts compared as the Python client does: lower case, an IPv6 address without its brackets.
    const bare = (host) => host.toLowerCase().replace(/^\[(.*)\]$/, "$1");
    const hosts = [this._openedHost, ...(this.options.followHosts ?? [])].map(bare);
    if (!["ws:", "wss:"].includes(target.protocol) || (this._openedSecure && target.protocol !== "wss:")
        || !hosts.includes(bare(target.hostname))) return false;
    this.url = url;
    this.stats.moves += 1;
    this._moving = true;
    const ws = this._ws;
    this._ws = null;
    this._drop(ws);
    this._lost(1001, "moved to the room's node");
    return true;
  }

  /** Close for good with 1000 (the session stays resumable for the grace; `leave` ends memberships). */
  async close() {
    this._shutdown(new RoostError("closed", "the client was closed", { closeCode: 1000 }));
  }

  /**
   * End the session now (`bye`, §17.2): its rooms see it leave at once (reason "ended", no grace), its
   * session token no longer resumes, and the server closes with 1000. Resolves once closed.
   */
  async end(timeoutMs = 2000) {
    if (this.closeError) return;
    this.options.reconnect = false;
    if (this.state === "open" && this._transmit(encodeFrame({ t: "bye" }))) {
      await new Promise((resolve) => {
        const off = this.on("closed", () => { clearTimeout(timer); off(); resolve(); });
        const timer = setTimeout(() => { off(); resolve(); }, timeoutMs);
      });
    }
    this._shutdown(new RoostError("closed", "the session was ended", { closeCode: 1000 }));
  }

  // -- delivered cursors (§17.1): the latest number per room, at most one in flight ----------------

  _wantDelivered(room, n) {
    if (!this.options.deliver) return;
    const entry = this._delivery.get(room) ?? { want: 0, acked: 0, busy: false };
    if (n <= entry.want) return;
    entry.want = n;
    this._delivery.set(room, entry);
    this._pumpDelivered(room);
  }

  _pumpDelivered(room) {
    const entry = this._delivery.get(room);
    if (!entry || entry.busy || entry.want <= entry.acked || this.state !== "open" || !this.rooms.has(room)) return;
    const n = entry.want;
    entry.busy = true;
    this.stats.delivered += 1;
    this.request({ t: "delivered", room, n }).then(
      () => { entry.busy = false; entry.acked = Math.max(entry.acked, n); this._pumpDelivered(room); },
      (err) => {
        entry.busy = false; // not retried now (a rate limit would loop): the next chat event reports again
        if (err.code === "not_member" || err.code === "not_found") this._delivery.delete(room);
      },
    );
  }

  // -- connection --------------------------------------------------------------------------------

  async _start() {
    const first = await this._connectOnce(false);
    if (first.error) {
      this._shutdown(first.error);
      throw first.error;
    }
  }

  _transmit(data) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(data);
    this._lastSent = Date.now();
    return true;
  }

  /** One connection attempt: open, hello, welcome, then resume/rejoin and re-send. */
  _connectOnce(reconnecting) {
    return new Promise((settle) => {
      let settled = false;
      const done = (outcome) => { if (!settled) { settled = true; settle(outcome); } };
      const credential = this._guestKey
        ? guestProof(this._guestKey, new URL(this.url).host, this.options.guestName).then((guest) => ({ guest }))
        : this._tokenSource().then((token) => ({ token }));
      const startToken = credential.then(({ token, guest }) => {
        if (this.closeError) return done({ error: this.closeError });
        let ws;
        try {
          ws = new this._WebSocket(this.url);
        } catch (err) {
          return done({ error: new RoostError("connection_lost", `cannot open ${this.url}: ${err.message}`), retry: true });
        }
        ws.binaryType = "arraybuffer";
        this._ws = ws;
        let welcomed = false;
        const timer = this._timer(() => {
          this._drop(ws);
          done({ error: new RoostError("connection_lost", "no welcome in time"), retry: true });
        }, this.options.connectTimeoutMs);
        ws.onopen = () => {
          const hello = { t: "hello", v: PROTOCOL_VERSION, token, guest, hb: this.options.hb, session: this.session ?? undefined, agent: this.options.agent };
          ws.send(encodeFrame(hello));
          this._lastSent = Date.now();
        };
        ws.onmessage = (message) => {
          this._lastReceived = Date.now();
          let frame;
          try {
            if (typeof message.data === "string") throw new RoostError("protocol_violation", "a text message from the server");
            frame = decodeFrame(message.data);
          } catch (err) {
            this._report(err);
            this._shutdown(err);
            return;
          }
          if (!welcomed) {
            if (frame.t !== "welcome") {
              const err = new RoostError("protocol_violation", `first server frame is ${frame.t}, not welcome`);
              this._shutdown(err);
              return done({ error: err });
            }
            welcomed = true;
            this._clearTimer(timer);
            this._onWelcome(frame, reconnecting).then(() => done({ ok: true }), (err) => done({ error: err, retry: true }));
            return;
          }
          this._dispatch(frame);
        };
        ws.onerror = () => {};
        ws.onclose = (event) => {
          this._clearTimer(timer);
          if (this._ws !== ws) return;
          this._ws = null;
          const code = event.code ?? 1006;
          const reason = event.reason ?? "";
          if (!welcomed) {
            const retry = mayReconnect(code) && code !== 4002;
            return done({ error: closedError(code, reason), retry, code });
          }
          this._lost(code, reason);
        };
      }, (err) => {
        // At the first connect a failing token source is the application's to fix; on a reconnect it
        // is most likely the same network outage (the backend is unreachable too): keep retrying.
        const error = new RoostError("unauthorized", `the token source failed: ${err?.message ?? err}`);
        if (reconnecting) this._report(error);
        done({ error, retry: reconnecting });
      });
      void startToken;
    });
  }

  async _onWelcome(welcome, reconnecting) {
    this.welcome = welcome;
    this.session = welcome.session;
    this.stats.connects += 1;
    this._emit("welcome", welcome);
    this._startHeartbeat(welcome.hb);
    this._scheduleRefresh();
    const inbox = welcome.inbox ? this._attachInbox(welcome.inbox) : null;
    if (reconnecting) await this._recover(welcome.resumed === true);
    if (inbox) await inbox;
    this._setState("open");
    for (const pending of this._pending.values()) {
      if (pending.deferred) { pending.deferred = false; this._transmit(pending.data); }
    }
    for (const room of this._delivery.keys()) this._pumpDelivered(room);
  }

  /** After a reconnect: resume (or rejoin) every followed room, then re-send in-flight chat_sends. */
  async _recover(resumed) {
    const rooms = [...this.rooms.values()];
    const replies = rooms.map((room) => {
      const frame = resumed ? { t: "resume", room: room.id, epoch: room.epoch, seq: room.seq } : { t: "join", room: room.id };
      // A rejoin's events before its ok are in its snapshot (§5.1): not delivered against the old position.
      if (!resumed) room._rejoining = true;
      return this._direct(frame).then(
        (result) => {
          room._rejoining = false;
          if (!resumed) {
            // A new session: the room's events since are not replayable; hand over a fresh snapshot.
            room._deliver({ t: "sync", room: room.id, epoch: result.epoch, seq: result.seq, ts: Date.now(), snapshot: result, reason: "rejoined" });
          }
        },
        (err) => {
          room._rejoining = false;
          if (err.code === "not_member" || err.code === "not_found" || err.code === "forbidden") {
            room.active = false;
            this.rooms.delete(room.id);
            this._report(new RoostError(err.code, `no longer in room ${room.id}`));
            return;
          }
          throw err;
        },
      );
    });
    for (const pending of this._pending.values()) {
      if (pending.resend && !pending.deferred) {
        this.stats.resent += 1;
        this._transmit(pending.data);
      }
    }
    await Promise.all(replies);
  }

  /** Attach the inbox (§16): resume after the last entry processed, or (a first connection) from the
   * head `welcome.inbox` gave; entries before it are history (`inboxHistory`). A refusal costs the live
   * entries, never the connection. */
  async _attachInbox(head) {
    const from = this.inbox ?? { epoch: head.epoch, seq: head.seq };
    this.inbox = from; // the replay that follows the ok continues from here
    try {
      const result = await this._direct({ t: "inbox_resume", epoch: from.epoch, seq: from.seq });
      if (result.resync) {
        this.inbox = { epoch: result.head.epoch, seq: result.head.seq };
        this.stats.inboxResyncs += 1;
        this._emit("inbox_resync", result.head);
      }
    } catch (err) {
      if (err?.code === "connection_lost") return;
      this._report(err);
    }
  }

  /** A request sent on the current socket at once, not queued behind readiness (for resume). */
  _direct(frame) {
    this._nextId = (this._nextId % MAX_REQUEST_ID) + 1;
    const id = this._nextId;
    const data = encodeFrame({ t: frame.t, id, ...withoutT(frame) });
    return new Promise((resolve, reject) => {
      this._pending.set(id, { id, frame, data, resend: false, resolve, reject, direct: true });
      this._transmit(data);
    });
  }

  _dispatch(frame) {
    if (ROOM_EVENTS.has(frame.t)) {
      const room = this.rooms.get(frame.room);
      if (!room || room._rejoining) return; // not followed (left, or an event before the join's ok: in its snapshot)
      room._deliver(frame);
      if (frame.t === "room_closed" || (frame.t === "presence" && (frame.leave ?? []).includes(this.user))) {
        room.active = false;
        this.rooms.delete(room.id);
        this._delivery.delete(room.id);
      }
      return;
    }
    if (frame.t === "inbox") {
      const known = this.inbox;
      if (known && known.epoch === frame.epoch && frame.seq <= known.seq) {
        this.stats.duplicates += 1;
        return;
      }
      this.inbox = { epoch: frame.epoch, seq: frame.seq };
      this.stats.events += 1;
      this._emit("inbox", frame);
      return;
    }
    if (frame.t === "inbox_unread") {
      this._emit("inbox_unread", frame);
      return;
    }
    if (frame.t === "receipts") {
      this.rooms.get(frame.room)?._notify(frame);
      return;
    }
    if (frame.t === "ok" || frame.t === "error") {
      if (frame.id == null) {
        this._report(new RoostError(frame.code ?? "internal", frame.message ?? ""));
        return;
      }
      const pending = this._pending.get(frame.id);
      if (!pending) return;
      this._pending.delete(frame.id);
      if (frame.t === "ok") pending.resolve(frame.result);
      else {
        const code = ERROR_CODES.includes(frame.code) ? frame.code : "internal";
        pending.reject(new RoostError(code, frame.message ?? "", { retryMs: frame.retry_ms ?? null, requestId: frame.id, wireCode: frame.code, url: frame.url ?? null }));
      }
      return;
    }
    if (frame.t === "pong") {
      this.lastPong = frame;
      this._emit("pong", frame);
      return;
    }
    const err = new RoostError("protocol_violation", `unexpected ${frame.t} frame`);
    this._shutdown(err);
  }

  _startHeartbeat(hbMs) {
    this._clearTimer(this._hbTimer);
    const silence = 2.5 * hbMs;
    const tick = () => {
      const now = Date.now();
      if (now - this._lastReceived >= silence) {
        // A half-open link: drop it without waiting for a Close (§3.2), then reconnect.
        const ws = this._ws;
        this._ws = null;
        this._drop(ws);
        this._lost(1006, "server silent");
        return;
      }
      if (now - this._lastSent >= hbMs) {
        this.stats.pings += 1;
        this._transmit(encodeFrame({ t: "ping" }));
      }
      this._hbTimer = this._timer(tick, Math.min(hbMs, silence) / 4);
    };
    this._hbTimer = this._timer(tick, hbMs / 4);
  }

  _scheduleRefresh() {
    this._clearTimer(this._refreshTimer);
    if (!this.welcome || this._guestKey) return; // a guest reconnects with a fresh proof instead
    const serverOffset = this.welcome.time - Date.now();
    const due = this.welcome.exp * 1000 - serverOffset - this.options.refreshMarginMs - Date.now();
    this._refreshTimer = this._timer(() => {
      this.refresh().catch((err) => this._report(err));
    }, Math.max(1000, Math.min(due, 2 ** 31 - 1)));
  }

  _drop(ws) {
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onopen = null;
    ws.onerror = () => {};
    try {
      if (typeof ws.terminate === "function") ws.terminate(); // Node's ws: drop TCP at once
      else ws.close(1000, "dropped");
    } catch { /* already closing */ }
  }

  /** The link ended after a welcome: fail what cannot be re-sent, then reconnect or stop. */
  _lost(code, reason) {
    this._clearTimer(this._hbTimer);
    this._clearTimer(this._refreshTimer);
    if (this.closeError) return;
    this._ws = null;
    for (const [id, pending] of this._pending) {
      if (!pending.resend || pending.direct) {
        this._pending.delete(id);
        pending.reject(new RoostError("connection_lost", `connection lost before the reply to ${pending.frame.t}`, { closeCode: code }));
      }
    }
    if (!this.options.reconnect || !mayReconnect(code)) {
      this._shutdown(closedError(code, reason));
      return;
    }
    this._setState("reconnecting");
    this._reconnectLoop(code);
  }

  async _reconnectLoop(lastCode) {
    for (let attempt = 0; !this.closeError; attempt++) {
      // Exponential backoff with full jitter: a restarted server is not hit by every client at once.
      const cap = Math.min(this.options.backoffMaxMs, this.options.backoffBaseMs * 2 ** Math.min(attempt, 20));
      const moving = this._moving; // a move is not a failure: no backoff before its first attempt
      this._moving = false;
      await new Promise((resolve) => this._timer(resolve, moving && attempt === 0 ? 0 : Math.random() * cap));
      if (this.closeError) return;
      const outcome = await this._connectOnce(true);
      if (outcome.ok) {
        this.stats.reconnects += 1;
        return;
      }
      lastCode = outcome.code ?? lastCode;
      if (!outcome.retry) {
        this._shutdown(outcome.error);
        return;
      }
    }
  }

  _shutdown(error) {
    if (this.closeError) return;
    this.closeError = error;
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    for (const pending of this._pending.values()) pending.reject(error);
    this._pending.clear();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onmessage = ws.onopen = null;
      ws.onclose = null;
      try { ws.close(1000); } catch { /* not open yet */ }
    }
    this._setState("closed");
    this._emit("closed", error);
  }

  _timer(fn, ms) {
    const timer = setTimeout(() => { this._timers.delete(timer); fn(); }, ms);
    this._timers.add(timer);
    return timer;
  }

  _clearTimer(timer) {
    if (timer == null) return;
    clearTimeout(timer);
    this._timers.delete(timer);
  }
}

function closedError(code, reason) {
  return new RoostError("closed", `connection closed with ${code} ${closeName(code)}${reason ? ` (${reason})` : ""}`, { closeCode: code, closeReason: reason });
}

function roomId(room) {
  const id = typeof room === "string" ? room : room?.id;
  if (typeof id !== "string") throw fail("a room id or Room is needed");
  return id;
}

function withoutT(frame) {
  const { t, ...rest } = frame;
  void t;
  return rest;
}

function randomCid() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export default Roost;
