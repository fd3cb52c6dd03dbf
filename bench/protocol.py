"""Protocol micro-benchmark: encode/decode cost of every frame type, token checks, raw msgpack.

Why: every frame a room fans out is encoded once per room and decoded by every client, and every
connection verifies a token, so these per-frame costs bound what one process can serve. Raw
``msgpack.packb``/``unpackb`` of the same ``chat`` map is measured alongside so the figures can be
quoted as ratios (validation overhead over plain msgpack), which travel between machines far better
than absolute microseconds.

Method: each case (one timed call) first grows its batch size until one batch takes its share of
``--seconds``; then the remaining ``--repeats`` batches run round-robin over all cases, so a burst
of noise from a neighbouring process spoils one sample of many cases rather than every sample of
one. Each figure is the median per-call time (``time.perf_counter``); ratios to the baseline are
the median of same-round ratios. Every loop is bounded both in count and by a deadline, so the run
stops by itself close to the budget. As ``timeit`` does, the garbage collector is paused during a
batch so a collection does not land on a random repeat. The per-call overhead of the harness
(``call_overhead_us``, about one C-level call) is reported and not subtracted. Nothing here asserts
on timings.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from roost.protocol.codec import Sender, decode, dump_record, encode
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import (
    CLIENT_FRAMES,
    PROTOCOL_VERSION,
    SERVER_FRAMES,
    AdminOp,
    AdminRequest,
    Bye,
    ChatDelete,
    ChatDeleted,
    ChatEdit,
    ChatEdited,
    ChatEvent,
    ChatMessage,
    ChatSend,
    ChatStatus,
    Create,
    Delivered,
    ErrorReply,
    Frame,
    Hello,
    History,
    HistoryPage,
    HostChanged,
    HostSet,
    InboxEvent,
    InboxHistory,
    InboxRead,
    InboxResume,
    InboxUnread,
    Join,
    JoinOrCreate,
    Kick,
    Leave,
    Lobby,
    Member,
    Members,
    MessageEvent,
    MyRooms,
    MessageStatus,
    Ok,
    Phase,
    Ping,
    Pong,
    PresenceDiff,
    PresenceSet,
    PresenceStatus,
    Read,
    ReadReceipt,
    Receipts,
    Refresh,
    Resume,
    RoomClosed,
    RoomSnapshot,
    Send,
    StateEvent,
    StateSet,
    Status,
    StatusList,
    Sync,
    Typing,
    Welcome,
)
from roost.protocol.tokens import (
    BadSignature,
    Keyring,
    SessionClaims,
    SessionSigner,
    generate_key,
    new_claims,
    sign,
    verify,
)

__all__ = ["Fixtures", "add_arguments", "collect", "measure", "paired_ratio", "run", "sample_frames"]

DEFAULT_SECONDS = 5.0
DEFAULT_REPEATS = 5
MAX_BATCH = 1 << 20
"""Upper bound on calls in one batch, so calibration stays bounded even if a call reads as free."""
MAX_GROWTH_STEPS = 40
"""Upper bound on calibration batches (batch size grows at least 2x per step)."""
BASELINE_FRAME = "chat"
"""The frame whose wire map is packed/unpacked with plain msgpack as the baseline."""

# Fixed, realistic-looking values: deterministic sizes from run to run.
_NOW_MS = 1_700_000_000_000
_ROOM = "r-7f3a9c2e51b04d88"
_CODE = "BLUE-FOX-42"
_CHAT_TEXT = "Anyone up for another round? I'll host, same rules as last time."
"""64 characters: a typical chat line."""


# -- samples -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fixtures:
    """Real tokens and keys shared by the frame samples and the token cases."""

    keyring: Keyring
    token: str
    """A valid user token signed with the key in ``keyring``."""
    forged: str
    """The same claims and ``kid``, signed with another key: fails exactly at the signature check."""
    signer: SessionSigner
    session: str
    """A valid session token minted by ``signer``."""
    now: float


def make_fixtures() -> Fixtures:
    """Generate one Ed25519 key pair, a token, a forged twin and a session token."""
    now = _NOW_MS / 1000
    kid, key = generate_key()
    _other_kid, other_key = generate_key()
    claims = new_claims(sub="user-0001", name="Player 1", kid=kid, now=now, ttl=3600, room=_CODE, role="player")
    signer = SessionSigner(secrets.token_bytes(32))
    session = signer.mint(SessionClaims(sub="user-0001", sid="s-1b9d6bcd", exp=int(now) + 86_400))
    return Fixtures(
        keyring=Keyring({kid: key.verify_key}),
        token=sign(claims, key),
        forged=sign(claims, other_key),
        signer=signer,
        session=session,
        now=now,
    )


def _member(i: int) -> Member:
    return Member(
        user=f"user-{i:04d}",
        name=f"Player {i}",
        status=PresenceStatus.ONLINE if i % 5 else PresenceStatus.AWAY,
        last_seen=_NOW_MS - i * 1_000,
        sessions=1,
        typing=False,
        data={"avatar": "fox", "color": "#3fa7d6", "ready": bool(i % 2)},
    )


def _message(n: int, *, edited: bool = False) -> ChatMessage:
    return ChatMessage(
        id=f"m-{n:08d}",
        n=n,
        user=f"user-{n % 20:04d}",
        name=f"Player {n % 20}",
        text=_CHAT_TEXT,
        ts=_NOW_MS - (1000 - n) * 1_000,
        cid=f"c-{n:08d}-4f2a",
        edited=_NOW_MS if edited else None,
    )


_STATE = {
    "board": [[0, 1, 2], [0, 1, 0], [2, 0, 0]],
    "turn": "user-0001",
    "scores": {"user-0001": 3, "user-0002": 2},
    "round": 4,
}


def sample_frames(fx: Fixtures) -> dict[str, Frame]:
    """One realistic instance of every frame type, by wire type name.

    Raises:
        RuntimeError: a frame type has no sample (a new frame was added: add it here).
    """
    room_event = {"room": _ROOM, "epoch": 3, "seq": 1_042, "ts": _NOW_MS}
    history = HistoryPage(messages=tuple(_message(n) for n in range(951, 1001)), next=951)
    snapshot = RoomSnapshot(
        room=_ROOM,
        code=_CODE,
        epoch=3,
        seq=1_042,
        public=True,
        max=32,
        host="user-0001",
        phase=Phase.PLAYING,
        version=17,
        state=_STATE,
        members=tuple(_member(i) for i in range(1, 21)),
        member_count=20,
        chat_n=1_000,
        read_n=990,
        unread=10,
        logic="tictactoe",
        created=_NOW_MS - 3_600_000,
        meta={"title": "Friday night games"},
    )
    frames: list[Frame] = [
        # client -> server
        Hello(v=PROTOCOL_VERSION, token=fx.token, hb=15_000, session=fx.session, agent="roost-js/0.1.0"),
        Refresh(id=1, token=fx.token),
        Ping(),
        Create(id=2, public=True, max=8, logic="tictactoe", meta={"title": "Friday night games"}),
        Join(id=3, code=_CODE),
        JoinOrCreate(id=4, code=_CODE, public=True, max=8, logic="tictactoe"),
        Leave(id=5, room=_ROOM),
        Lobby(id=6, cursor="eyJhZnRlciI6InItN2YzYTljMmUifQ", limit=50),
        Members(id=7, room=_ROOM, cursor="eyJhZnRlciI6InVzZXItMDEwMCJ9", limit=100),
        PresenceSet(id=8, room=_ROOM, data={"avatar": "fox", "color": "#3fa7d6", "ready": True}, status=Status.AWAY),
        Typing(id=9, room=_ROOM, on=True),
        ChatSend(id=10, room=_ROOM, cid="c-00001001-4f2a", text=_CHAT_TEXT),
        ChatEdit(id=11, room=_ROOM, msg="m-00001000", text=_CHAT_TEXT),
        ChatDelete(id=12, room=_ROOM, msg="m-00001000"),
        History(id=13, room=_ROOM, before=951, limit=50),
        Read(id=14, room=_ROOM, n=1_000),
        StateSet(id=15, room=_ROOM, version=17, state=_STATE, phase=Phase.PLAYING),
        Send(id=16, room=_ROOM, kind="move", body={"x": 2, "y": 1}),
        Kick(id=17, room=_ROOM, user="user-0007"),
        HostSet(id=18, room=_ROOM, user="user-0002"),
        Resume(id=19, room=_ROOM, epoch=3, seq=1_030),
        AdminRequest(id=20, key="svc_" + "k" * 40, op=AdminOp.ROOMS, args={"limit": 50}),
        InboxResume(id=21, epoch=1, seq=57),
        InboxRead(id=22, n=60),
        InboxHistory(id=23, before=40, limit=20),
        MyRooms(id=24, cursor=_ROOM, limit=20),
        Delivered(id=25, room=_ROOM, n=1_000),
        ChatStatus(id=26, room=_ROOM, n=1_000, who=StatusList.READ, limit=50),
        Bye(),
        # server -> client
        Welcome(
            v=PROTOCOL_VERSION,
            sid="s-1b9d6bcd",
            session=fx.session,
            user="user-0001",
            name="Player 1",
            hb=15_000,
            exp=int(fx.now) + 3600,
            time=_NOW_MS,
            limits={"frame": 65_536, "rate": 20, "burst": 40, "rooms": 8},
        ),
        Ok(id=13, result=dump_record(history)),
        ErrorReply(id=10, code=ErrorCode.RATE_LIMITED.value, message="slow down", retry_ms=250),
        Pong(time=_NOW_MS),
        PresenceDiff(**room_event, join=(_member(21),)),
        ChatEvent(**room_event, msg=_message(1_001)),
        ChatEdited(**room_event, msg=_message(1_000, edited=True)),
        ChatDeleted(**room_event, msg="m-00001000", n=1_000, by="user-0001"),
        ReadReceipt(**room_event, user="user-0003", n=1_000),
        HostChanged(**room_event, user="user-0002"),
        StateEvent(**room_event, version=18, phase=Phase.PLAYING, state=_STATE, reason="move"),
        MessageEvent(**room_event, kind="move", body={"x": 2, "y": 1}, sender="user-0001"),
        RoomClosed(**room_event, code="closed", message="the host ended the game"),
        Sync(**room_event, snapshot=snapshot, reason="epoch"),
        InboxEvent(epoch=1, seq=58, ts=_NOW_MS, id="i58", kind="invite", body={"room": _ROOM, "from": "user-0002"}),
        InboxUnread(read=60, unread=0),
        Receipts(room=_ROOM, msgs=tuple(MessageStatus(n=n, delivered=12, read=7, of=19) for n in range(990, 1_001))),
    ]
    samples = {frame.TYPE: frame for frame in frames}
    missing = sorted((set(CLIENT_FRAMES) | set(SERVER_FRAMES)) - set(samples))
    if missing:
        raise RuntimeError(f"roost.bench.protocol has no sample for frame types: {', '.join(missing)}")
    return samples


def sender_of(frame: Frame) -> Sender:
    """The side that sends ``frame``'s type, i.e. what ``decode`` must be told to expect."""
    return Sender.CLIENT if CLIENT_FRAMES.get(frame.TYPE) is type(frame) else Sender.SERVER


