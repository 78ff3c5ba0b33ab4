"""e2e fixtures: real namespaces, veth pairs and `p4nsm-softswitch` processes (root only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.netns import can_run, sweep_stale
from tests.e2e.topology import Net

WHY_NOT = can_run()


@pytest.fixture(scope="session")
def e2e_ready() -> None:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    sweep_stale()


@pytest.fixture
def net(e2e_ready: None) -> Iterator[Net]:
    """A fabric of the test's own, torn down when the test ends."""
    with Net() as made:
        yield made


@pytest.fixture(scope="module")
def module_net(e2e_ready: None) -> Iterator[Net]:
    """A fabric shared by the tests of one module (they must leave its entries alone)."""
    with Net() as made:
        yield made
