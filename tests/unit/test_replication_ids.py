"""Election ids of replicas (controller/replication.py) and what `p4nsm cluster` makes of the
replicas' statuses (controller/commands/cluster.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.commands.cluster import replica_rows, switch_rows
from controller.replication import follower_election_id, leader_election_id, term_of


def test_every_term_outranks_every_earlier_term_and_every_follower() -> None:
    followers = [follower_election_id(u) for u in (0, 1, 2**63 - 1, 2**64 - 1, 2**64, 2**80)]
    assert all(1 <= f < leader_election_id(1) for f in followers)
    ids = [leader_election_id(t) for t in (1, 2, 3, 1000, 2**40)]
    assert ids == sorted(set(ids))
    assert [term_of(i) for i in ids] == [1, 2, 3, 1000, 2**40]
    assert term_of(followers[0]) == 0
    assert ids[-1] < 2**128  # fits P4Runtime's Uint128
    with pytest.raises(ValueError):
        leader_election_id(0)


def status(name: str, role: str, election_id: int, primary_seen: int, primary: bool) -> dict:
    return {"replica_id": name, "role": role, "term": term_of(election_id), "election_id": election_id, "leader": "r1",
            "leader_nsm_address": "", "nsm_address": f"unix:///run/{name}.sock",
            "switches": [{"name": "s1", "primary": primary, "up": primary, "election_id": election_id,
                          "primary_election_id": primary_seen, "refused_writes": 0 if primary else 2}]}


def test_cluster_names_the_primary_by_the_id_the_switch_reported() -> None:
    lead = leader_election_id(7)
    found = [(Path("a.sock"), status("r1", "leader", lead, lead, True)),
             (Path("b.sock"), status("r2", "follower", follower_election_id(5), lead, False)),
             (Path("c.sock"), "unreachable: gone")]
    rows = switch_rows(found)
    assert rows == [{"switch": "s1", "primary": "r1", "primary election id": f"{lead:#x}", "term": "7",
                     "r1": "primary", "r2": "backup, 2 refused"}]
    replicas = replica_rows(found)
    assert [r["role"] for r in replicas] == ["leader", "follower", "unreachable: gone"]
    assert replicas[0]["election id"] == f"{lead:#x}" and replicas[1]["leader it sees"] == "r1"
