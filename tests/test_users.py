"""The user directory and its service operations (PROTOCOL.md §15), over the wire and over HTTP."""

from __future__ import annotations

import base64
import json
import time

import msgpack
import pytest
import trio
from nacl.signing import SigningKey

from roost import Engine
from roost.client import RequestError
from roost.protocol.frames import USER_IDENTITIES, USER_KEYS
from roost.store.lmdb import LmdbStore
from roost.testing import SERVICE_KEY, TestKeys, start_engine, test_config
from tests.test_http import api, exchange, request


def pubkey(seed: int) -> str:
    """A real Ed25519 public key, base64url (what ``user_link_key`` takes)."""
    key = SigningKey(seed.to_bytes(32, "big"))
    return base64.urlsafe_b64encode(bytes(key.verify_key)).rstrip(b"=").decode()


@pytest.fixture
async def roost_engine(nursery, roost_config, tmp_path) -> Engine:
    """The engine of ``roost_connect`` here runs on a real LMDB store in a tmp dir."""
    return await start_engine(nursery, roost_config, store=LmdbStore(tmp_path / "db"))


@pytest.fixture
def lmdb_engine(roost_engine: Engine) -> Engine:
    return roost_engine


async def call(engine: Engine, op: str, args: dict | None = None, *, key: str | None = SERVICE_KEY) -> tuple[int, object]:
    reply = await api(engine, op, args, key=key)
    body = reply.json
    assert isinstance(body, dict)
    return reply.status, body.get("result", body.get("error"))


# -- every operation, both transports, with and without the credential ----------------------------


USER_OPS = ["user_upsert", "user_get", "user_link_key", "user_unlink_key", "user_move_key", "user_link_identity",
            "user_unlink_identity", "users", "user_audit"]


@pytest.mark.parametrize("op", USER_OPS)
async def test_every_user_op_refuses_without_the_credential(op: str, roost_connect, lmdb_engine: Engine) -> None:
    with trio.fail_after(10):
        args = {"provider": "google", "subject": "s", "id": "ann", "key": pubkey(1), "to": "ann"}
        for key in (None, "wrong"):
            status, error = await call(lmdb_engine, op, args, key=key)
            assert status == 401 and error["code"] == "unauthorized"
        client = await roost_connect("ops")
        with pytest.raises(RequestError) as info:
            await client.admin("wrong", op, args)
        assert info.value.code == "unauthorized"
        status, users = await call(lmdb_engine, "users")  # the refused calls wrote nothing: only the
        assert status == 200 and [u["id"] for u in users["users"]] == ["ops"]  # client's first sight


async def test_every_user_op_over_the_websocket(roost_connect, lmdb_engine: Engine) -> None:
    with trio.fail_after(10):
        ops = await roost_connect("ops")
        ann = await ops.admin(SERVICE_KEY, "user_upsert", {"provider": "google", "subject": "g-1", "id": "ann",
                                                          "name": "Ann", "meta": {"level": 3}})
        assert (ann.id, ann.name, ann.meta, [i.subject for i in ann.identities]) == ("ann", "Ann", {"level": 3}, ["g-1"])
        assert (await ops.admin(SERVICE_KEY, "user_get", {"provider": "google", "subject": "g-1"})).id == "ann"
        ann = await ops.admin(SERVICE_KEY, "user_link_key", {"id": "ann", "key": pubkey(1)})
        assert [k.key for k in ann.keys] == [pubkey(1)]
        assert (await ops.admin(SERVICE_KEY, "user_get", {"key": pubkey(1)})).id == "ann"
        await ops.admin(SERVICE_KEY, "user_upsert", {"provider": "apple", "subject": "a-1", "id": "bob"})
        bob = await ops.admin(SERVICE_KEY, "user_move_key", {"key": pubkey(1), "to": "bob"})
        assert [k.key for k in bob.keys] == [pubkey(1)]
        ann = await ops.admin(SERVICE_KEY, "user_get", {"id": "ann"})
        assert ann.keys == () and ann.merged_into is None  # ann keeps an identity: moved, not merged
        ann = await ops.admin(SERVICE_KEY, "user_link_identity", {"id": "ann", "provider": "steam", "subject": "7"})
        ann = await ops.admin(SERVICE_KEY, "user_unlink_identity", {"id": "ann", "provider": "google", "subject": "g-1"})
        assert [(i.provider, i.subject) for i in ann.identities] == [("steam", "7")]
        bob = await ops.admin(SERVICE_KEY, "user_unlink_key", {"id": "bob", "key": pubkey(1)})
        assert bob.keys == ()
        page = await ops.admin(SERVICE_KEY, "users", {"limit": 100})
        assert [u.id for u in page.users] == ["ann", "bob", "ops"] and page.next is None
        audit = await ops.admin(SERVICE_KEY, "user_audit", {"id": "ann"})
        assert [e.action for e in audit.entries] == ["created", "identity_linked", "key_linked", "key_moved_out",
                                                     "identity_linked", "identity_unlinked"]
        assert audit.entries[3].other == "bob" and audit.entries[3].key == pubkey(1)
        assert all(a.ts <= b.ts for a, b in zip(audit.entries, audit.entries[1:]))


