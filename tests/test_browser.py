"""The demo page and roost.js in a real browser: Debian's Chromium driven by Playwright, against a real
``roost serve --dev`` process (its demo site, its tic-tac-toe logic).

Chromium is /usr/bin/chromium (``.ci/run`` installs it with apt-get; Playwright's own browser download
cannot reach its host here), started with the flags that keep it from phoning home; each test gets
fresh browser contexts (one per user, so two pages are two users). The socket-cut test loads the page
through a TCP proxy in this process whose ``cut()`` drops every connection: the page sees its socket
die, as a phone changing networks would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

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
    expect(code).to_have_text(__import__("re").compile(r"^[0-9A-Z]{8}$"))
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