# -- timing ------------------------------------------------------------------------------------


def _batch(fn: Callable[[], object], n: int) -> float:
    """Seconds taken by ``n`` calls of ``fn``, with the garbage collector paused (as timeit does)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()


def _calibrate(fn: Callable[[], object], target: float, deadline: float) -> tuple[int, float]:
    """Grow the batch size until one batch takes about ``target`` seconds: ``(n, first sample)``.

    Bounded by :data:`MAX_GROWTH_STEPS`, :data:`MAX_BATCH` and ``deadline``; the last batch timed
    is the size's first sample, so calibration time is not wasted.
    """
    n = 1
    elapsed = _batch(fn, n)
    for _ in range(MAX_GROWTH_STEPS):
        if elapsed >= target or n >= MAX_BATCH or time.perf_counter() >= deadline:
            break
        # Jump straight to the predicted size, but at least double and at most x8 per step.
        predicted = int(n * target / elapsed) if elapsed > 0 else n * 8
        n = min(MAX_BATCH, n * 8, max(n * 2, predicted))
        elapsed = _batch(fn, n)
    return n, elapsed / n


def measure(calls: dict[str, Callable[[], object]], seconds: float, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each callable: up to ``repeats`` samples each, within about ``seconds``.

    Every case is calibrated first, then the remaining repeats run round-robin over all cases, so a
    burst of noise from a neighbour spoils one sample of many cases (which the median discards)
    instead of every sample of one case. Sample ``i`` of every case comes from the same round,
    which lets ratios be taken round by round. No batch starts past the deadline, so the run can
    overrun the budget by at most one batch.
    """
    deadline = time.perf_counter() + seconds
    target = seconds / (len(calls) * (repeats + 2))
    sizes: dict[str, int] = {}
    samples: dict[str, list[float]] = {}
    for label, fn in calls.items():
        case_deadline = min(deadline, time.perf_counter() + 3 * target)
        sizes[label], first = _calibrate(fn, target, case_deadline)
        samples[label] = [first]
    for _ in range(repeats - 1):
        if time.perf_counter() >= deadline:
            break
        for label, fn in calls.items():
            if time.perf_counter() >= deadline:
                break
            samples[label].append(_batch(fn, sizes[label]) / sizes[label])
    return samples


