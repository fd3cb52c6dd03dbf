"""One realistic instance of every frame type and record, shared by the protocol tests and vectors."""

from __future__ import annotations

from roost.protocol.codec import dump_record
from roost.protocol.frames import (
    AdminOp,
    AdminRequest,
    ChatAck,
    ChatDelete,
    ChatDeleted,
    ChatEdit,
    ChatEdited,
    ChatEvent,
    ChatMessage,
    ChatSend,
    Create,
    ErrorReply,
    Frame,
    Hello,
    History,
    HistoryPage,
    HostChanged,
    HostSet,
    InboxEntry,
    InboxEvent,
    InboxHead,
    InboxHistory,
    InboxPage,
    InboxRead,
    InboxResume,
    InboxResumeResult,
    InboxUnread,
    Join,
    JoinOrCreate,
    Kick,
    Leave,
    Lobby,
    LobbyPage,
    MyRoom,
    MyRooms,
    MyRoomsPage,
    Member,
    Members,
    MembersPage,
    MessageEvent,
    Ok,
    Phase,
    Ping,
    Pong,
    PresenceDiff,
    PresenceSet,
    PresenceStatus,
    Read,
    ReadReceipt,
    Refresh,
    Resume,
    ResumeResult,
    RoomClosed,
    RoomInfo,
    RoomSnapshot,
    Send,
    StateEvent,
    StateSet,
    Status,
    Sync,
    Typing,
    Welcome,
)
from roost.protocol.schema import WireRecord

TS = 1_795_000_000_000
TOKEN = "eyJhbGciOiJFZERTQSJ9.e30.c2ln"

ANN = Member(user="u-ann", name="Ann", status=PresenceStatus.ONLINE, last_seen=TS, sessions=2, data={"color": "red"})
BOB = Member(user="u-bob", name="Bob", status=PresenceStatus.OFFLINE, last_seen=TS - 5000, typing=False)
MESSAGE = ChatMessage(id="m-17", n=17, user="u-ann", name="Ann", text="gg, rematch?", ts=TS, cid="c-1")
EDITED = ChatMessage(id="m-17", n=17, user="u-ann", name="Ann", text="gg! rematch?", ts=TS, edited=TS + 900)
ROOM_INFO = RoomInfo(
    room="r-7f3a", code="K7M2QX9P", members=2, max=4, phase=Phase.LOBBY, public=True, created=TS, meta={"mode": "duel"}
)
SNAPSHOT = RoomSnapshot(
    room="r-7f3a",
    code="K7M2QX9P",
    epoch=1,
    seq=42,
    public=True,
    max=4,
    host="u-ann",
    phase=Phase.PLAYING,
    version=3,
    state={"board": [0, 1, 2], "turn": "u-bob"},
    members=(ANN, BOB),
    member_count=2,
    chat_n=17,
    read_n=15,
    unread=2,
    created=TS,
)

INBOX_ENTRY = InboxEntry(id="i7", seq=7, ts=TS, kind="invite", body={"room": "r-7f3a", "from": "u-bob"})
INBOX_HEAD = InboxHead(epoch=1, seq=7, first=1, read=5, unread=2)
MY_ROOM = MyRoom(room="r-7f3a", code="K7M2QX9P", chat_n=17, read_n=15, unread=2)

RECORDS: dict[str, WireRecord] = {
    "Member": ANN,
    "ChatMessage": MESSAGE,
    "RoomInfo": ROOM_INFO,
    "RoomSnapshot": SNAPSHOT,
    "LobbyPage": LobbyPage(rooms=(ROOM_INFO,), next="c2"),
    "MembersPage": MembersPage(members=(ANN, BOB), next="u-bob"),
    "ChatAck": ChatAck(id="m-17", n=17, ts=TS),
    "HistoryPage": HistoryPage(messages=(MESSAGE,), next=16),
    "ResumeResult": ResumeResult(replayed=3),
    "InboxEntry": INBOX_ENTRY,
    "InboxHead": INBOX_HEAD,
    "InboxPage": InboxPage(entries=(INBOX_ENTRY,), next=6),
    "InboxResumeResult": InboxResumeResult(replayed=2, head=INBOX_HEAD),
    "MyRoom": MY_ROOM,
    "MyRoomsPage": MyRoomsPage(rooms=(MY_ROOM,), next="r-7f3a"),
}

