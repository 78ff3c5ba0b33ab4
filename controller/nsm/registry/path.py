"""The registry's path (docs/nsm_contract.md §9.2): no PathSegment messages, a JSON object in the `path`
metadata whose segments carry tokens only. Register and Unregister update it, derive the
registration's path_ids from the tokens' subjects, and echo it back in a response header."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from controller.nsm.base.errors import invalid
from controller.nsm.base.tokens import subject

FIELD = "metadata path"


@dataclasses.dataclass(slots=True)
class RegistryPath:
    index: int
    tokens: list[str]

    def to_json(self) -> str:
        segments = [{"token": t} for t in self.tokens] or None
        return json.dumps({"Index": self.index, "PathSegments": segments}, separators=(",", ":"))


def parse(text: str | None) -> RegistryPath:
    """Go decodes JSON keys case-insensitively, so this does too."""
    if not text:
        return RegistryPath(0, [])
    try:
        raw = json.loads(text)
        fields = {k.lower(): v for k, v in raw.items()}
        index = int(fields.get("index") or 0)
        segments = fields.get("pathsegments") or []
        tokens = [str({k.lower(): v for k, v in s.items()}.get("token") or "") for s in segments]
    except (ValueError, TypeError, AttributeError) as e:
        raise invalid(FIELD, f"is not a registry path ({{\"Index\":n,\"PathSegments\":[{{\"token\":...}}]}}): {e}") from None
    if index < 0:
        raise invalid(FIELD, f"Index {index} is negative")
    return RegistryPath(index, tokens)


def update(path: RegistryPath, peer_token: str, own_token: str, path_ids: Sequence[str]) -> tuple[RegistryPath, list[str]]:
    """The path to echo (at the caller's index) and the registration's new path_ids."""
    ids = list(path_ids)
    if not path.tokens:
        tokens, index, caller = [peer_token, own_token], 1, 0
    else:
        if path.index + 1 > len(path.tokens):
            raise invalid(FIELD, f"Index+1=={path.index + 1} should be less or equal len(PathSegments)=={len(path.tokens)}")
        tokens, caller = list(path.tokens), path.index
        tokens[caller] = peer_token
        index = caller + 1
        if index < len(tokens):
            tokens[index] = own_token
        else:
            tokens.append(own_token)
    for at, token in ((index - 1, peer_token), (index, own_token)):
        while len(ids) <= at:
            ids.append("")
        ids[at] = subject(token)
    return RegistryPath(caller, tokens), ids
