"""The ``roost`` command: a thin shell over the library. Signal handling lives here and only here.

Every user error (bad arguments, unreadable key) prints one line to stderr and exits with status 2;
no traceback reaches the user for a mistake they can fix.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from roost.protocol.tokens import MAX_KID_CHARS, Keyring, TokenError, new_claims, public_jwk, sign, verify

from .keys import KeyFileError, public_path_for, read_private_key, write_key_pair

__all__ = ["main", "parse_duration"]

EXIT_USAGE = 2

_DURATION = re.compile(r"([0-9]+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A mistake in how the command was called; printed as one line, exit status 2."""


def parse_duration(text: str) -> int:
    """Seconds in ``"45s"``, ``"30m"``, ``"1h"`` or ``"7d"`` (positive, at most 366 days).

    The unit is required: a bare ``10`` could mean seconds or hours, and a token that lives 10 s when
    10 h was meant fails far from where the mistake was made."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise UsageError(f"invalid duration {text!r}: use a number with s, m, h or d (e.g. 90s, 1h)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not 0 < seconds <= 366 * 86400:
        raise UsageError(f"duration {text!r} must be between 1s and 366d")
    return seconds


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.out)
    if path.name.endswith(".pub.jwk"):  # the private key would be handed out as the public one
        suggestion = path.with_name(path.name[: -len(".pub.jwk")] + ".jwk")
        raise UsageError(f"--out names the private key file, and {path} looks public (*.pub.jwk): use e.g. {suggestion}")
    if args.kid is not None and not 0 < len(args.kid) <= MAX_KID_CHARS:  # else no token it signs is accepted
        raise UsageError(f"--kid must be 1 to {MAX_KID_CHARS} characters (a token's header carries it)")
    try:
        kid, verify_key = write_key_pair(path, kid=args.kid, overwrite=args.force)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    public = public_path_for(path)
    print(f"kid={kid}")
    print(f"public_key={public_jwk(verify_key, kid)['x']}")
    print(f"private_key_file={path}")
    print(f"public_key_file={public}")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl)
    try:
        kid, key = read_private_key(Path(args.key))
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    if not args.sub or len(args.sub) > 128:
        raise UsageError("--sub must be 1 to 128 characters")
    if len(args.name) > 64:
        raise UsageError("--name must be at most 64 characters")
    now = time.time()
    claims = new_claims(sub=args.sub, name=args.name, kid=kid, now=now, ttl=ttl, room=args.room, role=args.role)
    token = sign(claims, key)
    try:  # the server's own parser: never print a token every server would refuse (a --room too long...)
        verify(token, Keyring({kid: key.verify_key}), now)
    except TokenError as exc:
        raise UsageError(f"a server would refuse this token: {exc.message}") from None
    print(token)
    return 0


def _admin_args(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON args of the admin operation ``args.op`` (PROTOCOL.md §10), from its flags."""
    op = args.op
    if op == "rooms":
        return {name: value for name, value in (("cursor", args.cursor), ("limit", args.limit)) if value is not None}
    if op == "revoke":
        exp = int(args.exp) if args.exp.isdigit() else int(time.time()) + parse_duration(args.exp)
        who = {"jti": args.jti} if args.jti is not None else {"user": args.user}
        return {**who, "exp": exp}
    if op == "stats":
        return {}
    out: dict[str, Any] = {"room": args.room}
    if op == "close" and args.reason is not None:
        out["reason"] = args.reason
    elif op == "kick":
        out["user"] = args.user
    elif op == "publish":
        out["kind"] = args.kind
        if args.body is not None:
            try:
                out["body"] = json.loads(args.body)
            except ValueError as exc:
                raise UsageError(f"--body must be JSON: {exc}") from None
    return out


def _cmd_admin(args: argparse.Namespace) -> int:
    from .admin_cli import AdminClient, run

    if args.op is None:
        raise UsageError("roost admin needs an operation: " + ", ".join(ADMIN_OPS) + " (see roost admin --help)")
    url = args.url if args.url is not None else os.environ.get("ROOST_URL")
    key = args.key if args.key is not None else os.environ.get("ROOST_SERVICE_KEY")
    if not url:
        raise UsageError("no server URL: pass --url or set ROOST_URL (roost serve prints it)")
    if not key:
        raise UsageError("no service key: set ROOST_SERVICE_KEY (roost serve --dev prints one) or pass --key")
    if not 0 < args.timeout <= 300:
        raise UsageError("--timeout must be between 0 and 300 seconds")
    try:
        client = AdminClient(url, key, timeout=args.timeout)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return run(client, args.op, _admin_args(args), as_json=args.json, all_pages=args.op == "rooms" and args.all)