CLIENT: dict[str, Frame] = {
    "hello": Hello(v=1, token=TOKEN, hb=10_000, agent="roost-py/0.1"),
    "refresh": Refresh(id=1, token=TOKEN),
    "ping": Ping(),
    "create": Create(id=2, public=True, max=4, meta={"mode": "duel"}),
    "join": Join(id=3, code="K7M2QX9P"),
    "join_or_create": JoinOrCreate(id=4, code="ranked-eu-1", max=2, logic="duel"),
    "leave": Leave(id=5, room="r-7f3a"),
    "lobby": Lobby(id=6, limit=20),
    "members": Members(id=7, room="r-7f3a", cursor="u-bob", limit=50),
    "presence_set": PresenceSet(id=8, room="r-7f3a", data={"color": "red"}, status=Status.AWAY),
    "typing": Typing(id=9, room="r-7f3a", on=True),
    "chat_send": ChatSend(id=10, room="r-7f3a", cid="c-1", text="gg, rematch?"),
    "chat_edit": ChatEdit(id=11, room="r-7f3a", msg="m-17", text="gg! rematch?"),
    "chat_delete": ChatDelete(id=12, room="r-7f3a", msg="m-17"),
    "history": History(id=13, room="r-7f3a", before=17, limit=50),
    "read": Read(id=14, room="r-7f3a", n=17),
    "state_set": StateSet(id=15, room="r-7f3a", version=3, state={"turn": "u-ann"}, phase=Phase.PLAYING),
    "send": Send(id=16, room="r-7f3a", kind="move", body={"x": 1, "y": 2}),
    "kick": Kick(id=17, room="r-7f3a", user="u-bob"),
    "host_set": HostSet(id=18, room="r-7f3a", user="u-bob"),
    "resume": Resume(id=19, room="r-7f3a", epoch=1, seq=42),
    "admin": AdminRequest(id=20, key="svc-secret", op=AdminOp.CLOSE, args={"room": "r-7f3a"}),
    "inbox_resume": InboxResume(id=21, epoch=1, seq=5),
    "inbox_read": InboxRead(id=22, n=7),
    "inbox_history": InboxHistory(id=23, before=6, limit=20),
    "my_rooms": MyRooms(id=24, cursor="r-7f3a", limit=20),
}

SERVER: dict[str, Frame] = {
    "welcome": Welcome(
        v=1,
        sid="s-1",
        session="s1.e30.bWFj",
        user="u-ann",
        name="Ann",
        hb=10_000,
        exp=1_795_003_600,
        time=TS,
        limits={"frame": 65536, "rate": 50, "burst": 100, "rooms": 16},
    ),
    "ok": Ok(id=10, result=dump_record(ChatAck(id="m-17", n=17, ts=TS))),
    "error": ErrorReply(id=3, code="room_full", message="room r-7f3a is full"),
    "pong": Pong(time=TS),
    "presence": PresenceDiff(room="r-7f3a", epoch=1, seq=43, ts=TS, join=(ANN,), update=(BOB,), leave=("u-cat",)),
    "chat": ChatEvent(room="r-7f3a", epoch=1, seq=44, ts=TS, msg=MESSAGE),
    "chat_edited": ChatEdited(room="r-7f3a", epoch=1, seq=45, ts=TS, msg=EDITED),
    "chat_deleted": ChatDeleted(room="r-7f3a", epoch=1, seq=46, ts=TS, msg="m-17", n=17, by="u-ann"),
    "receipt": ReadReceipt(room="r-7f3a", epoch=1, seq=47, ts=TS, user="u-bob", n=17),
    "host": HostChanged(room="r-7f3a", epoch=1, seq=48, ts=TS, user="u-bob"),
    "state": StateEvent(room="r-7f3a", epoch=1, seq=49, ts=TS, version=4, phase=Phase.ENDED, state={"winner": "u-bob"}),
    "message": MessageEvent(room="r-7f3a", epoch=1, seq=50, ts=TS, kind="move", body={"x": 1}, sender="u-ann"),
    "room_closed": RoomClosed(room="r-7f3a", epoch=1, seq=51, ts=TS, code="internal", message="room crashed"),
    "sync": Sync(room="r-7f3a", epoch=2, seq=0, ts=TS, snapshot=SNAPSHOT, reason="restarted"),
    "inbox": InboxEvent(epoch=1, seq=7, ts=TS, id="i7", kind="invite", body={"room": "r-7f3a", "from": "u-bob"}),
    "inbox_unread": InboxUnread(read=7, unread=0),
}
