// roost.js under Node's test runner against a real `roost serve --dev` process.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import { CLOSE_CODES, Roost, RoostError, decodeFrame, encodeFrame, guestProof, mayReconnect, toWire } from "../roost.js";
import { startServer } from "./server.js";

let server;
before(async () => { server = await startServer(); });
after(async () => { await server.stop(); });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const closed = (client) => (client.closeError ? Promise.resolve(client.closeError) : new Promise((resolve) => client.on("closed", resolve)));
const opened = (client) => (client.state === "open" ? Promise.resolve() : new Promise((resolve) => client.on("state", (s) => s === "open" && resolve())));

const connect = async (user, options = {}) =>
  Roost.connect(options.url ?? server.url, { token: await server.token(user), WebSocket, ...options });

describe("values", () => {
  test("integers are checked against 2^53, Dates sent as ms, undefined left out", () => {
    assert.throws(() => toWire({ n: 2 ** 53 }), (e) => e instanceof RoostError && e.code === "bad_argument");
    assert.equal(toWire(2 ** 53 - 1), 2 ** 53 - 1);
    assert.equal(toWire(new Date(1795000000000)), 1795000000000);
    assert.deepEqual(toWire({ a: undefined, b: [undefined, 1], c: new Uint8Array([1]) }), { b: [null, 1], c: new Uint8Array([1]) });
    assert.equal(toWire(2n ** 60n), 2n ** 60n);
    assert.throws(() => toWire(2n ** 64n), RoostError);
    assert.throws(() => toWire(() => 1), RoostError);
    assert.throws(() => toWire(new Map()), RoostError);
  });

  test("frames match PROTOCOL.md §13 byte for byte, 64-bit integers come back exact", () => {
    const hex = (bytes) => Buffer.from(bytes).toString("hex");
    assert.equal(hex(encodeFrame({ t: "ping" })), "81a174a470696e67");
    assert.equal(hex(encodeFrame({ t: "hello", v: 1, hb: 10000 })), "83a174a568656c6c6fa17601a26862cd2710");
    const ok = decodeFrame(Buffer.from("83a174a26f6ba2696407a6726573756c7483a26964a36d2d31a16e01a27473cf000001a1ee565e00", "hex"));
    assert.deepEqual(ok, { t: "ok", id: 7, result: { id: "m-1", n: 1, ts: 1795000000000 } });
    const big = decodeFrame(encodeFrame({ t: "x", n: 2n ** 62n }));
    assert.equal(big.n, 2n ** 62n);
    assert.throws(() => decodeFrame(new Uint8Array([0x93, 1, 2, 3])), (e) => e.code === "protocol_violation");
    assert.throws(() => decodeFrame(new Uint8Array([0xc1])), (e) => e.code === "protocol_violation");
  });

  test("the close-code table follows the rule of §8.2", () => {
    for (const [code, entry] of Object.entries(CLOSE_CODES)) assert.equal(mayReconnect(Number(code)), entry.reconnect, code);
    assert.equal(mayReconnect(4499), true);
    assert.equal(mayReconnect(4999), false);
    assert.equal(mayReconnect(1005), false);
  });
});

