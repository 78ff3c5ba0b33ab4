"""The metrics and the web view over HTTPS when the controller has a certificate (the runtime's
wiring, real sockets): a client that trusts the lab CA reads them, a plaintext request gets no
answer, and a client that trusts another CA refuses the server. Without one, plain HTTP."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from controller.identity import LabCerts, init_lab_certs
from controller.runtime import Controller
from controller.settings import REPO_ROOT
from controller.topology import load_topology
from tests.support.settings import settings_for_test

DIAMOND = REPO_ROOT / "topologies" / "diamond.yaml"


@pytest.fixture
def lab(tmp_path: Path) -> LabCerts:
    return init_lab_certs(tmp_path / "certs")


async def started(tmp_path: Path, **overrides: str) -> AsyncIterator[Controller]:
    """A controller whose switches are never started: only its operator servers run."""
    ctl = Controller(load_topology(DIAMOND), settings_for_test(store_path=str(tmp_path / "store.sqlite"), **overrides))
    assert ctl.metrics is not None and ctl.web is not None
    await ctl.metrics.start()
    await ctl.web.start()
    try:
        yield ctl
    finally:
        await ctl.web.stop()
        await ctl.metrics.stop()
        ctl.store.close()


@pytest.fixture
async def with_certs(tmp_path: Path, lab: LabCerts) -> AsyncIterator[Controller]:
    async for ctl in started(tmp_path, **lab.settings("controller")):
        yield ctl


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


async def test_metrics_and_web_view_over_https(with_certs: Controller, lab: LabCerts) -> None:
    assert with_certs.metrics_url and with_certs.metrics_url.startswith("https://")
    assert with_certs.web_url and with_certs.web_url.startswith("https://")
    async with aiohttp.ClientSession() as session:
        async with session.get(with_certs.metrics_url, ssl=trusting(lab.ca)) as r:
            assert r.status == 200
            assert "p4nsm_connections" in await r.text()
        async with session.get(f"{with_certs.web_url}/api/topology", ssl=trusting(lab.ca)) as r:
            assert r.status == 200
            assert "switches" in await r.json()


async def test_plaintext_request_gets_no_answer(with_certs: Controller) -> None:
    assert with_certs.metrics_url is not None
    plain = with_certs.metrics_url.replace("https://", "http://")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(plain, timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()


async def test_client_trusting_another_ca_refuses_the_server(with_certs: Controller, tmp_path: Path) -> None:
    other = init_lab_certs(tmp_path / "other-ca")
    assert with_certs.metrics_url is not None
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(with_certs.metrics_url, ssl=trusting(other.ca))


async def test_without_a_certificate_plain_http(tmp_path: Path) -> None:
    async for ctl in started(tmp_path):
        assert ctl.metrics_url and ctl.metrics_url.startswith("http://")
        async with aiohttp.ClientSession() as session, session.get(ctl.metrics_url) as r:
            assert r.status == 200
