"""Conformance suites: real gRPC against a real `p4nsm-softswitch` process."""

from tests.support.fixtures import *  # noqa: F403
