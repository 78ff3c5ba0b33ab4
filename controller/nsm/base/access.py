"""Who may touch what another identity made: a connection (Close, refresh, reselect), what
MonitorConnections shows, and a registry name (Register again, Unregister).

Every check is one predicate `(caller, owner, the connection or registration) -> bool` behind
the `Access` interface, the place where NSM runs its OPA policies. `Access.of(settings)` picks
the set (`nsm_ownership_policy`) and who the operators are (`nsm_operator_ids`: they may do and
see everything). Identities are what `caller.caller_identity` says; "" (a plaintext caller
without a token) is an identity like any other, so anonymous callers share what they make."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

import grpc
from google.protobuf.message import Message

from controller.identity import peer_spiffe_id
from controller.nsm.base.caller import caller_identity
from controller.nsm.base.errors import NsmError
from controller.settings import Settings
from nsm_api import connection_pb2

Rule = Callable[[str, str, Message], bool]  # (caller, owner, what it is about) -> allowed


def owner_only(caller: str, owner: str, what: Message) -> bool:
    """NSM's `registry_client_allowed` (a name only its registrant may change or remove) and
    `monitor/service_connection` (a caller monitors only connections it made), applied to
    connections as well."""
    return caller == owner


def anyone(caller: str, owner: str, what: Message) -> bool:
    """The SDK's `Any()`: what its stock chains authorize with."""
    return True


def or_operator(rule: Rule, operators: Collection[str]) -> Rule:
    ops = frozenset(operators)

    def allowed(caller: str, owner: str, what: Message) -> bool:
        return caller in ops or rule(caller, owner, what)

    return allowed


RULES: dict[str, Rule] = {"owner": owner_only, "any": anyone}


@dataclasses.dataclass(frozen=True, slots=True)
class Access:
    connection: Rule = owner_only  # Close, refresh, reselect of an established connection
    monitor: Rule = owner_only  # MonitorConnections shows the connection (its tokens included)
    registration: Rule = owner_only  # Register over, or Unregister, a name someone registered

    @classmethod
    def of(cls, settings: Settings) -> Access:
        rule = or_operator(RULES[settings.nsm_ownership_policy], operator_ids(settings))
        return cls(connection=rule, monitor=rule, registration=rule)


OPEN = Access(anyone, anyone, anyone)  # servers whose callers are all trusted (the SDK endpoint's)


def operator_ids(settings: Settings) -> frozenset[str]:
    return frozenset(i.strip() for i in settings.nsm_operator_ids.split(",") if i.strip())


def denied(field: str, caller: str, owner: str) -> NsmError:
    """The refusal: the names are the callers' own strings, quoted so none can forge a line."""
    return NsmError(grpc.StatusCode.PERMISSION_DENIED, field, f"belongs to {owner!r}, not to {caller!r}")


def servicer_caller(context: grpc.aio.ServicerContext, first_token: str) -> str:
    """Who calls a servicer whose messages carry no connection path (MonitorConnections, the
    registries): the mTLS peer, else the `sub` of the first token of the path it sent."""
    path = connection_pb2.Path(path_segments=[connection_pb2.PathSegment(token=first_token)])
    return caller_identity(path, peer_spiffe_id(context))
