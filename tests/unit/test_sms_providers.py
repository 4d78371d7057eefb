"""How provider errors are read: an error before any connection was made is a plain failure
(nothing reached the provider, so another provider may be tried); one after it is unknown."""

from __future__ import annotations

from streams.sms_providers import _aliyun_error, _never_connected


class SdkError(Exception):
    def __init__(self, message: str, code: str = "", status_code: int | None = None,
                 inner: str = "") -> None:
        super().__init__(message)
        self.code, self.status_code, self.inner_exception = code, status_code, inner


def test_a_refused_connection_reached_no_provider() -> None:
    assert _never_connected("Cannot connect to host 127.0.0.1:1 ssl:False [Connect call failed]")
    assert _never_connected("Failed to establish a new connection: [Errno 111] Connection refused")
    assert not _never_connected("Read timed out. (read timeout=5)")


def test_aliyun_errors_are_transient_permanent_or_unknown() -> None:
    refused = SdkError("x", "UnretryableException", inner="Cannot connect to host h:1")
    assert _aliyun_error(refused).outcome == "transient"
    timeout = SdkError("x", "UnretryableException", inner="ServerTimeoutError: read timeout")
    assert _aliyun_error(timeout).outcome == "unknown"
    assert _aliyun_error(SdkError("x", "isv.MOBILE_NUMBER_ILLEGAL", 400)).outcome == "permanent"
    assert _aliyun_error(SdkError("x", "ServiceUnavailable", 503)).outcome == "transient"
