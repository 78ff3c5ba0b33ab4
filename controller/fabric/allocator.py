"""Labels (fabric-wide) and VLAN ids (per host port), rebuilt from the store on restart."""

from __future__ import annotations

from controller.fabric.model import ConnectionPlan


class Exhausted(Exception):
    pass


class IdPool:
    """Lowest-free allocation from [low, high]; O(1) amortised with a moving hint."""

    def __init__(self, low: int, high: int, what: str) -> None:
        self.low, self.high, self.what = low, high, what
        self.used: set[int] = set()
        self._hint = low

    def take(self, value: int | None = None) -> int:
        if value is not None:
            if not self.low <= value <= self.high:
                raise Exhausted(f"{self.what} {value} is outside {self.low}..{self.high}")
            if value in self.used:
                raise Exhausted(f"{self.what} {value} is already in use")
            self.used.add(value)
            return value
        span = self.high - self.low + 1
        if len(self.used) >= span:
            raise Exhausted(f"no free {self.what} in {self.low}..{self.high}")
        v = self._hint
        while v in self.used:
            v = self.low if v >= self.high else v + 1
        self.used.add(v)
        self._hint = self.low if v >= self.high else v + 1
        return v

    def give(self, value: int) -> None:
        self.used.discard(value)
        if value < self._hint:
            self._hint = value


class Allocator:
    def __init__(self, label_min: int, label_max: int, vlan_min: int, vlan_max: int) -> None:
        self.labels = IdPool(label_min, label_max, "MPLS label")
        self._vlan_range = (vlan_min, vlan_max)
        self.vlans: dict[tuple[str, int], IdPool] = {}

    def vlan_pool(self, switch: str, port: int) -> IdPool:
        pool = self.vlans.get((switch, port))
        if pool is None:
            pool = self.vlans[(switch, port)] = IdPool(*self._vlan_range, what=f"VLAN id on {switch}:{port}")
        return pool

    def claim(self, plan: ConnectionPlan) -> None:
        """Mark a stored plan's ids as used (restart)."""
        for leg in plan.legs():
            self.labels.used.add(leg.label)
        self.vlan_pool(plan.a.switch, plan.a.port).used.add(plan.a.vlan)
        self.vlan_pool(plan.b.switch, plan.b.port).used.add(plan.b.vlan)

    def release(self, plan: ConnectionPlan) -> None:
        for leg in plan.legs():
            self.labels.give(leg.label)
        self.vlan_pool(plan.a.switch, plan.a.port).give(plan.a.vlan)
        self.vlan_pool(plan.b.switch, plan.b.port).give(plan.b.vlan)
