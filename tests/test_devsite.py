"""``roost serve --dev``'s demo site (roost.devsite) and the tic-tac-toe logic it registers (roost.tictactoe)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from roost import Config, Engine
from roost.client import RequestError
from roost.devsite import DevSite
from roost.protocol.errors import ErrorCode
from roost.protocol.frames import Phase, StateEvent
from roost.protocol.tokens import verify
from roost.testing import TestKeys, start_engine, test_config
from roost.tictactoe import LOGIC_NAME, TicTacToe
from tests.test_http import exchange, get, request


@pytest.mark.parametrize("path", ["/", "/index.html", "/js/roost.js", "/js/demo.js", "/js/msgpack/index.mjs",
                                  "/dev/token?user=ann"])
async def test_the_plain_engine_answers_404_on_every_dev_path(roost_engine: Engine, path: str) -> None:
    reply = await get(roost_engine, path)
    assert reply.status == 404
    assert reply.json == {"error": {"code": "not_found", "message": "no such path"}}


@pytest.fixture
def site_root(tmp_path: Path) -> Path:
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "index.html").write_text("<!doctype html><title>demo</title>")
    (tmp_path / "demo" / "demo.js").write_text("export {};")
    (tmp_path / "roost.js").write_text("export const x = 1;")
    return tmp_path


async def dev_engine(nursery: trio.Nursery, keys: TestKeys, root: Path) -> Engine:
    engine = Engine(test_config(keys))
    engine.http_routes = DevSite(keys.kid, keys.signing_key, root=root)
    await nursery.start(engine.serve)
    return engine


async def test_dev_site_serves_the_page_the_client_and_verifiable_tokens(nursery, roost_keys: TestKeys,
                                                                         site_root: Path) -> None:
    engine = await dev_engine(nursery, roost_keys, site_root)
    page = await get(engine, "/")
    assert (page.status, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert page.body == b"<!doctype html><title>demo</title>"
    client = await get(engine, "/js/roost.js")
    assert (client.status, client.headers["content-type"], client.body) == (
        200, "text/javascript; charset=utf-8", b"export const x = 1;")
    head = await exchange(engine.address, request("HEAD", "/js/demo.js"), head_only=True)
    assert head.status == 200 and head.body == b""
    reply = await get(engine, "/dev/token?user=ann_1")
    assert reply.status == 200
    body = reply.json
    claims = verify(body["token"], roost_keys.keyring, time.time())
    assert (claims.sub, claims.name, body["dev_only"]) == ("ann_1", "ann_1", True)
    assert claims.exp == body["exp"]
    # still the engine's own routes first, and only GET/HEAD reach the site
    assert (await get(engine, "/health")).status == 200
    assert (await exchange(engine.address, request("POST", "/", b""))).status == 404


@pytest.mark.parametrize("query", ["", "user=", "user=a%20b", "user=" + "x" * 33, "user=a&user=b", "user=%C3%A9"])
async def test_dev_token_refuses_bad_user_names(nursery, roost_keys: TestKeys, site_root: Path, query: str) -> None:
    engine = await dev_engine(nursery, roost_keys, site_root)
    reply = await get(engine, f"/dev/token?{query}")
    assert reply.status == 400
    assert reply.json["error"]["code"] == "bad_field"


@pytest.mark.parametrize("path", ["/js/msgpack/../../../roost.js", "/js/msgpack/%2e%2e%2froost.mjs",
                                  "/js/msgpack/x.js", "/js/other.js", "/demo/index.html", "/js/msgpack/"])
async def test_dev_site_serves_nothing_outside_its_files(nursery, roost_keys: TestKeys, site_root: Path,
                                                         path: str) -> None:
    engine = await dev_engine(nursery, roost_keys, site_root)
    assert (await get(engine, path)).status == 404


async def test_without_node_modules_the_msgpack_module_says_which_command_installs_it(
    nursery, roost_keys: TestKeys, site_root: Path
) -> None:
    engine = await dev_engine(nursery, roost_keys, site_root)
    reply = await get(engine, "/js/msgpack/index.mjs")
    assert reply.status == 503
    assert "npm ci --prefix protocol/js" in reply.json["error"]["message"]


# -- tic-tac-toe ----------------------------------------------------------------------------------

@pytest.fixture
def roost_config(roost_keys: TestKeys) -> Config:
    return test_config(roost_keys, logics={LOGIC_NAME: TicTacToe})


async def two_players(roost_connect, inactive: str = "end"):
    x = await roost_connect("xena")
    o = await roost_connect("otto")
    room = await x.create(logic=LOGIC_NAME, max=2, inactive=inactive)
    await o.join(code=room.code)
    return x, o, room.room


async def test_a_whole_game_is_validated_and_broadcast(roost_connect) -> None:
    x, o, room = await two_players(roost_connect)
    with pytest.raises(RequestError) as refused:
        await x.send(room, "move", {"cell": 0})
    assert refused.value.code is ErrorCode.INVALID_STATE  # no game yet
    await x.send(room, "start")
    with pytest.raises(RequestError) as refused:
        await x.send(room, "start")
    assert refused.value.code is ErrorCode.INVALID_STATE
    for player, cell in ((x, 0), (o, 3), (x, 1), (o, 4)):
        await player.send(room, "move", {"cell": cell})
    for body, code in (({"cell": 9}, ErrorCode.BAD_FIELD), ({"cell": True}, ErrorCode.BAD_FIELD),
                       (None, ErrorCode.BAD_FIELD), ({"cell": 0}, ErrorCode.INVALID_STATE)):
        with pytest.raises(RequestError) as refused:
            await x.send(room, "move", body)
        assert refused.value.code is code
    with pytest.raises(RequestError) as refused:
        await o.send(room, "move", {"cell": 5})
    assert refused.value.code is ErrorCode.INVALID_STATE  # not o's turn
    with pytest.raises(RequestError) as refused:
        await o.send(room, "dance")
    assert refused.value.code is ErrorCode.BAD_FIELD
    await x.send(room, "move", {"cell": 2})
    event = await o.next_event(StateEvent)
    while event.phase is not Phase.ENDED:
        event = await o.next_event(StateEvent)
    assert event.state["winner"] == "xena" and event.state["board"][:3] == ["X", "X", "X"]
    await o.send(room, "rematch")  # who asks for the rematch plays X
    event = await o.next_event(StateEvent)
    assert event.reason == "start" and event.phase is Phase.PLAYING
    assert (event.state["x"], event.state["o"], event.state["board"]) == ("otto", "xena", [""] * 9)


async def test_a_full_board_without_a_line_is_a_draw(roost_connect) -> None:
    x, o, room = await two_players(roost_connect)
    await x.send(room, "start")
    for index, cell in enumerate((0, 1, 2, 4, 3, 5, 7, 6, 8)):
        await (x if index % 2 == 0 else o).send(room, "move", {"cell": cell})
    snapshot = await x.join(room)
    assert snapshot.phase is Phase.ENDED and snapshot.state["draw"] is True and snapshot.state["winner"] is None


async def test_only_the_two_players_move_and_starting_needs_two_online(roost_connect) -> None:
    x = await roost_connect("xena")
    room = (await x.create(logic=LOGIC_NAME, max=3)).room
    with pytest.raises(RequestError) as refused:
        await x.send(room, "start")
    assert refused.value.code is ErrorCode.INVALID_STATE
    o = await roost_connect("otto")
    await o.join(room)
    await o.send(room, "start")
    watcher = await roost_connect("wanda")
    await watcher.join(room)
    with pytest.raises(RequestError) as refused:
        await watcher.send(room, "move", {"cell": 0})
    assert refused.value.code is ErrorCode.FORBIDDEN


async def test_a_player_who_drops_mid_game_forfeits_under_the_end_policy(roost_connect) -> None:
    x, o, room = await two_players(roost_connect)
    await x.send(room, "start")
    await x.send(room, "move", {"cell": 4})
    await o.aclose()  # the tab closes: presence goes offline, the room's policy ends the game
    event = await x.next_event(StateEvent)
    while event.reason != "forfeit":
        event = await x.next_event(StateEvent)
    assert event.phase is Phase.ENDED
    assert (event.state["winner"], event.state["forfeit"]) == ("xena", "otto")


async def test_under_the_reset_policy_a_drop_resets_to_the_lobby_without_a_forfeit(roost_connect) -> None:
    x, o, room = await two_players(roost_connect, inactive="reset")
    await x.send(room, "start")
    await o.aclose()
    event = await x.next_event(StateEvent)
    while event.reason != "member_inactive":
        event = await x.next_event(StateEvent)
    assert event.phase is Phase.LOBBY
    with pytest.raises(RequestError):
        await x.send(room, "move", {"cell": 0})
