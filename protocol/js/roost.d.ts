// Type declarations of roost.js (checked by `tsc --noEmit` in CI). Records follow PROTOCOL.md §12.

export declare const PROTOCOL_VERSION: 1;

export interface CloseCodeInfo { readonly name: string; readonly reconnect: boolean }
export declare const CLOSE_CODES: Readonly<Record<number, CloseCodeInfo>>;
export declare function mayReconnect(code: number): boolean;
export declare function closeName(code: number): string;

export type ErrorCode =
  | "malformed" | "not_a_map" | "unknown_type" | "missing_field" | "bad_field" | "too_long" | "too_deep"
  | "too_large" | "unauthorized" | "token_expired" | "forbidden" | "not_found" | "not_member" | "room_full"
  | "conflict" | "invalid_state" | "rate_limited" | "limit_reached" | "unsupported" | "internal"
  | "moved" | "unavailable";
export type ClientErrorCode = "connection_lost" | "closed" | "bad_argument" | "protocol_violation" | "timeout";
export declare const ERROR_CODES: readonly ErrorCode[];

export declare class RoostError extends Error {
  readonly code: ErrorCode | ClientErrorCode;
  /** The code as the server sent it (an unknown one reads as `internal` in `code`). */
  readonly wireCode: string;
  readonly retryMs: number | null;
  readonly requestId: number | null;
  readonly closeCode: number | null;
  readonly closeReason: string;
  /** With `moved`: the address of the cluster node that serves the room (PROTOCOL.md §8.1). */
  readonly url: string | null;
}

/** Any msgpack value the protocol carries; integers beyond ±(2^53−1) are BigInt. */
export type Opaque = null | boolean | number | bigint | string | Uint8Array | Opaque[] | { [key: string]: Opaque };
/** What may be sent: Opaque plus Date (sent as ms) and undefined (left out). */
export type Sendable = Opaque | Date | undefined | ArrayBuffer | ArrayBufferView | Sendable[] | { [key: string]: Sendable };

export declare function toWire(value: Sendable): Opaque;
export declare function encodeFrame(frame: { t: string; [key: string]: Sendable }): Uint8Array;
export declare function decodeFrame(data: ArrayBuffer | Uint8Array): { t: string; [key: string]: Opaque };

export type Status = "online" | "away" | "offline";
export type Phase = "lobby" | "playing" | "ended";
export type Inactive = "none" | "reset" | "end";

export interface Member {
  user: string; name: string; status: Status; last_seen: number; sessions?: number; typing?: boolean; data?: Opaque;
}
export interface ChatMessage {
  id: string; n: number; user: string; name: string; text: string; ts: number; cid?: string;
  edited?: number; deleted?: boolean; meta?: { [key: string]: Opaque };
}
export interface RoomSnapshot {
  room: string; code: string; epoch: number; seq: number; public: boolean; max: number; host?: string;
  phase: Phase; version: number; state?: Opaque; members?: Member[]; members_next?: string;
  member_count?: number; chat_n?: number; read_n?: number; unread?: number; logic?: string;
  inactive?: Inactive; created: number; meta?: { [key: string]: Opaque };
}
export interface RoomInfo {
  room: string; code: string; members: number; max: number; phase: Phase; public: boolean; created: number;
  meta?: { [key: string]: Opaque };
}
export interface LobbyPage { rooms: RoomInfo[]; next?: string }
export interface MembersPage { members: Member[]; next?: string }
export interface ChatAck { id: string; n: number; ts: number; dup?: boolean }
export interface HistoryPage { messages: ChatMessage[]; next?: number }
export interface InboxHead { epoch: number; seq: number; first: number; read: number; unread: number }
export interface InboxEntry { id: string; seq: number; ts: number; kind: string; body?: Opaque }
export interface InboxPage { entries: InboxEntry[]; next?: number }
export interface MyRoom { room: string; code: string; chat_n?: number; read_n?: number; unread?: number }
export interface MyRoomsPage { rooms: MyRoom[]; next?: string }
export interface InboxEvent { t: "inbox"; epoch: number; seq: number; ts: number; id: string; kind: string; body?: Opaque }
export interface InboxUnreadEvent { t: "inbox_unread"; read: number; unread: number }
export interface Welcome {
  t: "welcome"; v: number; sid: string; session: string; user: string; name: string; hb: number; exp: number;
  time: number; resumed?: boolean; limits?: { [key: string]: number };
  /** The user's inbox as of the welcome (§16): its unread count. */
  inbox?: InboxHead; rooms?: MyRoom[]; rooms_next?: string;
}

