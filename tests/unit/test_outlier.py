from controller.nsm.elements.select.outlier import OutlierDetector


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_ejects_after_consecutive_failures_for_growing_times():
    clock = Clock()
    d = OutlierDetector(consecutive=5, base_time=30, max_percent=10, clock=clock)
    pop = ["a", "b"]
    for _ in range(4):
        d.report("a", False, pop)
    assert not d.ejected("a")
    d.report("a", True, pop)  # a success resets the count
    for _ in range(4):
        d.report("a", False, pop)
    assert not d.ejected("a")
    d.report("a", False, pop)
    assert d.ejected("a")
    clock.t += 29.9
    assert d.ejected("a")
    clock.t += 0.2
    assert not d.ejected("a")
    for _ in range(5):
        d.report("a", False, pop)
    clock.t += 59.9
    assert d.ejected("a")  # second ejection lasts twice as long
    clock.t += 0.2
    assert not d.ejected("a")


def test_never_more_than_the_share_but_always_one():
    clock = Clock()
    d = OutlierDetector(consecutive=1, base_time=30, max_percent=10, clock=clock)
    pop = ["a", "b", "c"]
    d.report("a", False, pop)
    d.report("b", False, pop)
    assert d.ejected("a") and not d.ejected("b")  # 10% of 3 rounds down, but one may go
    pop20 = [f"e{i}" for i in range(20)]
    for name in pop20:
        d.report(name, False, pop20)
    assert sum(d.ejected(n) for n in pop20) == 2  # 10% of 20
