"""Fixtures more than one suite uses."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.etcd_cluster import EtcdCluster, running_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster on loopback ports, data in the test's directory; stopped after."""
    yield from running_cluster(tmp_path)
