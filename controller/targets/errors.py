"""The one error of this package: a switch's target cannot be driven as configured."""

from __future__ import annotations


class TargetError(Exception):
    pass
