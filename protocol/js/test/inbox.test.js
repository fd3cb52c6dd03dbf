// The inbox (PROTOCOL.md §16) in roost.js, against a real `roost serve --dev` process: `inbox` events on
// every device, `welcome.inbox` and `welcome.rooms`, and the inbox resumed exactly after a cut link.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";

import { Roost, RoostError } from "../roost.js";
import { startServer } from "./server.js";

let server;
before(async () => { server = await startServer(); });
after(async () => { await server.stop(); });

const connect = async (user, options = {}) =>
  Roost.connect(options.url ?? server.url, { token: await server.token(user), WebSocket, ...options });
const nextInbox = (client, filter = () => true) =>
  new Promise((resolve) => { const off = client.on("inbox", (e) => { if (filter(e)) { off(); resolve(e); } }); });

describe("inbox", () => {
  test("an entry reaches both devices of the user; welcome tells the unread count and the rooms", async () => {
    const phone = await connect("ines");
    const laptop = await connect("ines");
    const ops = await connect("ops-js");
    try {
      assert.deepEqual(phone.welcome.inbox, { epoch: 1, seq: 0, first: 1, read: 0, unread: 0 });
      const room = await phone.create({});
      const onPhone = nextInbox(phone);
      const onLaptop = nextInbox(laptop);
      const result = await ops.notify(server.serviceKey, "ines", "invite", { room: room.id });
      assert.equal(result.seq, 1);
      for (const event of await Promise.all([onPhone, onLaptop])) {
        assert.deepEqual([event.t, event.seq, event.kind, event.body], ["inbox", 1, "invite", { room: room.id }]);
      }
      assert.deepEqual(phone.inbox, { epoch: 1, seq: 1 });
      await assert.rejects(ops.notify("wrong-key", "ines", "x"), (e) => e instanceof RoostError && e.code === "unauthorized");
      const fresh = await connect("ines");
      try {
        assert.equal(fresh.welcome.inbox.unread, 1);
        assert.deepEqual(fresh.welcome.rooms.map((r) => r.room), [room.id]);
        const moved = new Promise((resolve) => phone.on("inbox_unread", resolve));
        assert.deepEqual(await fresh.inboxRead(1), { read: 1, unread: 0 });
        assert.deepEqual(await moved, { t: "inbox_unread", read: 1, unread: 0 });
        const page = await fresh.inboxHistory({ limit: 10 });
        assert.deepEqual(page.entries.map((e) => e.kind), ["invite"]);
        assert.deepEqual((await fresh.myRooms()).rooms.map((r) => r.room), [room.id]);
      } finally {
        await fresh.close();
      }
    } finally {
      await phone.close();
      await laptop.close();
      await ops.close();
    }
  });

  test("a cut link resumes the inbox exactly: the missed entries in order, no duplicate, then live", async () => {
    const proxy = await tcpProxy(new URL(server.url).port);
    const jo = await connect("jo", { url: `ws://127.0.0.1:${proxy.port}/`, backoffBaseMs: 50 });
    const ops = await connect("ops-js2");
    try {
      const seen = [];
      jo.on("inbox", (e) => seen.push(e.seq));
      await ops.notify(server.serviceKey, "jo", "n", 1);
      while (seen.length < 1) await new Promise((resolve) => setTimeout(resolve, 10));
      proxy.cut();
      for (const k of [2, 3, 4]) await ops.notify(server.serviceKey, "jo", "n", k);
      const last = nextInbox(jo, (e) => e.seq === 5);
      while (seen.length < 4) await new Promise((resolve) => setTimeout(resolve, 10));
      await ops.notify(server.serviceKey, "jo", "n", 5);
      await last;
      assert.deepEqual(seen, [1, 2, 3, 4, 5]);
      assert.equal(jo.stats.reconnects, 1);
      assert.equal(jo.stats.inboxResyncs, 0);
    } finally {
      await jo.close();
      await ops.close();
      proxy.close();
    }
  });
});

/** A TCP proxy whose cut() destroys every connection through it (as in client.test.js). */
async function tcpProxy(targetPort) {
  const sockets = new Set();
  const srv = net.createServer((client) => {
    const upstream = net.connect(Number(targetPort), "127.0.0.1");
    for (const s of [client, upstream]) { sockets.add(s); s.on("error", () => {}); s.on("close", () => sockets.delete(s)); }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return {
    port: srv.address().port,
    cut() { for (const s of sockets) s.destroy(); },
    close() { this.cut(); srv.close(); },
  };
}
