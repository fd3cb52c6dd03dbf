"""Every mistake a user of ``roost`` can make ends in one line on stderr and exit status 2 (or in the
documented behaviour), never in a traceback: bad files, bad settings, bad keys, bad data directories."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from roost.cli import build_parser, main
from roost.config import Config, ConfigError
from roost.keys import read_private_key
from roost.serve import Prepared, prepare
from roost.store import Write
from roost.store.lmdb import LmdbStore
from roost.client import open_client
from roost.protocol.tokens import Keyring, new_claims, public_jwk, sign, verify
from tests.test_store_lmdb import damage_every_page_but_the_main_root


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ROOST_"):
            monkeypatch.delenv(name)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert out == ""
    assert err.startswith("roost: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err[len("roost: error: ") :].rstrip("\n")


def prepared(argv: list[str]) -> Prepared:
    """``prepare`` as ``roost serve`` calls it (the caller closes the store)."""
    return prepare(build_parser().parse_args(["serve", *argv]))


def keypair(tmp_path: Path, name: str = "k.jwk") -> tuple[Path, Path]:
    assert main(["keygen", "--out", str(tmp_path / name)]) == 0
    return tmp_path / name, tmp_path / name.replace(".jwk", ".pub.jwk")


# -- config files and settings ------------------------------------------------------------------


def test_a_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "roost.toml"
    config.write_bytes(b'host = "\xff"\n')
    assert one_line_error(capsys, ["serve", "--dev", "--config", str(config), "--data", str(tmp_path / "d")]) == (
        f"config {config} is not UTF-8 text"
    )


def test_a_directory_as_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert one_line_error(capsys, ["serve", "--dev", "--config", str(tmp_path)]) == (
        f"cannot read config {tmp_path}: Is a directory"
    )


def test_an_unknown_toml_key_lists_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "roost.toml"
    config.write_text("prot = 9000\n")
    message = one_line_error(capsys, ["serve", "--dev", "--config", str(config), "--data", str(tmp_path / "d")])
    assert message.startswith(f"config {config}: unknown setting 'prot' (did you mean 'port'?); valid settings: ")
    valid = message.split("valid settings: ")[1].split(", ")
    assert {"host", "port", "service_key", "key_files", "data_dir"} <= set(valid)
    assert "keyring" not in valid and "session_secret" not in valid


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("port = 1.5", "setting 'port' must be an integer, got 1.5"),
        ("port = true", "setting 'port' must be an integer, got True"),
        ("host = 5", "setting 'host' must be a string, got 5"),
        ("rate = nan", "setting 'rate' must be a finite number, got nan"),
        ("reconnect_grace = -1", "setting 'reconnect_grace' must not be negative"),
        ("max_depth = 0", "setting 'max_depth' must be positive"),
        ("key_files = 'a.jwk'", "setting 'key_files' must be a list of strings, got 'a.jwk'"),
        ("service_key = ''", "setting 'service_key' must not be empty (leave it out to disable the admin API)"),
        ("data_dir = ''", "setting 'data_dir' must not be empty"),
        ("[roost]\nport = 1\n[other]\nx = 1", "unknown setting 'other'"),
    ],
)
def test_bad_values_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str) -> None:
    config = tmp_path / "roost.toml"
    config.write_text(toml + "\n")
    assert message in one_line_error(capsys, ["serve", "--dev", "--config", str(config), "--data", str(tmp_path / "d")])
    assert not (tmp_path / "d").exists()  # refused before anything was written


def test_an_unknown_roost_variable_is_refused_with_close_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROOST_PROT", "9000")
    assert one_line_error(capsys, ["serve", "--dev", "--data", str(tmp_path / "d")]) == (
        "unknown environment variable ROOST_PROT (did you mean ROOST_PORT?); "
        "ROOST_URL, ROOST_TOKEN and ROOST_DEV_KEY are for clients and ignored"
    )


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ROOST_PORT", "eighty", "ROOST_PORT must be an integer, got 'eighty'"),
        ("ROOST_PORT", "70000", "port must be 0..65535"),
        ("ROOST_RATE", "inf", "ROOST_RATE must be a finite number, got 'inf'"),
        ("ROOST_TYPING_TIMEOUT", "-2", "ROOST_TYPING_TIMEOUT must not be negative"),
        ("ROOST_DATA_DIR", "", "ROOST_DATA_DIR must not be empty"),
    ],
)
def test_bad_values_in_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    assert message in one_line_error(capsys, ["serve", "--dev", "--data", str(tmp_path / "d")])


def test_client_variables_are_ignored_and_key_files_take_a_path_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve --dev`` prints ROOST_URL, ROOST_TOKEN and ROOST_DEV_KEY for clients: a shell that
    exported them can still start a server. ROOST_KEY_FILES is os.pathsep-separated, like PATH."""
    _, first = keypair(tmp_path, "a.jwk")
    _, second = keypair(tmp_path, "b.jwk")
    for name in ("ROOST_URL", "ROOST_TOKEN", "ROOST_DEV_KEY"):
        monkeypatch.setenv(name, "from an earlier run")
    monkeypatch.setenv("ROOST_KEY_FILES", os.pathsep.join([str(first), str(second)]))
    monkeypatch.setenv("ROOST_SERVICE_KEY", "s3cret")
    ready = prepared(["--data", str(tmp_path / "d")])
    try:
        assert ready.config.key_files == (str(first), str(second))
        assert len(ready.config.keyring) == 2
        assert ready.config.service_key == "s3cret"
    finally:
        ready.store.close()


