// roost.js against a node of two workers (`roost serve --workers 2 --cluster`, the machine's Redis under a
// key prefix of this test's own): room requests through the node's port are answered `moved`, and the
// client follows them to the room's worker by itself, only to its own host, never from wss to ws.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import { Roost, RoostError } from "../roost.js";
import { startServer } from "./server.js";

const PREFIX = `roost-js-test-${randomBytes(6).toString("hex")}:`;
let server;
before(async () => {
  server = await startServer({ ROOST_CLUSTER_PREFIX: PREFIX, ROOST_LEASE_PERIOD: "2" },
    ["--workers", "2", "--cluster", "redis://127.0.0.1:6379/0"]);
});
after(async () => {
  await server.stop();
  await new Promise((resolve) => execFile("sh", ["-c", `redis-cli --scan --pattern '${PREFIX}*' | xargs -r redis-cli del`], resolve));
});

const connect = async (user, options = {}) =>
  Roost.connect(options.url ?? server.url, { token: await server.token(user), WebSocket, backoffBaseMs: 50, ...options });
const nextChat = (room) => new Promise((resolve) => { const off = room.on("chat", (e) => { off(); resolve(e); }); });

describe("a node of two workers", () => {
  test("a room request through the node's port follows moved to the room's worker; members chat there", async () => {
    const ann = await connect("ann");
    const room = await ann.create();
    assert.equal(ann.stats.moves, 1);
    assert.notEqual(ann.url, server.url);
    const bob = await connect("bob");
    const joined = await bob.join({ code: room.snapshot.code });
    assert.equal(joined.id, room.id);
    assert.equal(bob.url, ann.url);
    const heard = nextChat(room);
    await bob.chatSend(joined, "across the node");
    assert.equal((await heard).msg.text, "across the node");
    await Promise.all([ann.close(), bob.close()]);
  });

  test("a client in a room is not moved away from it; moved to another host is not followed", async () => {
    const cat = await connect("cat");
    await cat.create();
    // A room on the other worker: the node's port hands each connection to either.
    let dan, elsewhere;
    for (let tries = 0; tries < 20 && (!dan || dan.url === cat.url); tries++) {
      if (dan) await dan.close();
      dan = await connect("dan");
      elsewhere = await dan.create();
    }
    assert.notEqual(dan.url, cat.url);
    // cat is in a room: it is told where the other room is instead of leaving its own
    const refused = await cat.join({ code: elsewhere.snapshot.code }).catch((err) => err);
    assert.ok(refused instanceof RoostError && refused.code === "moved" && refused.url === dan.url, String(refused));
    assert.equal(cat.rooms.size, 1);
    assert.equal(cat._follow("ws://another-host.example:1234/"), false);
    assert.equal(cat.stats.moves, 1);
    await Promise.all([cat.close(), dan.close()]);
  });
});

// Review 2: _follow (roost.js:507-522) calls _lost, which rejects every other request in flight on the
// connection (roost.js:851-855) with connection_lost: a lobby sent right after a create that is moved
// (through the node's shared port) is lost, although the worker answered it. Fixed: the client moves
// only with nothing else in flight; otherwise the create is answered `moved` to the application.
test("a request in flight is not lost when another one follows moved", async () => {
  const lost = [];
  for (let attempt = 0; attempt < 5; attempt++) {
    const ann = await Roost.connect(server.url, { token: await server.token(`ann${attempt}`), WebSocket, backoffBaseMs: 50 });
    const created = ann.create().catch((err) => err);  // through the node's port: moved to a worker's own port
    const lobby = ann.lobby().catch((err) => err);  // sent right behind it, on the same connection
    const made = await created;
    // followed (nothing else was in flight yet) or handed to the application, never lost
    assert.ok(!(made instanceof Error) || (made.code === "moved" && made.url), String(made));
    const outcome = await lobby;
    if (outcome instanceof Error) lost.push(outcome);
    await ann.close();
  }
  assert.equal(lost.length, 0, `${lost.length} of 5 lobby requests lost to another request's move: ${lost[0]}`);
});
