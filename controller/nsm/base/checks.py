"""The size and character checks every NSM message field goes through, the NetworkService
chain's (validate) and the registry's alike: INVALID_ARGUMENT naming the field at fault."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from controller.nsm.base.errors import invalid
from controller.settings import Settings


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    name: int = 253  # names, ids, label keys
    value: int = 4096  # label and parameter values, tokens
    map_entries: int = 64  # labels, parameters, metrics, extra context
    list_entries: int = 64  # path segments, mechanism preferences, addresses, routes

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.nsm_max_name_length, settings.nsm_max_value_length,
                   settings.nsm_max_map_entries, settings.nsm_max_list_entries)


def check_text(field: str, value: str, limit: int, *, required: bool = False, spaces: bool = True) -> None:
    if required and not value:
        raise invalid(field, "is required")
    if len(value) > limit:
        raise invalid(field, f"has {len(value)} characters; at most {limit} are accepted")
    # str.isprintable is False for every whitespace but the plain space.
    if not value.isprintable() or (not spaces and " " in value):
        raise invalid(field, f"{value!r} contains {'whitespace or ' if not spaces else ''}control characters")


def check_map(field: str, values: Mapping[str, str], limits: Limits) -> None:
    if len(values) > limits.map_entries:
        raise invalid(field, f"has {len(values)} entries; at most {limits.map_entries} are accepted")
    for key, value in values.items():
        check_text(f"{field} key", key, limits.name, required=True, spaces=False)
        check_text(f"{field}[{key!r}]", value, limits.value)


def check_list(field: str, values: Iterable[object], limits: Limits) -> None:
    n = sum(1 for _ in values)
    if n > limits.list_entries:
        raise invalid(field, f"has {n} entries; at most {limits.list_entries} are accepted")
