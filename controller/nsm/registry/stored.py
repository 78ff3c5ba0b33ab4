"""A registration as the store's records keep it (kinds `ns` and `nse`): the message, the
wall-clock deadline its expiry timer was armed for, and who registered it (ownership).

The registries write one on every Register, re-arm and Unregister, and the server loads them back
before it serves a call, so that a restarted controller knows its services and endpoints: a
client's heal Request right after the restart finds what it asked for, and an endpoint's next
Register is its owner's refresh, not a new name. Wall-clock, since the deadline must mean the
same after the process that armed it is gone."""

from __future__ import annotations

import base64
from typing import Protocol

from pydantic import BaseModel, ConfigDict


class Records(Protocol):
    """The part of controller.fabric.store.Store the registries use."""

    def put_record(self, kind: str, key: str, value: str) -> None: ...

    def delete_record(self, kind: str, key: str) -> None: ...

    def records(self, kind: str) -> dict[str, str]: ...

    async def durable(self) -> None: ...


class StoredRegistration(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    message: str  # the registration message, serialized and base64-encoded
    expires: float  # epoch seconds: when its expiry timer fires unless it is registered again
    owner: str  # the identity that registered it first (memory.MemoryRegistry.owners)

    @classmethod
    def of(cls, message: bytes, expires: float, owner: str) -> StoredRegistration:
        return cls(message=base64.b64encode(message).decode(), expires=expires, owner=owner)

    def message_bytes(self) -> bytes:
        return base64.b64decode(self.message, validate=True)