async def test_every_user_op_over_http(lmdb_engine: Engine) -> None:
    with trio.fail_after(10):
        status, ann = await call(lmdb_engine, "user_upsert", {"provider": "google", "subject": "g-1", "id": "ann"})
        assert status == 200 and ann["id"] == "ann" and ann["identities"][0]["linked_at"] > 0
        assert (await call(lmdb_engine, "user_link_key", {"id": "ann", "key": pubkey(1)}))[1]["keys"][0]["key"] == pubkey(1)
        await call(lmdb_engine, "user_upsert", {"provider": "google", "subject": "g-2", "id": "bob"})
        status, error = await call(lmdb_engine, "user_link_key", {"id": "bob", "key": pubkey(1)})
        assert (status, error["code"]) == (409, "conflict")
        status, bob = await call(lmdb_engine, "user_move_key", {"key": pubkey(1), "to": "bob"})
        assert status == 200 and bob["keys"][0]["key"] == pubkey(1)
        assert (await call(lmdb_engine, "user_unlink_key", {"id": "bob", "key": pubkey(1)}))[0] == 200
        assert (await call(lmdb_engine, "user_link_identity", {"id": "bob", "provider": "x", "subject": "1"}))[0] == 200
        status, bob = await call(lmdb_engine, "user_unlink_identity", {"id": "bob", "provider": "x", "subject": "1"})
        assert status == 200 and [i["subject"] for i in bob["identities"]] == ["g-2"]
        # the read-only operations answer GET with query arguments too
        reply = await exchange(lmdb_engine.address, request("GET", "/api/user_get?id=ann", key=SERVICE_KEY))
        assert reply.status == 200 and reply.json["result"]["id"] == "ann"
        reply = await exchange(lmdb_engine.address, request("GET", "/api/users?limit=1", key=SERVICE_KEY))
        assert [u["id"] for u in reply.json["result"]["users"]] == ["ann"] and reply.json["result"]["next"] == "ann"
        reply = await exchange(lmdb_engine.address, request("GET", "/api/user_audit?id=bob&limit=2", key=SERVICE_KEY))
        assert [e["action"] for e in reply.json["result"]["entries"]] == ["created", "identity_linked"]
        assert reply.json["result"]["next"] == "2"
        reply = await exchange(lmdb_engine.address, request("GET", "/api/user_audit?id=bob&cursor=2", key=SERVICE_KEY))
        assert [e["action"] for e in reply.json["result"]["entries"]] == [
            "key_moved_in", "key_unlinked", "identity_linked", "identity_unlinked"]
        assert "next" not in reply.json["result"]  # the end: next is null, and null fields are left out (§2)
        for bad in ({"id": "ann", "key": pubkey(2)}, {}, {"provider": "google"}):
            status, error = await call(lmdb_engine, "user_get", bad)
            assert status == 400 and error["code"] in ("bad_field", "missing_field")
        status, error = await call(lmdb_engine, "user_get", {"id": "nobody"})
        assert (status, error["code"]) == (404, "not_found")


