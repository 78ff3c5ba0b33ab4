"""Test helpers shared by the conformance and e2e suites (P4Runtime test client, fixtures)."""