interface EventBase { room: string; epoch: number; seq: number; ts: number }
export interface PresenceEvent extends EventBase { t: "presence"; join?: Member[]; update?: Member[]; leave?: string[]; reason?: string }
export interface ChatEvent extends EventBase { t: "chat"; msg: ChatMessage }
export interface ChatEditedEvent extends EventBase { t: "chat_edited"; msg: ChatMessage }
export interface ChatDeletedEvent extends EventBase { t: "chat_deleted"; msg: string; n: number; by: string }
export interface ReceiptEvent extends EventBase { t: "receipt"; user: string; n: number }
export interface HostEvent extends EventBase { t: "host"; user?: string }
export interface StateEvent extends EventBase { t: "state"; version: number; phase: Phase; state?: Opaque; reason?: string }
export interface MessageEvent extends EventBase { t: "message"; kind: string; body?: Opaque; sender?: string }
export interface RoomClosedEvent extends EventBase { t: "room_closed"; code: string; message?: string }
export interface SyncEvent extends EventBase { t: "sync"; snapshot: RoomSnapshot; reason?: string }
export type RoomEvent =
  | PresenceEvent | ChatEvent | ChatEditedEvent | ChatDeletedEvent | ReceiptEvent | HostEvent | StateEvent
  | MessageEvent | RoomClosedEvent | SyncEvent;
export type RoomEventType = RoomEvent["t"];
/** The status of one of one's own messages (PROTOCOL.md §17.1): of `of` other members, how many have it. */
export interface MessageStatus { n: number; delivered: number; read: number; of: number }
/** Not a room event (no seq, never replayed): sent to an author, at most once per receipt window. */
export interface ReceiptsFrame { t: "receipts"; room: string; msgs: MessageStatus[] }
export interface ChatStatusPage extends MessageStatus { users?: string[]; next?: string }
export type RoomFrame = RoomEvent | ReceiptsFrame;
export type RoomFrameType = RoomFrame["t"];
type EventOf<K extends RoomFrameType | "*"> = K extends "*" ? RoomFrame : Extract<RoomFrame, { t: K }>;

export declare class Room {
  readonly client: Roost;
  readonly id: string;
  /** The last snapshot (join, create, or a sync). */
  readonly snapshot: RoomSnapshot;
  /** The last event processed: what a resume asks from. */
  readonly epoch: number;
  readonly seq: number;
  readonly active: boolean;
  on<K extends RoomFrameType | "*">(type: K, handler: (event: EventOf<K>, room: Room) => void): () => void;
  off<K extends RoomFrameType | "*">(type: K, handler: (event: EventOf<K>, room: Room) => void): void;
  next<K extends RoomFrameType | "*">(type?: K, filter?: (event: EventOf<K>) => boolean, timeoutMs?: number): Promise<EventOf<K>>;
}

export type TokenSource = string | (() => Promise<string>);
export interface ConnectOptions {
  /** The user token (or a source of fresh ones); leave it out with `guestKey`. */
  token?: TokenSource;
  /** Instead of a token: the device's Ed25519 key pair (`Roost.guestKey()`), for guest play (PROTOCOL.md §9.3). */
  guestKey?: CryptoKeyPair;
  /** The display name a new guest user gets. */
  guestName?: string;
  /** A WebSocket constructor (the global one by default; pass the `ws` package's in Node 20). */
  WebSocket?: new (url: string) => WebSocket;
  hb?: number;
  agent?: string;
  reconnect?: boolean;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  /** Refresh this long before `exp` (default 60 000). */
  refreshMarginMs?: number;
  connectTimeoutMs?: number;
  /** Report delivered cursors by itself (default true): the newest chat number per room, one in flight. */
  deliver?: boolean;
  /** Hosts besides the URL's that a cluster's `moved` may send the client to (it sends its token there). */
  followHosts?: string[];
  onError?: (error: unknown) => void;
  onState?: (state: ClientState) => void;
}
export type ClientState = "connecting" | "open" | "reconnecting" | "closed";
export interface ClientStats {
  connects: number; reconnects: number; resent: number; duplicates: number; gaps: number; events: number; pings: number;
  inboxResyncs: number;
  /** `delivered` frames the client sent by itself. */
  delivered: number;
  /** Times the client followed `moved` to another node of a cluster. */
  moves: number;
}
type RoomRef = string | Room;
interface CreateOptions { public?: boolean; max?: number; logic?: string; inactive?: Inactive; meta?: { [key: string]: Sendable } }

