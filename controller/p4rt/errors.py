"""How a P4Runtime Write fails, decoded once so that callers never parse gRPC trailers."""

from __future__ import annotations

import dataclasses

import grpc
from finsy.proto import p4r, rpc_code, rpc_status

_DETAILS_KEY = "grpc-status-details-bin"
# What BMv2 (PI's device manager) answers for any add its target refuses, a full table included:
# canonical code UNKNOWN and this message, with nothing in it that says "full". For an INSERT into
# a table of the fabric program (exact keys, checked by PI before the target sees them) a full
# table is the refusal there is.
BMV2_ADD_REFUSED = "Error when adding match entry to target"


@dataclasses.dataclass(frozen=True, slots=True)
class UpdateError:
    index: int  # position in the caller's update list
    code: int  # google.rpc.Code
    message: str

    @property
    def code_name(self) -> str:
        return rpc_code.Code.Name(self.code) if self.code in rpc_code.Code.values() else str(self.code)

    @property
    def table_full(self) -> bool:
        """The update was refused for want of room: RESOURCE_EXHAUSTED as the spec says (the
        softswitch), or BMv2's UNKNOWN "Error when adding match entry to target"."""
        if self.code == rpc_code.RESOURCE_EXHAUSTED:
            return True
        return self.code == rpc_code.UNKNOWN and self.message.strip() == BMV2_ADD_REFUSED


class SwitchError(Exception):
    """A P4Runtime call to one switch failed."""

    def __init__(self, switch: str, code: grpc.StatusCode, message: str, errors: list[UpdateError] | None = None):
        self.switch = switch
        self.code = code
        self.errors = errors or []
        first = next((e for e in self.errors if e.code != rpc_code.OK), None)
        detail = f"; update {first.index}: {first.code_name}: {first.message}" if first else ""
        super().__init__(f"switch {switch}: {code.name}: {message}{detail}")

    @property
    def failed(self) -> list[UpdateError]:
        return [e for e in self.errors if e.code != rpc_code.OK]

    @property
    def table_full(self) -> bool:
        """Some update of the call was refused because its table (or action profile) is full."""
        return any(e.table_full for e in self.failed)


def per_update_errors(err: grpc.aio.AioRpcError, count: int) -> list[UpdateError]:
    """The p4.v1.Error list of a failed Write, one per update; empty when the switch sent none.

    When grpc dropped the details (e.g. trailing metadata over the client's limit), the caller
    sees an empty list and must treat every update of the batch as unknown.
    """
    for key, value in err.trailing_metadata() or ():
        if key != _DETAILS_KEY:
            continue
        status = rpc_status.Status.FromString(value)
        out: list[UpdateError] = []
        for i, detail in enumerate(status.details):
            e = p4r.Error()
            if detail.Unpack(e):
                out.append(UpdateError(i, e.canonical_code, e.message))
        if len(out) == count:
            return out
    return []
