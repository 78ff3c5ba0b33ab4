"""Writer for bench_p4rt_write_peers.py: p4nsm's own client (controller.p4rt.client.SwitchClient).

    .venv/bin/python benchmarks/peers/p4nsm_writer.py ADDRESS --count 10000 [--callers 1] \
        [--p4info P4INFO --config CONFIG]

Connects, becomes primary and commits nsm_fabric (the client's own start-up), then starts the
clock, builds COUNT label_fwd INSERTs by name and awaits their acknowledgement. With --callers N
the updates are handed over by N concurrent write() calls, as the fabric does when many
connections are set up at once: the client coalesces them into shared Write RPCs. --p4info and
--config name the pipeline (default: the softswitch's; for BMv2, p4c's P4Info and JSON).
Prints one JSON line: {"peer", "mode", "entries", "seconds"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from finsy.proto import p4r  # noqa: E402

from controller.p4rt.client import SwitchClient, SwitchTarget  # noqa: E402
from controller.p4rt.schema import P4Schema, update  # noqa: E402
from controller.pipeline.revisions import pipeline_cookie  # noqa: E402
from controller.settings import Settings  # noqa: E402


async def run(address: str, device_id: int, count: int, label_base: int, callers: int,
              p4info_path: Path | None, config_path: Path | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {"store_path": str(Path(tmp) / "unused.sqlite")}
        if p4info_path is not None:
            overrides["p4info_path"] = str(p4info_path)
        settings = Settings.load(overrides)
        schema = P4Schema.from_file(settings.p4info_path)
        p4info = schema.p4info.SerializeToString(deterministic=True)
        config = (config_path or settings.softswitch_config_path).read_bytes()
        target = SwitchTarget("bench", address, device_id, p4info, config, pipeline_cookie(p4info, [config]))
        client = SwitchClient(target, schema, settings)
        client.start()
        try:
            if not await client.wait_up(30):
                raise SystemExit(f"switch at {address} did not come up")
            start = time.perf_counter()
            updates = [
                update(p4r.Update.INSERT, schema.table_entry("label_fwd", {"label": label_base + i}, "forward", {"port": i % 510 + 1}))
                for i in range(count)
            ]
            if callers == 1:
                await client.write(updates)
            else:
                step = -(-count // callers)
                await asyncio.gather(*(client.write(updates[i : i + step]) for i in range(0, count, step)))
            seconds = time.perf_counter() - start
        finally:
            await client.stop()
    mode = "one write() call" if callers == 1 else f"{callers} concurrent write() calls"
    return {"peer": "p4nsm", "mode": mode, "entries": count, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    parser.add_argument("--device-id", type=int, default=1)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--label-base", type=int, default=1024)
    parser.add_argument("--callers", type=int, default=1)
    parser.add_argument("--p4info", type=Path, help="P4Info to push (default: the p4info_path setting's)")
    parser.add_argument("--config", type=Path, help="device config to push (default: the softswitch's)")
    args = parser.parse_args()
    result = asyncio.run(run(args.address, args.device_id, args.count, args.label_base, args.callers,
                             args.p4info, args.config))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