def paired_ratio(numerator: list[float], denominator: list[float]) -> float | None:
    """Median over rounds of ``numerator[i] / denominator[i]`` (same-round samples share noise)."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=False) if b > 0]
    return round(statistics.median(ratios), 2) if ratios else None


# -- the benchmark -----------------------------------------------------------------------------


def _forged_reject(token: str, keyring: Keyring, now: float) -> None:
    try:
        verify(token, keyring, now)
    except BadSignature:
        return
    raise RuntimeError("forged token was accepted")  # checked before timing; never reached there


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 4)


def _per_s(seconds: float) -> float | None:
    """Calls per second; ``None`` (JSON null) if the clock could not see the call at all."""
    return round(1 / seconds, 1) if seconds > 0 else None


def _check_case_inputs(samples: dict[str, Frame], wire: dict[str, bytes], fx: Fixtures) -> None:
    """Prove each timed call does what its row claims before timing it (a bug, not a measurement)."""
    for name, frame in samples.items():
        if decode(wire[name], sender_of(frame)) != frame:
            raise RuntimeError(f"{name}: decode(encode(frame)) differs from the frame")
    if verify(fx.token, fx.keyring, fx.now).sub != "user-0001":
        raise RuntimeError("token did not verify to its subject")
    try:
        verify(fx.forged, fx.keyring, fx.now)
    except BadSignature:
        pass
    else:
        raise RuntimeError("forged token was accepted")
    if fx.signer.check(fx.session, fx.now).sid != "s-1b9d6bcd":
        raise RuntimeError("session token did not check")


def _msgpack_flavour() -> str:
    return "C extension" if msgpack.Unpacker.__module__.endswith("_cmsgpack") else "pure Python fallback"


def collect(seconds: float, repeats: int) -> dict[str, Any]:
    """Run every case within about ``seconds`` and return all figures as a JSON-ready dict."""
    fx = make_fixtures()
    samples = sample_frames(fx)
    wire = {name: encode(frame) for name, frame in samples.items()}
    _check_case_inputs(samples, wire, fx)
    chat_map = msgpack.unpackb(wire[BASELINE_FRAME], raw=False)
    chat_packed = msgpack.packb(chat_map, use_bin_type=True)

    # Every timed call, by label. The baseline sits right after the 'chat' frame's own cases, so a
    # round times them close together and the paired ratios compare like with like.
    calls: dict[str, Callable[[], object]] = {}
    for name, frame in samples.items():
        calls[f"encode:{name}"] = functools.partial(encode, frame)
        calls[f"decode:{name}"] = functools.partial(decode, wire[name], sender_of(frame))
        if name == BASELINE_FRAME:
            # The codec's own msgpack options, so the ratio isolates validation and frame building.
            calls["packb"] = functools.partial(msgpack.packb, chat_map, use_bin_type=True)
            calls["unpackb"] = functools.partial(msgpack.unpackb, chat_packed, raw=False, strict_map_key=True)
            calls["noop"] = functools.partial(int)
    calls["token_verify"] = functools.partial(verify, fx.token, fx.keyring, fx.now)
    calls["token_forged"] = functools.partial(_forged_reject, fx.forged, fx.keyring, fx.now)
    calls["session_check"] = functools.partial(fx.signer.check, fx.session, fx.now)

    started = time.perf_counter()
    timings = measure(calls, seconds, repeats)
    elapsed = time.perf_counter() - started
    per_call = {label: statistics.median(values) for label, values in timings.items()}

    frames = {
        name: {
            "dir": sender_of(frame).value,
            "encode_us": _us(per_call[f"encode:{name}"]),
            "decode_us": _us(per_call[f"decode:{name}"]),
            "bytes": len(wire[name]),
        }
        for name, frame in sorted(samples.items(), key=lambda item: (sender_of(item[1]).value, item[0]))
    }
    return {
        "bench": "protocol",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "msgpack": ".".join(map(str, msgpack.version)) + f" ({_msgpack_flavour()})",
        "seconds": seconds,
        "repeats": repeats,
        "elapsed_s": round(elapsed, 3),
        "frames": frames,
        "token_verify_per_s": _per_s(per_call["token_verify"]),
        "token_forged_per_s": _per_s(per_call["token_forged"]),
        "session_check_per_s": _per_s(per_call["session_check"]),
        "baseline": {
            "frame": BASELINE_FRAME,
            "bytes": len(chat_packed),
            "packb_us": _us(per_call["packb"]),
            "unpackb_us": _us(per_call["unpackb"]),
            "call_overhead_us": _us(per_call["noop"]),
        },
        "ratios": {
            "encode_vs_packb": paired_ratio(timings[f"encode:{BASELINE_FRAME}"], timings["packb"]),
            "decode_vs_unpackb": paired_ratio(timings[f"decode:{BASELINE_FRAME}"], timings["unpackb"]),
        },
    }


def _rate_line(label: str, per_s: float | None) -> str:
    if per_s is None:
        return f"{label:<28}{'n/a':>12}"
    return f"{label:<28}{per_s:>12,.0f} /s{1e6 / per_s:>10.2f} us"


def render_table(result: dict[str, Any]) -> str:
    """The human-readable report (plain ASCII, so any terminal encoding prints it)."""
    lines = [
        f"Roost protocol micro-benchmark: {result['implementation']} {result['python']}, "
        f"msgpack {result['msgpack']}",
        f"budget {result['seconds']:g} s (measured in {result['elapsed_s']:g} s), "
        f"median of up to {result['repeats']} batches per figure",
        "",
        f"{'frame':<16}{'dir':<8}{'bytes':>7}{'encode us':>12}{'decode us':>12}",
        "-" * 55,
    ]
    for name, row in result["frames"].items():
        lines.append(f"{name:<16}{row['dir']:<8}{row['bytes']:>7}{row['encode_us']:>12.2f}{row['decode_us']:>12.2f}")
    base, ratios = result["baseline"], result["ratios"]
    lines += [
        "",
        f"baseline, raw msgpack of the '{base['frame']}' map ({base['bytes']} bytes): "
        f"packb {base['packb_us']:.2f} us, unpackb {base['unpackb_us']:.2f} us "
        f"(call overhead {base['call_overhead_us']:.3f} us, included everywhere)",
        f"'{base['frame']}' encode = {ratios['encode_vs_packb']}x packb, decode = {ratios['decode_vs_unpackb']}x unpackb",
        "",
        _rate_line("token verify (Ed25519)", result["token_verify_per_s"]),
        _rate_line("forged token reject", result["token_forged_per_s"]),
        _rate_line("session token check", result["session_check_per_s"]),
    ]
    return "\n".join(lines)


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return value


def _repeats(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError("must be between 1 and 100")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m roost.bench protocol``."""
    parser.add_argument(
        "--seconds",
        type=_budget,
        default=DEFAULT_SECONDS,
        help=f"total measuring budget, shared equally by all cases (default {DEFAULT_SECONDS:g})",
    )
    parser.add_argument(
        "--repeats",
        type=_repeats,
        default=DEFAULT_REPEATS,
        help=f"timed batches per figure, whose median is reported (default {DEFAULT_REPEATS})",
    )


def run(args: argparse.Namespace) -> int:
    """Print the table, then one line holding a single JSON object with every figure."""
    result = collect(args.seconds, args.repeats)
    print(render_table(result))
    print(json.dumps(result, separators=(",", ":")))
    sys.stdout.flush()
    return 0
