"""controller/logs.py: log values a client sent cannot end a line or pose as another key, and a
throttled kind of line is written at most so many times a second."""

from __future__ import annotations

import io
import logging

from controller.logs import Throttle, field, handler


def test_plain_values_stay_as_they_are_and_others_are_quoted_and_escaped() -> None:
    assert field("s1") == "s1" and field(3) == "3" and field("") == ""
    assert field("a b") == '"a b"'
    assert field('x" event=down') == '"x\\" event=down"'
    assert field("a\nb\r\t\x00\u2028\\") == '"a\\nb\\r\\t\\x00\\u2028\\\\"'


def test_one_record_is_one_line_whatever_its_arguments_hold() -> None:
    out = io.StringIO()
    log = logging.getLogger("p4nsm.test_logs")
    log.addHandler(h := handler(out))
    log.propagate = False
    try:
        log.warning("service=%s n=%d r=%r", "x\n00:00:00.000 ERROR p4nsm.p4rt switch=s1 event=down", 2, "y\nz")
        try:
            raise ValueError("boom\n00:00:00.000 ERROR forged")
        except ValueError:
            log.exception("event=failed")
    finally:
        log.removeHandler(h)
        log.propagate = True
    first, *trace = out.getvalue().splitlines()
    assert first.endswith('service="x\\n00:00:00.000 ERROR p4nsm.p4rt switch=s1 event=down" n=2 r=\'y\\nz\'')
    assert trace[0].endswith("event=failed") and all(line.startswith("  ") for line in trace[1:])


def test_throttle_admits_so_many_a_second_and_counts_what_it_left_out() -> None:
    now = [0.0]
    throttle = Throttle(3, clock=lambda: now[0])
    assert [throttle.admit() for _ in range(5)] == [0, 0, 0, None, None]
    now[0] = 1.0
    assert throttle.admit() == 2 and throttle.admit() == 0
