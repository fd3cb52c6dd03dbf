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