/** A guest proof for audience `aud` (the server's host[:port]), signed with `keyPair`: PROTOCOL.md §9.3. */
export declare function guestProof(keyPair: CryptoKeyPair, aud: string, name?: string, now?: number): Promise<string>;

export declare class Roost {
  static connect(url: string, options: ConnectOptions): Promise<Roost>;
  /** A new non-extractable Ed25519 device key for guest play. */
  static guestKey(): Promise<CryptoKeyPair>;
  constructor(url: string, options: ConnectOptions);
  readonly url: string;
  readonly rooms: Map<string, Room>;
  readonly welcome: Welcome | null;
  readonly state: ClientState;
  readonly closeError: RoostError | null;
  readonly stats: ClientStats;
  readonly user: string | undefined;
  readonly sid: string | undefined;
  readonly connected: boolean;
  /** The last inbox entry processed (null until the inbox is attached). */
  readonly inbox: { epoch: number; seq: number } | null;
  on(type: "inbox", handler: (entry: InboxEvent) => void): () => void;
  on(type: "inbox_unread", handler: (event: InboxUnreadEvent) => void): () => void;
  on(type: "inbox_resync", handler: (head: InboxHead) => void): () => void;
  on(type: "state", handler: (state: ClientState) => void): () => void;
  on(type: "welcome", handler: (welcome: Welcome) => void): () => void;
  on(type: "error", handler: (error: unknown) => void): () => void;
  on(type: "closed", handler: (error: RoostError) => void): () => void;
  on(type: "pong", handler: (pong: { t: "pong"; time: number }) => void): () => void;

  create(options?: CreateOptions): Promise<Room>;
  join(target: string | { room: string } | { code: string }): Promise<Room>;
  joinOrCreate(code: string, options?: CreateOptions): Promise<Room>;
  leave(room: RoomRef): Promise<void>;
  lobby(options?: { cursor?: string; limit?: number }): Promise<LobbyPage>;
  members(room: RoomRef, options?: { cursor?: string; limit?: number }): Promise<MembersPage>;
  presenceSet(room: RoomRef, options: { data?: Sendable; status?: "online" | "away" }): Promise<void>;
  typing(room: RoomRef, on: boolean): Promise<void>;
  chatSend(room: RoomRef, text: string, options?: { meta?: { [key: string]: Sendable }; cid?: string }): Promise<ChatAck>;
  chatEdit(room: RoomRef, msg: string, text: string): Promise<void>;
  chatDelete(room: RoomRef, msg: string): Promise<void>;
  history(room: RoomRef, options?: { before?: number; limit?: number }): Promise<HistoryPage>;
  read(room: RoomRef, n: number): Promise<void>;
  delivered(room: RoomRef, n: number): Promise<void>;
  chatStatus(room: RoomRef, n: number, options?: { who?: "delivered" | "read"; cursor?: string; limit?: number }): Promise<ChatStatusPage>;
  stateSet(room: RoomRef, options: { version: number; state?: Sendable; phase?: Phase }): Promise<number>;
  send(room: RoomRef, kind: string, body?: Sendable): Promise<Opaque>;
  kick(room: RoomRef, user: string): Promise<void>;
  hostSet(room: RoomRef, user: string): Promise<void>;
  admin(key: string, op: string, args?: { [key: string]: Sendable }): Promise<Opaque>;
  notify(key: string, user: string, kind: string, body?: Sendable): Promise<{ id: string; epoch: number; seq: number; ts: number }>;
  inboxRead(n: number): Promise<{ read: number; unread: number }>;
  inboxHistory(options?: { before?: number; limit?: number }): Promise<InboxPage>;
  myRooms(options?: { cursor?: string; limit?: number }): Promise<MyRoomsPage>;
  refresh(token?: string): Promise<{ exp: number }>;
  request(frame: { t: string; [key: string]: Sendable }, options?: { resend?: boolean }): Promise<Opaque>;
  close(): Promise<void>;
  /** End the session now (`bye`): rooms see it leave at once (reason "ended"); it cannot be resumed. */
  end(timeoutMs?: number): Promise<void>;
}
export default Roost;