# -- the data directory -------------------------------------------------------------------------


def test_an_empty_data_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert one_line_error(capsys, ["serve", "--dev", "--data", ""]) == "--data must not be empty"
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


def test_a_file_where_the_store_directory_belongs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "db").write_text("")
    assert one_line_error(capsys, ["serve", "--dev", "--port", "0", "--data", str(tmp_path)]) == (
        f"cannot open the store in {tmp_path / 'db'}: not a directory"
    )


def test_a_corrupt_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "data.mdb").write_bytes(os.urandom(16384))
    assert one_line_error(capsys, ["serve", "--dev", "--port", "0", "--data", str(tmp_path)]) == (
        f"cannot open the store in {tmp_path / 'db'}: MDB_INVALID: File is not an LMDB file"
    )
    assert not (tmp_path / "session.key").exists() and not (tmp_path / "dev-key.jwk").exists()


def serve_once(data: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data", str(data)],
        capture_output=True, text=True, timeout=60, check=False, **kwargs,
    )


@pytest.mark.parametrize("damage", ["pages", "records"])
async def test_a_store_that_fails_while_restoring(tmp_path: Path, damage: str) -> None:
    """A damaged page (found as the store opens: it reads the log's position in LMDB) or a record
    that does not decode: one line, and no start (dropping the room would lose what was acknowledged)."""
    data = tmp_path / "data"
    async with trio.open_nursery() as nursery:
        store = LmdbStore(data / "db")
        await nursery.start(store.run)
        for i in range(50):
            await store.commit([Write(f"r{i}", "meta", b"\xc1" * 3000 if damage == "records" else b"x" * 3000)])
        nursery.cancel_scope.cancel()
    if damage == "pages":
        damage_every_page_but_the_main_root(data / "db")
    result = await trio.to_thread.run_sync(serve_once, data)
    assert (result.returncode, result.stdout, "Traceback" in result.stderr) == (2, "", False), result.stderr
    line = result.stderr.splitlines()[-1]
    if damage == "pages":
        assert line.startswith(f"roost: error: cannot open the store in {data / 'db'}: MDB_CORRUPTED: ")
    else:
        assert line.startswith("roost: error: cannot restore room r0: its stored records do not decode (")


