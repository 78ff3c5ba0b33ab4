"""Interfaces, addresses and routes in a client's or endpoint's network namespace (pyroute2)."""

from controller.host.kernel_iface import (
    HostIfaceError,
    ensure_vlan_iface,
    host_parent_iface,
    remove_iface,
    validate_ifname,
)

__all__ = ["HostIfaceError", "ensure_vlan_iface", "host_parent_iface", "remove_iface", "validate_ifname"]
