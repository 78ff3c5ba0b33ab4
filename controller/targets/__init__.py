"""Targets: what each kind of switch needs (its device config) and may be expected to do."""

from __future__ import annotations

from controller.targets.errors import TargetError
from controller.targets.kinds import Target
from controller.targets.profiles import PROFILES, TargetProfile, device_config, profile

__all__ = ["PROFILES", "Target", "TargetError", "TargetProfile", "device_config", "profile"]
