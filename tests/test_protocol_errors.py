"""Error and close codes: stable values, a reconnect rule clients can apply blindly, and the exception family."""

from __future__ import annotations

import pytest

from roost.protocol.errors import CloseCode, ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError, may_reconnect


def test_application_close_codes_stay_in_the_private_range() -> None:
    for code in CloseCode:
        assert 1000 <= code <= 1015 or 4000 <= code <= 4999, code


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.SLOW_CONSUMER,
        CloseCode.RATE_LIMITED,
        CloseCode.TOKEN_EXPIRED,
        CloseCode.HEARTBEAT_TIMEOUT,
        CloseCode.AUTH_TIMEOUT,
        1006,
        4499,
    ],
)
def test_codes_that_allow_reconnecting(code: int) -> None:
    assert may_reconnect(code)


@pytest.mark.parametrize(
    "code",
    [
        CloseCode.NORMAL,
        CloseCode.PROTOCOL_ERROR,
        CloseCode.UNSUPPORTED_DATA,
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.POLICY_VIOLATION,
        CloseCode.BAD_TOKEN,
        CloseCode.TOKEN_REVOKED,
        CloseCode.BAD_FRAME,
        CloseCode.SUPERSEDED,
        CloseCode.KICKED,
        4500,
        4999,
        3000,
    ],
)
def test_terminal_codes(code: int) -> None:
    assert not may_reconnect(code)


def test_every_app_close_code_is_on_the_documented_side() -> None:
    for code in CloseCode:
        if code >= 4000:
            assert may_reconnect(code) == (code < 4500)


def test_error_codes_are_lowercase_words() -> None:
    for code in ErrorCode:
        assert code.value.replace("_", "").isalpha()
        assert code.value == code.value.lower()


def test_protocol_error_carries_code_message_id_and_close_code() -> None:
    error = RemoteProtocolError(
        ErrorCode.TOO_LARGE, "too big", request_id=4, close_code=CloseCode.MESSAGE_TOO_BIG
    )
    assert isinstance(error, ProtocolError)
    assert str(error) == "too_large: too big"
    assert (error.code, error.message, error.request_id, error.close_code) == (
        ErrorCode.TOO_LARGE,
        "too big",
        4,
        CloseCode.MESSAGE_TOO_BIG,
    )
    assert LocalProtocolError(ErrorCode.BAD_FIELD, "x").request_id is None


def test_the_base_error_cannot_be_raised_directly() -> None:
    with pytest.raises(TypeError):
        ProtocolError(ErrorCode.INTERNAL, "which side?")