# -- upsert semantics ---------------------------------------------------------------------------------


async def test_upsert_creates_patches_only_given_fields_clears_null_and_is_idempotent(lmdb_engine: Engine) -> None:
    with trio.fail_after(10):
        ident = {"provider": "google", "subject": "g-1"}
        _, made = await call(lmdb_engine, "user_upsert", {**ident, "name": "Ann", "meta": {"a": 1}})
        assert made["id"].startswith("u_") and (made["name"], made["meta"]) == ("Ann", {"a": 1})
        _, again = await call(lmdb_engine, "user_upsert", {**ident, "name": "Ann", "meta": {"a": 1}})
        assert again == made  # the same call changes nothing, not even updated
        _, named = await call(lmdb_engine, "user_upsert", {**ident, "name": "Annie"})
        assert (named["id"], named["name"], named["meta"]) == (made["id"], "Annie", {"a": 1})
        _, cleared = await call(lmdb_engine, "user_upsert", {**ident, "meta": None})
        assert (cleared["name"], cleared.get("meta")) == ("Annie", None)
        _, cleared = await call(lmdb_engine, "user_upsert", {**ident, "name": None})
        assert cleared["name"] == ""
        status, error = await call(lmdb_engine, "user_upsert", {**ident, "id": "someone-else"})
        assert (status, error["code"]) == (409, "conflict")
        status, error = await call(lmdb_engine, "user_upsert", {"provider": "p", "subject": "s", "id": "~gmine"})
        assert (status, error["code"]) == (400, "bad_field")
        status, error = await call(lmdb_engine, "user_upsert", {"provider": "Bad:Provider", "subject": "s"})
        assert (status, error["code"]) == (400, "bad_field")
        page = (await call(lmdb_engine, "users"))[1]
        assert [u["id"] for u in page["users"]] == [made["id"]]


async def test_a_user_is_never_left_without_a_way_in_unless_asked(lmdb_engine: Engine) -> None:
    with trio.fail_after(10):
        await call(lmdb_engine, "user_upsert", {"provider": "google", "subject": "g-1", "id": "ann"})
        await call(lmdb_engine, "user_link_key", {"id": "ann", "key": pubkey(1)})
        assert (await call(lmdb_engine, "user_unlink_identity", {"id": "ann", "provider": "google", "subject": "g-1"}))[0] == 200
        status, error = await call(lmdb_engine, "user_unlink_key", {"id": "ann", "key": pubkey(1)})
        assert (status, error["code"]) == (409, "invalid_state")
        await call(lmdb_engine, "user_upsert", {"provider": "google", "subject": "g-2", "id": "bob"})
        status, error = await call(lmdb_engine, "user_move_key", {"key": pubkey(1), "to": "bob", "merge": False})
        assert (status, error["code"]) == (409, "invalid_state")
        _, ann = await call(lmdb_engine, "user_get", {"id": "ann"})
        assert [k["key"] for k in ann["keys"]] == [pubkey(1)]  # the refused operation wrote nothing
        status, ann = await call(lmdb_engine, "user_unlink_key", {"id": "ann", "key": pubkey(1), "allow_empty": True})
        assert status == 200 and ann.get("keys", []) == [] and ann.get("identities", []) == []
        status, error = await call(lmdb_engine, "user_get", {"key": pubkey(1)})
        assert status == 404


# -- races: one serial owner ------------------------------------------------------------------------


async def test_two_upserts_of_one_identity_at_once_exactly_one_wins(lmdb_engine: Engine) -> None:
    with trio.fail_after(10):
        results: dict[str, tuple[int, object]] = {}

        async def upsert(user_id: str) -> None:
            results[user_id] = await call(lmdb_engine, "user_upsert", {"provider": "google", "subject": "same", "id": user_id})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upsert, "ann")
            nursery.start_soon(upsert, "bob")
        statuses = sorted(status for status, _ in results.values())
        assert statuses == [200, 409]
        winner = next(user_id for user_id, (status, _) in results.items() if status == 200)
        _, holder = await call(lmdb_engine, "user_get", {"provider": "google", "subject": "same"})
        assert holder["id"] == winner
        assert [u["id"] for u in (await call(lmdb_engine, "users"))[1]["users"]] == [winner]

        # Without ids: both succeed, and they are one user.
        made: list[str] = []

        async def anonymous() -> None:
            made.append((await call(lmdb_engine, "user_upsert", {"provider": "google", "subject": "fresh"}))[1]["id"])

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(anonymous)
        assert len(set(made)) == 1 and len(made) == 5