describe("against roost serve", () => {
  test("create, join by code, chat, history, read receipts, presence and typing", async () => {
    const alice = await connect("alice");
    const bob = await connect("bob");
    try {
      const room = await alice.create({ public: true, max: 4, meta: { title: "t", at: new Date(0) } });
      assert.equal(room.snapshot.meta.at, 0);
      const joined = alice.rooms.get(room.id).next("presence", (e) => (e.join ?? []).some((m) => m.user === "bob"));
      const bobRoom = await bob.join({ code: room.snapshot.code.toLowerCase() });
      await joined;
      const chat = bobRoom.next("chat");
      const ack = await alice.chatSend(room, "hello");
      assert.equal(ack.n, 1);
      assert.equal((await chat).msg.text, "hello");
      const receipt = room.next("receipt");
      await bob.read(bobRoom, 1);
      assert.deepEqual([(await receipt).user, (await receipt).n], ["bob", 1]);
      const typing = room.next("presence", (e) => (e.update ?? []).some((m) => m.user === "bob" && m.typing));
      await bob.typing(bobRoom, true);
      await typing;
      const page = await bob.history(bobRoom, { limit: 10 });
      assert.deepEqual(page.messages.map((m) => m.text), ["hello"]);
      const lobby = await bob.lobby();
      assert.ok(lobby.rooms.some((r) => r.room === room.id));
      const members = await bob.members(bobRoom);
      assert.deepEqual(members.members.map((m) => m.user).sort(), ["alice", "bob"]);
      await bob.presenceSet(bobRoom, { status: "away", data: { emoji: ":)" } });
      assert.equal(typeof (await alice.stateSet(room, { version: room.snapshot.version, state: { x: 1 } })), "number");
      const relayed = room.next("message");
      await bob.send(bobRoom, "wave", { hi: true });
      assert.equal((await relayed).sender, "bob");
      await bob.leave(bobRoom);
      assert.equal(bob.rooms.has(room.id), false);
      assert.equal(alice.stats.gaps + alice.stats.duplicates, 0);
    } finally {
      await alice.close();
      await bob.close();
    }
  });

  test("refused requests reject with RoostError code and retryMs; bad arguments send nothing", async () => {
    const carol = await connect("carol");
    try {
      await assert.rejects(carol.join({ code: "ZZZZZZZZ" }), (e) => e instanceof RoostError && e.code === "not_found");
      const room = await carol.create({});
      await assert.rejects(carol.stateSet(room, { version: 99, state: {} }), (e) => e.code === "conflict");
      await assert.rejects(carol.chatSend(room, "x".repeat(5000)), (e) => e.code === "too_long");
      assert.throws(() => carol.join({}), (e) => e.code === "bad_argument");
      await assert.rejects(carol.read(room, 2 ** 53), (e) => e.code === "bad_argument");
      await assert.rejects(carol.create({ logic: "no-such-logic" }), (e) => e.code === "unsupported");
    } finally {
      await carol.close();
    }
    await assert.rejects(carol.lobby(), (e) => e.code === "closed" && e.closeCode === 1000);
  });

  test("a bad token is a closed error with 4500 and no reconnect; tokens never go in the URL", async () => {
    await assert.rejects(Roost.connect(server.url, { token: "x.y.z", WebSocket }), (e) => e.code === "closed" && e.closeCode === 4500);
    assert.throws(() => new Roost(`${server.url}?token=abc`, { token: "t", WebSocket }), (e) => e.code === "bad_argument");
    await assert.rejects(Roost.connect(server.url, { token: async () => { throw new Error("backend down"); }, WebSocket }),
      (e) => e.code === "unauthorized");
  });

  test("refresh before exp asks the token source again", async () => {
    let calls = 0;
    const source = async () => { calls += 1; return server.token("dave"); };
    const dave = await Roost.connect(server.url, { token: source, WebSocket, refreshMarginMs: 3600 * 1000 - 1000 });
    try {
      const exp = dave.welcome.exp;
      await new Promise((resolve) => setTimeout(resolve, 2300));
      assert.ok(calls >= 2, `token source called ${calls} times`);
      assert.ok(dave.welcome.exp >= exp);
      assert.equal(dave.state, "open");
    } finally {
      await dave.close();
    }
  });

  test("joining a full room rejects with RoostError room_full", async () => {
    const [gina, hank, ivan] = [await connect("gina"), await connect("hank"), await connect("ivan")];
    try {
      const room = await gina.create({ max: 2 });
      await hank.join({ code: room.snapshot.code });
      await assert.rejects(ivan.join({ code: room.snapshot.code }), (e) => e instanceof RoostError && e.code === "room_full");
      assert.equal(ivan.rooms.has(room.id), false);
      assert.equal(ivan.state, "open");
    } finally {
      await gina.close();
      await hank.close();
      await ivan.close();
    }
  });

  test("a second connection resuming the session supersedes the first: it ends with 4504, no reconnect", async () => {
    const judy = await connect("judy", { backoffBaseMs: 20 });
    const second = new WebSocket(server.url);
    try {
      const states = [];
      judy.on("state", (s) => states.push(s));
      second.binaryType = "arraybuffer";
      const welcome = new Promise((resolve) => second.on("message", (data) => resolve(decodeFrame(new Uint8Array(data)))));
      await new Promise((resolve) => second.on("open", resolve));
      second.send(encodeFrame({ t: "hello", v: 1, token: await server.token("judy"), session: judy.session }));
      const frame = await welcome;
      assert.equal(frame.t, "welcome");
      assert.equal(frame.resumed, true);
      assert.equal(frame.sid, judy.sid);
      const err = await closed(judy);
      assert.ok(err instanceof RoostError);
      assert.equal(err.code, "closed");
      assert.equal(err.closeCode, 4504);
      await sleep(300); // no reconnect loop: the takeover stands
      assert.deepEqual(states, ["closed"]);
      assert.equal(judy.stats.connects, 1);
      assert.equal(judy.stats.reconnects, 0);
      assert.equal(second.readyState, WebSocket.OPEN);
      await assert.rejects(judy.lobby(), (e) => e.code === "closed" && e.closeCode === 4504);
    } finally {
      await second.close();
      await judy.close();
    }
  });

  test("a cut TCP connection reconnects, resumes with no gap or duplicate, and re-sends chatSend by cid", async () => {
    const proxy = await tcpProxy(new URL(server.url).port);
    const erin = await connect("erin", { url: `ws://127.0.0.1:${proxy.port}/`, backoffBaseMs: 50 });
    const frank = await connect("frank");
    try {
      const room = await erin.create({});
      await frank.join({ code: room.snapshot.code });
      const texts = [];
      room.on("chat", (e) => texts.push(e.msg.text));
      await frank.chatSend(room.id, "before");
      proxy.cut();
      await frank.chatSend(room.id, "during 1");
      await frank.chatSend(room.id, "during 2");
      const pending = erin.chatSend(room, "mine", { cid: "cid-1" });
      const ack = await pending; // its chat event precedes its ok (§3.1); it may beat the resumes' oks
      if (erin.state !== "open") await new Promise((resolve) => erin.on("state", (s) => s === "open" && resolve()));
      const after = room.next("chat", (e) => e.msg.text === "after"); // before the send: it may beat frank's ok
      await frank.chatSend(room.id, "after");
      await after;
      assert.deepEqual(texts.filter((t) => t !== "mine"), ["before", "during 1", "during 2", "after"]);
      assert.equal(texts.filter((t) => t === "mine").length, 1);
      assert.equal(ack.n >= 2, true);
      assert.equal(erin.stats.reconnects, 1);
      assert.equal(erin.stats.gaps, 0);
    } finally {
      await erin.close();
      await frank.close();
      proxy.close();
    }
  });
});

