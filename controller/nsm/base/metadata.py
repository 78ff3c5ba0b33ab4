"""The per-RPC credentials NSM callers send as gRPC metadata (docs/nsm_contract.md §4.4, §6.1)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from controller.logs import Throttle
from controller.nsm.base import clock
from controller.nsm.base.errors import invalid

log = logging.getLogger("p4nsm.nsm")
_IGNORED = Throttle()  # a client decides how often its token is ignored; the log must not follow

TOKEN_KEY = "nsm-client-token"
EXPIRES_KEY = "nsm-client-token-expires"
PATH_KEY = "path"


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    token: str = ""
    expires: float | None = None  # epoch seconds

    @property
    def present(self) -> bool:
        return bool(self.token) and self.expires is not None

    def as_metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.present:
            return ()
        assert self.expires is not None
        return ((TOKEN_KEY, self.token), (EXPIRES_KEY, clock.format_rfc3339(self.expires)))


def credentials(metadata: Iterable[tuple[str, str | bytes]] | None) -> Credentials:
    """The caller's token and expiry. Each key must appear once: Go servers then treat the token
    as absent and only warn, and so does this. A malformed expiry is refused, since the timeout
    element would otherwise arm a timer from garbage."""
    tokens: list[str] = []
    expires: list[str] = []
    for key, value in metadata or ():
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if key == TOKEN_KEY:
            tokens.append(text)
        elif key == EXPIRES_KEY:
            expires.append(text)
    if len(tokens) != 1 or len(expires) != 1:
        if (tokens or expires) and (left_out := _IGNORED.admit()) is not None:
            log.warning("event=token_ignored reason=%s left_out=%d", "each of nsm-client-token and -expires must appear once",
                        left_out)
        return Credentials()
    try:
        return Credentials(tokens[0], clock.parse_rfc3339(expires[0]))
    except ValueError as e:
        raise invalid(f"metadata {EXPIRES_KEY}", str(e)) from None


def last_value(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    found = None
    for k, value in metadata or ():
        if k == key:
            found = value.decode(errors="replace") if isinstance(value, bytes) else value
    return found