async def test_two_links_of_one_key_at_once_exactly_one_wins(roost_connect, lmdb_engine: Engine) -> None:
    with trio.fail_after(10):
        ops = await roost_connect("ops")
        for user_id in ("ann", "bob"):
            await ops.admin(SERVICE_KEY, "user_upsert", {"provider": "google", "subject": user_id, "id": user_id})
        outcomes: dict[str, str] = {}

        async def link(user_id: str) -> None:  # over the wire and over HTTP at once
            if user_id == "ann":
                try:
                    await ops.admin(SERVICE_KEY, "user_link_key", {"id": user_id, "key": pubkey(9)})
                    outcomes[user_id] = "ok"
                except RequestError as error:
                    outcomes[user_id] = error.code
            else:
                status, result = await call(lmdb_engine, "user_link_key", {"id": user_id, "key": pubkey(9)})
                outcomes[user_id] = "ok" if status == 200 else result["code"]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(link, "ann")
            nursery.start_soon(link, "bob")
        assert sorted(outcomes.values()) == ["conflict", "ok"], outcomes
        winner = next(u for u, outcome in outcomes.items() if outcome == "ok")
        assert (await ops.admin(SERVICE_KEY, "user_get", {"key": pubkey(9)})).id == winner
        loser = (await ops.admin(SERVICE_KEY, "user_get", {"id": "bob" if winner == "ann" else "ann"}))
        assert loser.keys == ()


# -- paging ---------------------------------------------------------------------------------------------


async def test_paging_is_stable_while_users_are_added(lmdb_engine: Engine) -> None:
    with trio.fail_after(30):
        original = [f"user-{i:02d}" for i in range(0, 40, 2)]  # even numbers; odd ones are added meanwhile
        for user_id in original:
            await call(lmdb_engine, "user_upsert", {"provider": "p", "subject": user_id, "id": user_id})
        seen: list[str] = []
        cursor = None
        added = iter(f"user-{i:02d}" for i in range(1, 40, 2))
        for _ in range(20):  # bounded: 20 originals + at most 20 added, pages of 3
            args = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            status, page = await call(lmdb_engine, "users", args)
            assert status == 200 and len(page["users"]) <= 3
            seen += [u["id"] for u in page["users"]]
            for _ in range(2):  # insert on both sides of the cursor
                user_id = next(added, None)
                if user_id is not None:
                    await call(lmdb_engine, "user_upsert", {"provider": "p", "subject": user_id, "id": user_id})
            cursor = page.get("next")
            if cursor is None:
                break
        assert cursor is None
        assert len(seen) == len(set(seen)), "no user twice"
        assert set(original) <= set(seen), "no user that was there all along is skipped"
        assert seen == sorted(seen)


# -- limits at their largest ------------------------------------------------------------------------------


