"""The tools under the NSM API: time and tokens, per-RPC credentials, status errors, the field
checks, the KERNEL mechanism, task and channel keeping, event buffers. Nothing here knows the
chain or the registry, so both can stand on it."""