def _add_admin(sub: Any) -> None:
    from .admin_cli import EXIT_CODES

    admin = sub.add_parser(
        "admin", help="operate a running server over its HTTP service API", epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one service API operation (PROTOCOL.md §10) against a running server and print the "
                    "result as a table (--json: the raw result, for scripts). The URL and the service key come "
                    "from --url/--key or ROOST_URL/ROOST_SERVICE_KEY (prefer the variable: a flag is visible "
                    "to other users in the process list).",
    )

    def common(parser: argparse.ArgumentParser, default: Any) -> None:
        # On ``admin`` and on each operation, so ``roost admin stats --json`` works as well as
        # ``roost admin --json stats``; the operation's copies default to SUPPRESS so they never
        # overwrite a value given before the operation.
        parser.add_argument("--url", default=default(None), help="the server: ws://... as serve prints it, or http://... (default $ROOST_URL)")
        parser.add_argument("--key", default=default(None), help="the service key (default $ROOST_SERVICE_KEY)")
        parser.add_argument("--json", action="store_true", default=default(False), help="print the raw result as JSON")
        parser.add_argument("--timeout", type=float, default=default(10.0), help="seconds to wait for the server (default 10)")

    common(admin, lambda value: value)
    ops = admin.add_subparsers(dest="op", parser_class=_Parser, metavar="OPERATION")
    parsers = {
        "rooms": ops.add_parser("rooms", help="list every room, private ones included"),
        "room": ops.add_parser("room", help="one room's state and members"),
        "close": ops.add_parser("close", help="close a room (members get room_closed)"),
        "kick": ops.add_parser("kick", help="remove a user from a room"),
        "revoke": ops.add_parser("revoke", help="revoke one token (--jti) or every token of a user (--user)"),
        "publish": ops.add_parser("publish", help="send a message event to a room's members"),
        "stats": ops.add_parser("stats", help="the server's counters"),
    }
    for parser in parsers.values():
        common(parser, lambda value: argparse.SUPPRESS)
    parsers["rooms"].add_argument("--cursor", default=None, help="start after this cursor (from a previous page)")
    parsers["rooms"].add_argument("--limit", type=int, default=None, help="rooms per page, 1 to 100 (server default 50)")
    parsers["rooms"].add_argument("--all", action="store_true", help="follow the cursor to the last page")
    for op in ("room", "close", "kick", "publish"):
        parsers[op].add_argument("room", metavar="ROOM", help="room id")
    parsers["close"].add_argument("--reason", default=None, help="message members get with room_closed")
    parsers["kick"].add_argument("user", metavar="USER", help="user id")
    who = parsers["revoke"].add_mutually_exclusive_group(required=True)
    who.add_argument("--jti", default=None, help="the token's jti")
    who.add_argument("--user", default=None, help="every token this user holds now")
    parsers["revoke"].add_argument("--exp", required=True, metavar="UNIX_OR_DURATION",
                                   help="keep the entry until this Unix time, or for a duration (7d)")
    parsers["publish"].add_argument("kind", metavar="KIND", help="the message kind (1 to 64 characters)")
    parsers["publish"].add_argument("--body", default=None, help="the message body, as JSON")
    admin.set_defaults(run=_cmd_admin)


ADMIN_OPS = ("rooms", "room", "close", "kick", "revoke", "publish", "stats")


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeError, prepare, run

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.worker_takeover and args.worker_of is None:
        raise UsageError("--worker-takeover is for the workers of roost serve --workers only")
    try:
        prepared = prepare(args)
    except ServeError as exc:
        raise UsageError(str(exc)) from None
    if args.workers > 1:
        from .workers import run_workers

        if prepared.config.cluster is None:
            prepared.store.close()
            raise UsageError("--workers needs a cluster directory: --cluster redis://HOST:PORT/DB (or "
                             "ROOST_CLUSTER), where the workers place their rooms")
        return run_workers(prepared, args)
    return run(prepared, log_level=args.log_level, log_format=args.log_format)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(prog="roost", description="Roost realtime room engine")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    keygen = sub.add_parser("keygen", help="write a new Ed25519 signing key pair (JWK files)")
    keygen.add_argument("--out", default="roost-key.jwk", help="private key file (public key: <name>.pub.jwk)")
    keygen.add_argument("--kid", default=None, help="key id (default: derived from the public key)")
    keygen.add_argument("--force", action="store_true", help="replace existing files")
    keygen.set_defaults(run=_cmd_keygen)

    token = sub.add_parser("token", help="mint a user token signed with a private key file")
    token.add_argument("--key", required=True, help="private key file written by 'roost keygen'")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--name", default="", help="display name")
    token.add_argument("--ttl", default="1h", help="lifetime with a unit: 90s, 30m, 1h, 7d (default 1h)")
    token.add_argument("--room", default=None, help="restrict the token to one room (id or code)")
    token.add_argument("--role", default=None, help="role claim for room logic")
    token.set_defaults(run=_cmd_token)

    serve = sub.add_parser("serve", help="run the engine")
    serve.add_argument("--dev", action="store_true", help="create a development key and print a ready token; serve the demo page at / and /dev/token (development only)")
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="port to bind (default 8765; 0 picks one)")
    serve.add_argument("--config", default=None, help="TOML config file (ROOST_* environment variables override it)")
    serve.add_argument("--key", action="append", default=[], help="public key file (JWK) to accept tokens from; repeat")
    serve.add_argument("--data", default=None, help="data directory (default ./.roost)")
    serve.add_argument("--cluster", default=None, metavar="REDIS_URL",
                       help="join the cluster whose directory is this Redis (redis://HOST:PORT/DB or unix:///PATH); "
                            "each node needs its own --data")
    serve.add_argument("--advertise-url", default=None, metavar="URL",
                       help="in a cluster, the ws:// address other nodes send this node's clients to "
                            "(default ws://HOST:PORT/ as bound)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="N engine processes behind the one port, supervised by this one (default 1); "
                            "needs --cluster")
    # Internal: how ``--workers`` starts each worker (roost.workers), not for people.
    serve.add_argument("--worker-of", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-fds", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-takeover", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text: one readable line per event, fields as key=value; json: one JSON object "
                            "per line (ts, level, logger, msg and the fields), for log shippers")
    serve.set_defaults(run=_cmd_serve)

    _add_admin(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roost`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:  # ``roost`` alone: say what it can do
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except UsageError as exc:
        print(f"roost: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before ``serve`` installed its handlers (e.g. while restoring)
        return 130
    except BrokenPipeError:  # ``roost token | head -c0``: the reader left; nothing to tell it
        _silence_stdout()
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail again (the trap:
    the buffered output would raise a second BrokenPipeError at exit, printed as "Exception ignored")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