def _without_root_override() -> Callable[[], None] | None:
    """Root writes into a mode-0555 directory anyway: drop the capabilities that allow it (from the
    bounding set, before exec, so the child runs as root without them)."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


def test_an_unwritable_store_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "db").mkdir(parents=True)
    (data / "db").chmod(0o555)
    try:
        result = serve_once(data, preexec_fn=_without_root_override())
    finally:
        (data / "db").chmod(0o755)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"roost: error: cannot open the store in {data / 'db'}: Permission denied\n"


# -- the session key ----------------------------------------------------------------------------


def test_a_session_key_of_the_wrong_size_is_refused_not_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "session.key"
    key.write_bytes(b"short")
    assert one_line_error(capsys, ["serve", "--dev", "--port", "0", "--data", str(tmp_path)]) == (
        f"session key {key} is 5 bytes, not 32: restore it, or delete it to start with a new one "
        "(which ends every session)"
    )
    assert key.read_bytes() == b"short"
    prepared(["--dev", "--data", str(tmp_path / "other")]).store.close()  # the store lock was released...
    prepared(["--dev", "--data", str(tmp_path / "other")]).store.close()  # ...every time


def test_a_session_key_readable_by_others_is_made_private(tmp_path: Path) -> None:
    key = tmp_path / "session.key"
    first = prepared(["--dev", "--data", str(tmp_path)])
    first.store.close()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.chmod(0o644)
    again = prepared(["--dev", "--data", str(tmp_path)])
    again.store.close()
    assert again.config.session_secret == first.config.session_secret  # kept: sessions survive
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


# -- keys ---------------------------------------------------------------------------------------


def test_serve_refuses_a_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private, public = keypair(tmp_path)
    capsys.readouterr()
    assert one_line_error(capsys, ["serve", "--key", str(private), "--data", str(tmp_path / "d")]) == (
        f"key file {private} holds a private key: a server takes public keys only (give it {public})"
    )


@pytest.mark.parametrize(
    ("jwk", "message"),
    [
        ({"kty": "OKP", "crv": "Ed25519", "kid": 5, "x": "A" * 43}, "JWK needs string 'kid' and 'x'"),
        ({"kty": "OKP", "crv": "Ed25519", "kid": "k", "x": "abc"}, "bad key material"),
        ({"kty": "OKP", "crv": "Ed25519", "kid": "k" * 65, "x": "{x}"}, "JWK 'kid' must be 1 to 64 characters"),
    ],
)
def test_serve_refuses_a_malformed_public_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], jwk: dict[str, object], message: str
) -> None:
    _, public = keypair(tmp_path)
    x = json.loads(public.read_text())["x"]
    bad = tmp_path / "bad.pub.jwk"
    bad.write_text(json.dumps({k: (v.format(x=x) if isinstance(v, str) else v) for k, v in jwk.items()}))
    capsys.readouterr()
    assert message in one_line_error(capsys, ["serve", "--key", str(bad), "--data", str(tmp_path / "d")])


def test_keygen_refuses_a_public_name_for_the_private_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.pub.jwk"
    assert one_line_error(capsys, ["keygen", "--out", str(out)]) == (
        f"--out names the private key file, and {out} looks public (*.pub.jwk): use e.g. {tmp_path / 'x.jwk'}"
    )
    assert list(tmp_path.iterdir()) == []


def test_keygen_writes_nothing_when_the_public_file_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "k.pub.jwk").write_text("mine")
    assert "already exists" in one_line_error(capsys, ["keygen", "--out", str(tmp_path / "k.jwk")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub.jwk"]


def test_keygen_refuses_a_kid_tokens_cannot_carry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert one_line_error(capsys, ["keygen", "--out", str(tmp_path / "k.jwk"), "--kid", "k" * 65]) == (
        "--kid must be 1 to 64 characters (a token's header carries it)"
    )
    assert list(tmp_path.iterdir()) == []
    assert main(["keygen", "--out", str(tmp_path / "k.jwk"), "--kid", "k" * 64]) == 0  # the longest that works
    capsys.readouterr()
    assert main(["token", "--key", str(tmp_path / "k.jwk"), "--sub", "u"]) == 0
    kid, key = read_private_key(tmp_path / "k.jwk")
    assert verify(capsys.readouterr().out.strip(), Keyring({kid: key.verify_key}), time.time()).sub == "u"
    assert public_jwk(key.verify_key, kid)["kid"] == "k" * 64


@pytest.mark.parametrize(("flag", "claim"), [("--room", "room"), ("--role", "role")])
def test_token_refuses_claims_a_server_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, claim: str
) -> None:
    private, _ = keypair(tmp_path)
    capsys.readouterr()
    assert one_line_error(capsys, ["token", "--key", str(private), "--sub", "u", flag, "r" * 65]) == (
        f"a server would refuse this token: claim {claim!r} is too long"
    )
    assert main(["token", "--key", str(private), "--sub", "u", flag, "r" * 64]) == 0


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", ["10", "90", " 5"])
def test_a_ttl_needs_a_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str], ttl: str) -> None:
    private, _ = keypair(tmp_path)
    capsys.readouterr()
    assert one_line_error(capsys, ["token", "--key", str(private), "--sub", "u", "--ttl", ttl]) == (
        f"invalid duration {ttl!r}: use a number with s, m, h or d (e.g. 90s, 1h)"
    )


def test_roost_alone_prints_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: roost ") and "keygen" in err and "serve" in err and "token" in err


@pytest.mark.parametrize("argv", [["serve", "--port", "http"], ["serve", "--port", "70000"], ["serve", "--log-level", "loud"]])
def test_bad_serve_flags(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    one_line_error(capsys, argv)


def test_the_console_script_with_no_arguments() -> None:
    result = subprocess.run([sys.executable, "-m", "roost.cli"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.startswith("usage: roost ")


# -- a reader that leaves -----------------------------------------------------------------------


def test_a_closed_stdout_is_no_traceback(tmp_path: Path) -> None:
    private, _ = keypair(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "roost.cli", "token", "--key", str(private), "--sub", "u"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the token is printed (``| head -c0``)
    assert process.wait(timeout=60) == 1
    assert process.stderr.read() == ""
    process.stderr.close()


async def test_serve_keeps_serving_when_its_stdout_is_closed(tmp_path: Path) -> None:
    """``roost serve --dev | head -1``: the URL is in the log too, and the server goes on serving."""
    data = tmp_path / "data"
    process = subprocess.Popen(
        [sys.executable, "-m", "roost.cli", "serve", "--dev", "--port", "0", "--data", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader left before the first line
    try:
        with trio.fail_after(30):
            log: list[str] = []
            while not any("stdout is closed" in line for line in log):
                line = await trio.to_thread.run_sync(process.stderr.readline)
                assert line, "".join(log)
                log.append(line)
            url = next(line for line in log if "roost serving on " in line).split("roost serving on ")[1].strip()
            kid, key = read_private_key(data / "dev-key.jwk")
            token = sign(new_claims(sub="ann", name="", kid=kid, now=time.time(), ttl=60), key)
            async with open_client(url, token, reconnect=False) as ann:
                assert ann.user == "ann"
            process.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(process.wait) == 0
        assert "Traceback" not in "".join(log) + process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


@pytest.mark.parametrize(("name", "value"), [("outbox_max_bytes", 65_535), ("outbox_max_frames", 63)])
def test_outbox_bounds_too_small_for_ordinary_replies_are_refused(name: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be at least"):
        Config(**{name: value})
