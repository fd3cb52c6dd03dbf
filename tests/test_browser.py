"""The demo page and roost.js in a real browser: Debian's Chromium driven by Playwright, against a real
``roost serve --dev`` process (its demo site, its tic-tac-toe logic).

Chromium is /usr/bin/chromium (``.ci/run`` installs it with apt-get; Playwright's own browser download
cannot reach its host here), started with the flags that keep it from phoning home; each test gets
fresh browser contexts (one per user, so two pages are two users). The socket-cut test loads the page
through a TCP proxy in this process whose ``cut()`` drops every connection: the page sees its socket
die, as a phone changing networks would.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import struct
import sys
import threading
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from roost.devsite import js_root

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``roost serve --dev`` on port 0; yields its HTTP base URL."""
    assert (js_root() / "node_modules" / "@msgpack" / "msgpack").is_dir(), "run: npm ci --prefix protocol/js"
    data = tmp_path_factory.mktemp("roost-browser")
    process = subprocess.Popen(
        [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data", str(data),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    url = ""
    while not url:
        line = process.stdout.readline()
        assert line, "roost serve exited early"
        if line.startswith("ROOST_URL="):
            url = line.strip().removeprefix("ROOST_URL=").replace("ws://", "http://").rstrip("/")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # launch() starts Chromium on a fresh temporary --user-data-dir of its own (it refuses the flag
        # in args), removed on close; one context per user keeps the users' storage apart.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Browser, base: str, user: str) -> Page:
    page = browser.new_context().new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/?user={user}")
    expect(page.locator("#status")).to_have_text(f"connected as {user}")
    assert not errors, errors
    return page


def enter_shared_room(a: Page, b: Page) -> str:
    a.click("#create")
    code = a.locator("#room-code")
    expect(code).to_have_text(re.compile(r"^[0-9A-Z]{8}$"))
    room_code = code.inner_text()
    b.fill("#code-input", room_code)
    b.click("#join-code")
    expect(b.locator("#room-code")).to_have_text(room_code)
    return room_code


def test_two_pages_play_a_whole_game(browser: Browser, server: str) -> None:
    x, o = open_page(browser, server, "xavier"), open_page(browser, server, "olga")
    enter_shared_room(x, o)
    expect(x.locator('#members li[data-user="olga"]')).to_have_attribute("data-status", "online")
    x.click("#start")
    expect(x.locator("#game-status")).to_have_text("your turn (X)")
    expect(o.locator("#game-status")).to_have_text("xavier's turn (X)")
    o.click('#board button[data-cell="4"]', force=True)  # not o's turn: the logic refuses it
    expect(o.locator("#error")).to_contain_text("invalid_state")
    for page, cell in ((x, 0), (o, 4), (x, 1), (o, 8), (x, 2)):
        page.click(f'#board button[data-cell="{cell}"]')
        expect(page.locator(f'#board button[data-cell="{cell}"]')).not_to_have_text("")
    for page in (x, o):
        expect(page.locator("#game-status")).to_have_text("xavier wins")
        expect(page.locator("#board button")).to_have_text(["X", "X", "X", "", "O", "", "", "", "O"])
    o.click("#start")  # rematch: olga plays X
    expect(x.locator("#game-status")).to_have_text("olga's turn (X)")
    o.click('#board button[data-cell="0"]')
    # the inactive-member policy, visible when a tab closes mid-game
    o.context.close()
    expect(x.locator("#game-status")).to_have_text("xavier wins: olga left the game")
    expect(x.locator('#members li[data-user="olga"]')).to_have_attribute("data-status", "offline")
    x.context.close()


class CuttableProxy:
    """A TCP proxy on 127.0.0.1 to ``target``; :meth:`cut` drops every connection through it at once."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.holding = False
        """While set, new connections are accepted and dropped at once (the network is still down)."""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            if self.holding:
                client.close()
                continue
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            # No WebSocket Close on either side: the page and the server see the TCP link die. shutdown
            # first, as close() alone does not wake the pump thread blocked in recv on it (the socket
            # would live on); SO_LINGER 0 then makes close send a reset.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


def chat_numbers(page: Page) -> list[int]:
    return [int(n) for n in page.locator("#chat-log li").evaluate_all("items => items.map(li => li.dataset.n)")]


def test_chat_presence_typing_expiry_and_read_receipts_between_two_pages(browser: Browser, server: str) -> None:
    a, b = open_page(browser, server, "amy"), open_page(browser, server, "ben")
    enter_shared_room(a, b)
    # presence diffs: ben's join, then his status
    expect(a.locator('#members li[data-user="ben"]')).to_have_attribute("data-status", "online")
    b.select_option("#presence-status", "away")
    expect(a.locator('#members li[data-user="ben"]')).to_have_attribute("data-status", "away")
    b.select_option("#presence-status", "online")
    expect(a.locator('#members li[data-user="ben"]')).to_have_attribute("data-status", "online")
    # typing shows, then clears by itself (the server's 5 s typing timeout)
    b.locator("#chat-input").press_sequentially("hel")
    ben = a.locator('#members li[data-user="ben"]')
    expect(ben).to_have_attribute("data-typing", "true")
    expect(ben).to_have_attribute("data-typing", "false", timeout=9_000)
    # chat both ways; ben's page reads amy's message and amy sees the receipt
    a.fill("#chat-input", "hello ben")
    a.press("#chat-input", "Enter")
    expect(b.locator("#chat-log li")).to_have_count(1)
    expect(b.locator("#chat-log li").first).to_contain_text("amy: hello ben")
    expect(a.locator('#chat-log li[data-n="1"] .receipt')).to_have_text("✓ read by ben")
    b.fill("#chat-input", "hi amy")
    b.click("#chat-send")
    expect(a.locator("#chat-log li")).to_have_count(2)
    expect(b.locator('#chat-log li[data-n="2"] .receipt')).to_have_text("✓ read by amy")
    # a third page joining later gets the history
    c = open_page(browser, server, "cat")
    c.fill("#code-input", a.locator("#room-code").inner_text())
    c.click("#join-code")
    expect(c.locator("#chat-log li")).to_have_text([re.compile("amy: hello ben"),
                                                    re.compile("ben: hi amy")])
    expect(a.locator('#members li[data-user="cat"]')).to_have_attribute("data-status", "online")
    # leave: a presence leave for the others
    c.click("#leave")
    expect(a.locator('#members li[data-user="cat"]')).to_have_count(0)
    expect(c.locator("#rooms li").first).to_be_visible()  # back in the lobby, the public room listed
    for page in (a, b, c):
        page.context.close()


def test_a_cut_socket_reconnects_and_resumes_with_no_gap_or_duplicate(browser: Browser, server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    proxy = CuttableProxy((host, int(port)))
    try:
        cut_page = open_page(browser, f"http://127.0.0.1:{proxy.port}", "cora")
        other = open_page(browser, server, "dan")
        enter_shared_room(cut_page, other)
        for text in ("one", "two"):
            other.fill("#chat-input", text)
            other.press("#chat-input", "Enter")
        expect(cut_page.locator("#chat-log li")).to_have_count(2)
        proxy.holding = True
        proxy.cut()
        cut_page.wait_for_function("demo.client.state === 'reconnecting'")
        for text in ("three", "four", "five"):  # while cora is away: what her resume must replay
            other.fill("#chat-input", text)
            other.press("#chat-input", "Enter")
        expect(other.locator("#chat-log li")).to_have_count(5)
        proxy.holding = False
        expect(cut_page.locator("#status")).to_have_text("connected as cora")
        other.fill("#chat-input", "six")
        other.press("#chat-input", "Enter")
        expect(cut_page.locator("#chat-log li")).to_have_count(6)
        assert chat_numbers(cut_page) == [1, 2, 3, 4, 5, 6]
        stats = cut_page.evaluate("demo.client.stats")
        assert (stats["reconnects"], stats["gaps"], stats["duplicates"]) == (1, 0, 0), stats
        texts = [text.split(": ", 1)[1] for text in cut_page.locator("#chat-log li").all_inner_texts()]
        assert texts == ["one", "two", "three", "four", "five", "six"]
        assert cut_page.evaluate("demo.client.welcome.resumed") is True
        # chatSend in flight across a cut is re-sent with its cid and posted once
        proxy.cut()
        cut_page.evaluate("demo.client.chatSend(demo.room, 'across the cut', {cid: 'cut-1'})")
        expect(other.locator("#chat-log li")).to_have_count(7)
        cut_page.wait_for_function("demo.client.stats.reconnects === 2 && demo.client.state === 'open'")
        transitions = cut_page.evaluate("demo.transitions")
        states = [t["state"] for t in transitions]
        assert states[-2:] == ["reconnecting", "open"], states
        print(f"\nreconnect-to-resumed after a cut: {transitions[-1]['at'] - transitions[-2]['at']:.1f} ms")
        assert cut_page.evaluate("demo.client.chatSend(demo.room, 'again', {cid: 'cut-1'}).then(a => a.dup)") is True
        expect(other.locator("#chat-log li")).to_have_count(7)
        for page in (cut_page, other):
            page.context.close()
    finally:
        proxy.close()


def test_token_refresh_and_every_client_error_path_in_the_browser(browser: Browser, server: str) -> None:
    page = open_page(browser, server, "eve")
    ws_url = server.replace("http://", "ws://") + "/"
    result = page.evaluate("""async (url) => {
        const { Roost, RoostError } = await import('/js/roost.js');
        const token = async (user) => (await (await fetch('/dev/token?user=' + user)).json()).token;
        const out = {};
        // refresh before exp: the token source is asked again and the connection's exp moves
        let calls = 0;
        const c = await Roost.connect(url, { token: async () => { calls += 1; return token('eve'); },
                                              refreshMarginMs: 3600 * 1000 - 1000 });
        const exp = c.welcome.exp;
        await new Promise((r) => setTimeout(r, 2200));
        out.refresh = { calls, moved: c.welcome.exp >= exp, state: c.state };
        const err = async (p) => { try { await p; return 'resolved'; } catch (e) {
            return { cls: e instanceof RoostError, code: e.code, retryMs: e.retryMs, closeCode: e.closeCode }; } };
        out.badToken = await err(Roost.connect(url, { token: 'not.a.token' }));
        out.tokenSourceFails = await err(Roost.connect(url, { token: async () => { throw new Error('down'); } }));
        out.tokenInUrl = await err((async () => new Roost(url + '?token=x', { token: 'x' }))());
        out.notFound = await err(c.join({ code: 'ZZZZZZZZ' }));
        out.noRoom = await err(c.chatSend('r-nope', 'hi'));
        const left = await c.create({});
        await c.leave(left);
        out.notMember = await err(c.chatSend(left.id, 'hi'));
        const room = await c.create({ logic: 'tictactoe', inactive: 'end' });
        out.conflict = await err(c.stateSet(room, { version: 42, state: {} }));
        out.logicRefusal = await err(c.send(room, 'move', { cell: 0 }));
        out.tooLong = await err(c.chatSend(room, 'x'.repeat(5000)));
        out.unsafeInt = await err(c.read(room, 2 ** 53));
        out.date = (await c.chatSend(room, 'dated', { meta: { at: new Date(5) } })).n;
        out.dateBack = (await c.history(room)).messages[0].meta.at;
        const burst = await Promise.allSettled(Array.from({ length: 160 }, () => c.typing(room, false)));
        const limited = burst.filter((r) => r.status === 'rejected').map((r) => r.reason);
        out.rateLimited = { count: limited.length, code: limited[0]?.code, retryMs: limited[0]?.retryMs };
        await new Promise((r) => setTimeout(r, 2500));   // refill the bucket before going on
        await c.close();
        out.afterClose = await err(c.lobby());
        return out;
    }""", ws_url)
    assert result["refresh"]["calls"] >= 2 and result["refresh"]["moved"] and result["refresh"]["state"] == "open"
    assert result["badToken"] == {"cls": True, "code": "closed", "retryMs": None, "closeCode": 4500}
    assert result["tokenSourceFails"]["code"] == "unauthorized"
    assert result["tokenInUrl"]["code"] == "bad_argument"
    assert result["notFound"]["code"] == "not_found"
    assert result["noRoom"]["code"] == "not_found"
    assert result["notMember"]["code"] == "not_member"
    assert result["conflict"]["code"] == "conflict"
    assert result["logicRefusal"]["code"] == "invalid_state"
    assert result["tooLong"]["code"] == "too_long"
    assert result["unsafeInt"]["code"] == "bad_argument"
    assert (result["date"], result["dateBack"]) == (1, 5)
    assert result["rateLimited"]["count"] > 0 and result["rateLimited"]["code"] == "rate_limited"
    assert result["rateLimited"]["retryMs"] > 0
    assert result["afterClose"] == {"cls": True, "code": "closed", "retryMs": None, "closeCode": 1000}
    # an error the page shows: a join by an unknown code
    page.fill("#code-input", "ZZZZZZZZ")
    page.click("#join-code")
    expect(page.locator("#error")).to_contain_text("not_found")
    page.context.close()


def test_figures_from_the_page(browser: Browser, server: str) -> None:
    """The issue's figures, measured in the page (printed with -s): connect + hello + join, and the
    chat round trip (chatSend to its ok, which follows the message's commit) over 200 messages, paced
    under the default rate limit (50/s) so that no request is refused."""
    page = open_page(browser, server, "gus")
    figures = page.evaluate("""async (url) => {
        const { Roost } = await import('/js/roost.js');
        const token = async (user) => (await (await fetch('/dev/token?user=' + user)).json()).token;
        const pct = (xs, p) => {
            const s = [...xs].sort((a, b) => a - b);
            return s[Math.min(s.length - 1, Math.floor(p * s.length))];
        };
        const host = await Roost.connect(url, { token: await token('gus') });
        const room = await host.create({ max: 64 });
        const joins = [];
        for (let i = 0; i < 30; i++) {
            const t = await token('guest' + (i % 5));
            const start = performance.now();
            const c = await Roost.connect(url, { token: t });
            await c.join({ code: room.snapshot.code });
            joins.push(performance.now() - start);
            await c.close();
        }
        const rtts = [];
        for (let i = 0; i < 200; i++) {
            const start = performance.now();
            await host.chatSend(room, 'message ' + i);
            const rtt = performance.now() - start;
            rtts.push(rtt);
            await new Promise((r) => setTimeout(r, Math.max(0, 22 - rtt)));
        }
        await host.close();
        return { join: [pct(joins, 0.5), pct(joins, 0.95)], chat: [pct(rtts, 0.5), pct(rtts, 0.95)] };
    }""", server.replace("http://", "ws://") + "/")
    print(f"\nconnect+hello+join p50 {figures['join'][0]:.1f} ms p95 {figures['join'][1]:.1f} ms (30); "
          f"chat round trip p50 {figures['chat'][0]:.1f} ms p95 {figures['chat'][1]:.1f} ms (200)")
    assert 0 < figures["join"][0] <= figures["join"][1] < 2000
    assert 0 < figures["chat"][0] <= figures["chat"][1] < 2000
    page.context.close()