async def test_the_largest_user_comes_through_both_transports(roost_connect, lmdb_engine: Engine) -> None:
    with trio.fail_after(30):
        ops = await roost_connect("ops")
        limit = lmdb_engine.config.max_meta_bytes
        meta = {"x": "a" * (limit - 6)}  # fixmap(1) + fixstr "x" (2) + str16 header (3) + payload
        assert len(msgpack.packb(meta)) == limit
        too_big = {"x": "a" * (limit - 5)}
        status, error = await call(lmdb_engine, "user_upsert", {"provider": "p", "subject": "s", "id": "big", "meta": too_big})
        assert (status, error["code"]) == (413, "too_large")
        await ops.admin(SERVICE_KEY, "user_upsert", {"provider": "p", "subject": "s" * 256, "id": "b" * 128,
                                                     "name": "n" * 64, "meta": meta})
        for i in range(1, USER_IDENTITIES):
            await ops.admin(SERVICE_KEY, "user_link_identity", {"id": "b" * 128, "provider": "p" * 32, "subject": f"{i:03d}" + "s" * 253})
        with pytest.raises(RequestError) as info:
            await ops.admin(SERVICE_KEY, "user_link_identity", {"id": "b" * 128, "provider": "p", "subject": "one-more"})
        assert info.value.code == "limit_reached"
        for i in range(USER_KEYS):
            await ops.admin(SERVICE_KEY, "user_link_key", {"id": "b" * 128, "key": pubkey(100 + i)})
        with pytest.raises(RequestError) as info:
            await ops.admin(SERVICE_KEY, "user_link_key", {"id": "b" * 128, "key": pubkey(99)})
        assert info.value.code == "limit_reached"
        big = await ops.admin(SERVICE_KEY, "user_get", {"key": pubkey(100 + USER_KEYS - 1)})
        assert (len(big.keys), len(big.identities), big.meta) == (USER_KEYS, USER_IDENTITIES, meta)
        status, got = await call(lmdb_engine, "user_get", {"id": "b" * 128})
        assert status == 200 and len(got["keys"]) == USER_KEYS
        # Forty such users: every page is cut by bytes and the listing still ends.
        for n in range(40):
            await call(lmdb_engine, "user_upsert", {"provider": "q", "subject": f"{n}", "id": f"c{n:02d}" + "c" * 125,
                                                     "meta": meta})
        listed, cursor = 0, None
        for _ in range(60):
            page = await ops.admin(SERVICE_KEY, "users", {"limit": 100} | ({"cursor": cursor} if cursor else {}))
            assert 1 <= len(page.users) < 100
            listed += len(page.users)
            cursor = page.next
            if cursor is None:
                break
        assert cursor is None and listed == 42  # 40 + the big one + "ops"


# -- backend tokens ----------------------------------------------------------------------------------------


async def test_a_token_sub_is_recorded_on_first_sight_and_the_guest_prefix_is_reserved(
        nursery, roost_connect, lmdb_engine: Engine, roost_keys: TestKeys) -> None:
    from tests.wire import raw_peer

    with trio.fail_after(10):
        await roost_connect("carol")
        await roost_connect("carol")
        await lmdb_engine.users.settle()
        status, carol = await call(lmdb_engine, "user_get", {"id": "carol"})
        assert status == 200 and carol["name"] == "Carol" and carol["guest"] is False
        _, audit = await call(lmdb_engine, "user_audit", {"id": "carol"})
        assert [e["action"] for e in audit["entries"]] == ["seen"]
        peer = await raw_peer(nursery, lmdb_engine.url)
        await peer.send({"t": "hello", "v": 1, "token": roost_keys.token("~gimpostor")})
        assert await peer.closed_code() == 4500
        assert lmdb_engine.gateway.auth_failures["reserved_sub"] == 1


async def test_the_directory_survives_a_restart(roost_keys: TestKeys, tmp_path) -> None:
    with trio.fail_after(20):
        for round_ in range(2):
            async with trio.open_nursery() as nursery:
                engine = await start_engine(nursery, test_config(roost_keys), store=LmdbStore(tmp_path / "db"))
                if round_ == 0:
                    await call(engine, "user_upsert", {"provider": "google", "subject": "g", "id": "ann", "meta": {"k": 1}})
                    await call(engine, "user_link_key", {"id": "ann", "key": pubkey(5)})
                else:
                    status, ann = await call(engine, "user_get", {"key": pubkey(5)})
                    assert status == 200 and ann["meta"] == {"k": 1}
                    status, error = await call(engine, "user_link_key", {"id": "ann", "key": pubkey(5)})
                    assert status == 200  # idempotent
                nursery.cancel_scope.cancel()


def test_the_audit_keys_of_two_users_never_share_a_prefix() -> None:
    from roost.users import _audit_prefix

    assert not _audit_prefix("x:0000000000000001").startswith(_audit_prefix("x"))
    assert json.dumps(_audit_prefix("x")) == '"a:001:x:"'


