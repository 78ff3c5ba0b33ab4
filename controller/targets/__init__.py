"""Device config per target kind: what goes into ForwardingPipelineConfig.p4_device_config."""

from __future__ import annotations

from controller.settings import Settings


class TargetError(Exception):
    pass


def device_config(kind: str, settings: Settings) -> bytes:
    """The p4_device_config bytes for a switch of this kind, read from the build outputs."""
    if kind == "softswitch":
        return settings.softswitch_config_path.read_bytes()
    if kind == "bmv2":
        path = settings.bmv2_json_path
        if not path.exists():
            raise TargetError(f"BMv2 JSON {path} is missing: build it with `make -C p4 bmv2` (needs p4c)")
        return path.read_bytes()
    if kind == "tofino":
        from controller.targets.tofino import bf_pipeline_config

        return bf_pipeline_config(settings.tofino_pipeline_dir)
    raise TargetError(f"unknown target kind {kind!r} (softswitch, bmv2 or tofino)")