describe("short token lifetimes and reconnect grace (token_leeway 0, reconnect_grace 1 s)", () => {
  let short;
  before(async () => { short = await startServer({ ROOST_TOKEN_LEEWAY: "0", ROOST_RECONNECT_GRACE: "1" }); });
  after(async () => { await short.stop(); });

  test("4002 with a token function: a fresh token, a reconnect that resumes, rooms kept", async () => {
    let calls = 0;
    // Both minted up front: `roost token` is a Python process (~1 s on a loaded machine), and a
    // reconnect that waits for it can outlast the 1 s reconnect grace (then welcome.resumed is false).
    const fresh = await short.mint("kate", "1h");
    const first = await short.mint("kate", "3s");
    const source = async () => { calls += 1; return calls === 1 ? first : fresh; };
    // A negative margin: no refresh before exp, so the server closes the connection with 4002.
    const kate = await Roost.connect(short.url, { token: source, WebSocket, refreshMarginMs: -60000, backoffBaseMs: 20, hb: 1000 });
    try {
      const room = await kate.create({});
      const exp = kate.welcome.exp;
      const states = [];
      kate.on("state", (s) => states.push(s));
      await new Promise((resolve) => kate.on("welcome", resolve));
      await opened(kate);
      await sleep(10); // stats.reconnects is counted just after the "open" state
      assert.deepEqual(states, ["reconnecting", "open"]);
      assert.equal(calls, 2);
      assert.ok(kate.welcome.exp > exp);
      assert.equal(kate.welcome.resumed, true);
      assert.equal(kate.stats.reconnects, 1);
      assert.equal(kate.rooms.has(room.id), true);
      assert.equal((await kate.chatSend(room, "still here")).n, 1);
    } finally {
      await kate.close();
    }
  });

  test("4002 with a static token: the client ends with a closed RoostError naming token_expired", async () => {
    const liam = await Roost.connect(short.url, { token: await short.mint("liam", "3s"), WebSocket, refreshMarginMs: -60000, backoffBaseMs: 20, hb: 1000 });
    try {
      const err = await closed(liam);
      assert.ok(err instanceof RoostError);
      assert.equal(err.code, "closed");
      assert.equal(err.closeCode, 4002);
      assert.match(err.message, /token_expired/);
      assert.equal(liam.state, "closed");
      assert.equal(liam.stats.reconnects, 0);
    } finally {
      await liam.close();
    }
  });

  test("welcome.resumed false after the grace: each room is rejoined and handed over as a sync", async () => {
    const proxy = await tcpProxy(new URL(short.url).port);
    const mia = await Roost.connect(`ws://127.0.0.1:${proxy.port}/`, { token: await short.token("mia"), WebSocket, backoffBaseMs: 50, backoffMaxMs: 200 });
    const noah = await Roost.connect(short.url, { token: await short.token("noah"), WebSocket });
    try {
      const room = await mia.create({});
      await noah.join({ code: room.snapshot.code });
      const session = mia.sid;
      proxy.down = true; // refuse every connection for longer than the 1 s grace
      proxy.cut();
      await sleep(100);
      await noah.chatSend(room.id, "while away");
      await sleep(1600);
      const sync = room.next("sync");
      proxy.down = false;
      const event = await sync;
      await opened(mia);
      assert.equal(mia.welcome.resumed, false);
      assert.notEqual(mia.sid, session);
      assert.equal(event.reason, "rejoined");
      assert.equal(event.room, room.id);
      assert.equal(event.snapshot.room, room.id);
      assert.deepEqual([room.epoch, room.seq], [event.epoch, event.seq]);
      assert.equal(mia.rooms.get(room.id), room);
      const chat = room.next("chat");
      await noah.chatSend(room.id, "after");
      assert.equal((await chat).msg.text, "after");
      assert.equal(mia.stats.gaps, 0);
    } finally {
      await mia.close();
      await noah.close();
      proxy.close();
    }
  });
});

