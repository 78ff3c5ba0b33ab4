"""What Register and Unregister of both registries do with the call itself: the caller's
credentials, and the registry path echoed back in the `path` response header."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from controller.nsm.metadata import PATH_KEY, Credentials, credentials, last_value
from controller.nsm.tokens import TokenSource
from controller.registry import path


async def registry_call(context: grpc.aio.ServicerContext, own: TokenSource, path_ids: Sequence[str]) -> tuple[Credentials, list[str]]:
    """The caller's credentials and the registration's new path_ids; sends the path header."""
    metadata = context.invocation_metadata()
    creds = credentials(metadata)
    own_token, _ = own.issue()
    echoed, ids = path.update(path.parse(last_value(metadata, PATH_KEY)), creds.token, own_token, path_ids)
    await context.send_initial_metadata(((PATH_KEY, echoed.to_json()),))
    return creds, ids
