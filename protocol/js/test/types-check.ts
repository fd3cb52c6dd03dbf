// Compiled by `tsc --noEmit` only: the declarations describe a real use of the client.
import Roost, { RoostError, type ChatEvent, type InboxEvent } from "../roost.js";

async function demo(url: string): Promise<void> {
  const client = await Roost.connect(url, { token: async () => "token" });
  const room = await client.create({ public: true, max: 2, logic: "tictactoe", inactive: "end" });
  room.on("chat", (event: ChatEvent) => console.log(event.msg.text, event.seq));
  room.on("state", (event) => console.log(event.phase, event.version));
  const ack = await client.chatSend(room, "hi", { meta: { at: new Date() } });
  const version: number = await client.stateSet(room, { version: room.snapshot.version, state: { n: 1n } });
  try { await client.join({ code: "ABCD1234" }); } catch (err) { if (err instanceof RoostError) console.log(err.code, err.retryMs); }
  console.log(ack.n, version, client.stats.reconnects);
  client.on("inbox", (entry: InboxEvent) => console.log(entry.kind, entry.seq, client.welcome?.inbox?.unread));
  const page = await client.inboxHistory({ limit: 10 });
  const rooms = await client.myRooms({ cursor: client.welcome?.rooms_next });
  console.log(page.entries.length, rooms.rooms.map((r) => r.unread), (await client.inboxRead(1)).unread);
  room.on("receipts", (frame) => frame.msgs.forEach((s) => console.log(s.n, s.delivered, s.read, s.of)));
  const status = await client.chatStatus(room, ack.n, { who: "read", limit: 10 });
  console.log(ack.n, version, client.stats.reconnects, client.stats.delivered, status.users?.length, status.next);
  await client.end();
}
void demo;
