"""The kinds of switch the controller drives, by the names topology files give them."""

from __future__ import annotations

from enum import StrEnum


class Target(StrEnum):
    SOFTSWITCH = "softswitch"
    BMV2 = "bmv2"
    TOFINO = "tofino"
    DPDK = "dpdk"  # P4-DPDK (PNA) under infrap4d
