"""Settings for the controllers tests build: the operator servers (metrics, web view) on ports
the system picks, so that tests running side by side, or a controller a user runs on the
defaults, never collide with them.

`plaintext` is on: a test not about TLS serves and dials without it unless it gives
certificates (which then win: with an SVID, TLS is required whatever `plaintext` says). The
suites about TLS (tests/unit/test_identity.py, tests/conformance/test_nsm_tls.py) and the
e2e NSM suite (every case over mTLS) give certificates; the rest test what the transport
carries, which is the same either way, and stay free of a CA per test."""

from __future__ import annotations

from typing import Any

from controller.settings import Settings

FREE_PORTS = {"metrics_address": "127.0.0.1:0", "web_address": "127.0.0.1:0"}
NOT_ABOUT_TLS = {"plaintext": True}


def settings_for_test(overrides: dict[str, Any] | None = None, /, *, env: bool = True, **more: Any) -> Settings:
    """`overrides` and `more` on top of the free ports; with `env`, P4NSM_* variables of the
    environment count too (Settings.load, what `p4nsm run` reads), without only the defaults."""
    values: dict[str, Any] = {**FREE_PORTS, **NOT_ABOUT_TLS, **(overrides or {}), **more}
    return Settings.load(values) if env else Settings.model_validate(values)
