"""``roost keygen`` and ``roost token``: real files, real signatures, one-line errors with exit code 2."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roost.cli import main, parse_duration
from roost.keys import KeyFileError, read_private_key, read_public_key
from roost.protocol.tokens import Keyring, verify


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_writes_a_private_key_readable_only_by_its_owner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = tmp_path / "k.jwk"
    code, out, err = run(capsys, "keygen", "--out", str(private))
    assert code == 0, err
    fields = dict(line.split("=", 1) for line in out.splitlines())
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    public = tmp_path / "k.pub.jwk"
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o644
    kid, verify_key = read_public_key(public)
    assert fields["kid"] == kid
    assert read_private_key(private)[1].verify_key == verify_key
    assert fields["public_key_file"] == str(public)
    assert len(fields["public_key"]) == 43


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = tmp_path / "k.jwk"
    assert run(capsys, "keygen", "--out", str(private), "--kid", "first")[0] == 0
    code, _out, err = run(capsys, "keygen", "--out", str(private))
    assert code == 2
    assert err.count("\n") == 1 and "already exists" in err
    assert read_private_key(private)[0] == "first"
    assert run(capsys, "keygen", "--out", str(private), "--force", "--kid", "second")[0] == 0
    assert read_private_key(private)[0] == "second"


def test_token_is_verifiable_with_the_public_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    private = tmp_path / "k.jwk"
    run(capsys, "keygen", "--out", str(private))
    code, out, err = run(
        capsys, "token", "--key", str(private), "--sub", "u1", "--name", "Ann", "--ttl", "2h", "--room", "r1", "--role", "host"
    )
    assert code == 0, err
    kid, verify_key = read_public_key(tmp_path / "k.pub.jwk")
    claims = verify(out.strip(), Keyring({kid: verify_key}), time.time())
    assert (claims.sub, claims.name, claims.room, claims.role) == ("u1", "Ann", "r1", "host")
    assert claims.exp - claims.iat == 7200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["token", "--key", "/nonexistent/k.jwk", "--sub", "u"], "cannot read key file"),
        (["token", "--key", "{pub}", "--sub", "u"], "holds no private key"),
        (["token", "--key", "{garbage}", "--sub", "u"], "is not JSON"),
        (["token", "--key", "{binary}", "--sub", "u"], "is not UTF-8"),
        (["token", "--key", "{list}", "--sub", "u"], "not a JSON object"),
        (["token", "--key", "{rsa}", "--sub", "u"], "not an Ed25519 JWK"),
        (["token", "--key", "{priv}", "--sub", "u", "--ttl", "soon"], "invalid duration"),
        (["token", "--key", "{priv}", "--sub", "u", "--ttl", "0s"], "between 1s and 366d"),
        (["token", "--key", "{priv}", "--sub", "", "--ttl", "1h"], "--sub"),
        (["token", "--key", "{priv}", "--sub", "u", "--name", "n" * 65], "--name"),
        (["token", "--sub", "u"], "required: --key"),
        (["frobnicate"], "invalid choice"),
        (["keygen", "--out", "/nonexistent/dir/k.jwk"], "cannot write"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    private = tmp_path / "k.jwk"
    assert main(["keygen", "--out", str(private)]) == 0
    (tmp_path / "garbage").write_text("{not json")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "list").write_text("[1]")
    (tmp_path / "rsa").write_text('{"kty": "RSA"}')
    names = {"pub": tmp_path / "k.pub.jwk", "priv": private}
    names.update({n: tmp_path / n for n in ("garbage", "binary", "list", "rsa")})
    capsys.readouterr()
    code, out, err = run(capsys, *[a.format(**names) for a in args])
    assert code == 2
    assert out == ""
    assert err.startswith("roost: error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("45s", 45), ("30m", 1800), ("1h", 3600), ("7d", 604800)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_console_script_runs_as_a_process(tmp_path: Path) -> None:
    """The installed entry point, as a user runs it: no traceback on a bad key path."""
    result = subprocess.run(
        [sys.executable, "-m", "roost.cli", "token", "--key", str(tmp_path / "none"), "--sub", "u"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("roost: error: cannot read key file")


def test_key_file_error_is_an_exception_with_one_line() -> None:
    assert str(KeyFileError("x")) == "x"