# -- property: the serial owner keeps every index true, whatever the interleaving ---------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from roost.errors import RoomError  # noqa: E402
from roost.store.memory import MemoryStore  # noqa: E402
from roost.users import Directory  # noqa: E402


class YieldingStore(MemoryStore):
    """A store whose reads and commits yield to other tasks a chosen number of times (partial I/O)."""

    def __init__(self, pauses: list[int]) -> None:
        super().__init__()
        self._pauses = pauses
        self._n = 0

    async def _pause(self) -> None:
        self._n += 1
        for _ in range(self._pauses[self._n % len(self._pauses)]):
            await trio.lowlevel.checkpoint()

    async def get(self, table: str, key: str) -> bytes | None:
        await self._pause()
        return await super().get(table, key)

    async def commit(self, batch) -> None:
        await self._pause()
        await super().commit(batch)


USERS = ["u0", "u1", "u2"]
KEYS = [pubkey(200 + i) for i in range(3)]
SUBJECTS = ["u0", "u1", "u2", "a", "b"]  # the users' own seed identities are in play too
OPS = st.one_of(
    st.tuples(st.just("link_key"), st.sampled_from(USERS), st.sampled_from(KEYS)),
    st.tuples(st.just("unlink_key"), st.sampled_from(USERS), st.sampled_from(KEYS)),
    st.tuples(st.just("move_key"), st.sampled_from(USERS), st.sampled_from(KEYS)),
    st.tuples(st.just("link_identity"), st.sampled_from(USERS), st.sampled_from(SUBJECTS)),
    st.tuples(st.just("unlink_identity"), st.sampled_from(USERS), st.sampled_from(SUBJECTS)),
    st.tuples(st.just("upsert"), st.sampled_from(USERS), st.sampled_from(SUBJECTS)),
)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(OPS, min_size=1, max_size=25), pauses=st.lists(st.integers(0, 3), min_size=1, max_size=8),
       waves=st.integers(1, 3))
def test_concurrent_directory_operations_keep_every_index_true(ops, pauses, waves) -> None:
    async def main() -> None:
        store = YieldingStore(pauses)
        users = Directory(store, time.time)
        async with trio.open_nursery() as nursery:
            await nursery.start(users.run)
            for user_id in USERS:
                await users.upsert("p", user_id, user_id=user_id)
            size = max(1, len(ops) // waves)
            for start in range(0, len(ops), size):  # each wave: its operations at once, random start order
                async with trio.open_nursery() as wave:
                    for op in ops[start:start + size]:
                        wave.start_soon(run_op, users, op)
            records = {u: await users.get(u) for u in USERS}
            for key in KEYS:
                holders = [u for u, r in records.items() if key in [k.key for k in r.keys]]
                try:
                    indexed = (await users.by_key(key)).id
                except RoomError:
                    indexed = None
                assert holders == ([] if indexed is None else [indexed]), (key, holders, indexed)
            for subject in SUBJECTS:
                holders = [u for u, r in records.items() if ("p", subject) in [(i.provider, i.subject) for i in r.identities]]
                try:
                    indexed = (await users.by_identity("p", subject)).id
                except RoomError:
                    indexed = None
                assert holders == ([] if indexed is None else [indexed]), (subject, holders, indexed)
            for record in records.values():  # nobody was left without a way in (no allow_empty given)
                assert record.identities or record.keys or record.merged_into is not None
            nursery.cancel_scope.cancel()

    async def run_op(users: Directory, op: tuple[str, str, str]) -> None:
        name, user_id, thing = op
        try:
            if name == "link_key":
                await users.link_key(user_id, thing)
            elif name == "unlink_key":
                await users.unlink_key(user_id, thing)
            elif name == "move_key":
                await users.move_key(thing, user_id, merge=False)
            elif name == "link_identity":
                await users.link_identity(user_id, "p", thing)
            elif name == "unlink_identity":
                await users.unlink_identity(user_id, "p", thing)
            else:
                await users.upsert("p", thing, user_id=user_id)
        except RoomError as error:
            assert error.code in ("conflict", "not_found", "invalid_state", "limit_reached"), error

    trio.run(main)