/** A TCP proxy whose cut() destroys every connection through it (the server sees a dropped link). */
export async function tcpProxy(targetPort) {
  const sockets = new Set();
  const proxy = { down: false };
  const srv = net.createServer((client) => {
    if (proxy.down) { client.destroy(); return; } // the link is down: refuse at once
    const upstream = net.connect(Number(targetPort), "127.0.0.1");
    for (const s of [client, upstream]) { sockets.add(s); s.on("error", () => {}); s.on("close", () => sockets.delete(s)); }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return Object.assign(proxy, {
    port: srv.address().port,
    cut() { for (const s of sockets) s.destroy(); },
    close() { this.cut(); srv.close(); },
  });
}

describe("guests (roost serve --dev allows them)", () => {
  test("a device key signs in as a guest, the same key as the same user, and a proof is single use", async () => {
    const key = await Roost.guestKey();
    const first = await Roost.connect(server.url, { guestKey: key, guestName: "Pip", WebSocket });
    const second = await Roost.connect(server.url, { guestKey: key, WebSocket });
    try {
      assert.match(first.welcome.user, /^~g[A-Za-z0-9_-]{22}$/);
      assert.equal(first.welcome.name, "Pip");
      assert.equal(second.welcome.user, first.welcome.user);
      const room = await first.create({});
      await second.join({ room: room.id });
      // A captured proof replayed on another connection is refused with 4500.
      const proof = await guestProof(key, new URL(server.url).host);
      const codes = [];
      for (let i = 0; i < 2; i++) {
        const ws = new WebSocket(server.url);
        ws.binaryType = "arraybuffer";
        await new Promise((resolve) => ws.on("open", resolve));
        ws.send(encodeFrame({ t: "hello", v: 1, guest: proof }));
        codes.push(await new Promise((resolve) => {
          ws.on("message", () => { ws.close(1000); resolve("welcome"); });
          ws.on("close", (code) => resolve(code));
        }));
      }
      assert.deepEqual(codes, ["welcome", 4500]);
    } finally {
      await first.close();
      await second.close();
    }
    assert.throws(() => new Roost(server.url, { guestKey: key, token: "t", WebSocket }), RoostError);
  });
});

describe("delivery status and ending a session (§17)", () => {
  test("three members: delivered cursors sent by the client itself, receipts to the author, chatStatus", async () => {
    const [ann, bob, cat] = [await connect("ann15"), await connect("bob15"), await connect("cat15")];
    try {
      const room = await ann.create();
      await bob.join(room.id);
      await cat.join(room.id);
      const statuses = new Map();
      room.on("receipts", (frame) => { for (const s of frame.msgs) statuses.set(s.n, [s.delivered, s.read, s.of]); });
      const allDelivered = room.next("receipts", (f) => f.msgs.some((s) => s.n === 20 && s.delivered === 2));
      for (let i = 0; i < 20; i++) await ann.chatSend(room, `line ${i}`);
      await allDelivered;
      assert.deepEqual(statuses.get(20), [2, 0, 2]);
      assert.ok(bob.stats.delivered >= 1 && bob.stats.delivered < 20, `bob sent ${bob.stats.delivered} delivered frames`);
      const read = room.next("receipts", (f) => f.msgs.some((s) => s.n === 5 && s.read === 1));
      await bob.read(bob.rooms.get(room.id), 5);
      await read;
      const page = await ann.chatStatus(room, 5, { who: "read" });
      assert.deepEqual([page.delivered, page.read, page.of, page.users], [2, 1, 2, ["bob15"]]);
      await assert.rejects(ann.chatStatus(room, 999), (e) => e.code === "not_found");
    } finally {
      await Promise.all([ann.close(), bob.close(), cat.close()]);
    }
  });

  test("end(): the others see the member leave at once with reason ended, and the session cannot resume", async () => {
    const ann = await connect("ann16");
    const bob = await connect("bob16");
    try {
      const room = await ann.create();
      await bob.join(room.id);
      const session = bob.session;
      const left = room.next("presence", (e) => (e.leave ?? []).includes("bob16"));
      await bob.end();
      assert.equal(bob.state, "closed");
      assert.equal((await left).reason, "ended");
      // the ended session's token: a new session, not resumed
      const ws = new WebSocket(server.url);
      ws.binaryType = "arraybuffer";
      await new Promise((resolve) => ws.once("open", resolve));
      const welcome = new Promise((resolve) => ws.once("message", (data) => resolve(decodeFrame(new Uint8Array(data)))));
      ws.send(encodeFrame({ t: "hello", v: 1, token: await server.token("bob16"), session }));
      const frame = await welcome;
      assert.equal(frame.t, "welcome");
      assert.equal(frame.resumed, false);
      assert.notEqual(frame.sid, bob.welcome.sid);
      ws.close();
    } finally {
      await ann.close();
    }
  });
});
