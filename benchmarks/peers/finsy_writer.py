"""Writer for bench_p4rt_write_peers.py: finsy 0.30 (`finsy.Switch`, `P4TableEntry`).

    .venv/bin/python benchmarks/peers/finsy_writer.py ADDRESS --count 10000 [--batch 0] [--concurrent] \
        [--p4info P4INFO --config CONFIG]

`async with Switch(...)` returns once finsy is connected, primary and has committed the pipeline
(its CHANNEL_READY); the clock starts there. finsy's `Switch.insert()` sends whatever list it is
given as one WriteRequest: --batch 0 hands it all COUNT entries at once, --batch N makes
COUNT/N insert() calls, one after the other or, with --concurrent, all in flight together.
--p4info and --config name the pipeline (default: the softswitch's).
Prints one JSON line: {"peer", "mode", "entries", "seconds"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path

from finsy import P4TableAction, P4TableEntry, P4TableMatch, Switch, SwitchOptions

REPO = Path(__file__).resolve().parents[2]
P4INFO = REPO / "p4" / "nsm_fabric.p4info.txtpb"
CONFIG = REPO / "p4" / "nsm_fabric.softswitch.json"


async def run(address: str, device_id: int, count: int, label_base: int, batch: int, concurrent: bool,
              p4info: Path, config: Path) -> dict[str, object]:
    options = SwitchOptions(p4info=p4info, p4blob=config, device_id=device_id)
    async with Switch("bench", address, options) as sw:
        start = time.perf_counter()
        entries = [
            P4TableEntry(
                "label_fwd",
                match=P4TableMatch(label=label_base + i),
                action=P4TableAction("forward", port=i % 510 + 1),
            )
            for i in range(count)
        ]
        if batch <= 0:
            await sw.insert(entries)
        else:
            chunks = [entries[i : i + batch] for i in range(0, count, batch)]
            if concurrent:
                await asyncio.gather(*(sw.insert(chunk) for chunk in chunks))
            else:
                for chunk in chunks:
                    await sw.insert(chunk)
        seconds = time.perf_counter() - start
    if batch <= 0:
        mode = f"one insert() of {count:,}"
    else:
        mode = f"insert() of {batch:,} each, " + ("all in flight" if concurrent else "one after the other")
    return {"peer": "finsy", "mode": mode, "entries": count, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    parser.add_argument("--device-id", type=int, default=1)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--label-base", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=0, help="entries per insert(); 0: all in one")
    parser.add_argument("--concurrent", action="store_true")
    parser.add_argument("--p4info", type=Path, default=P4INFO)
    parser.add_argument("--config", type=Path, default=CONFIG)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # finsy warns once that the softswitch has no gNMI; that is expected here.
    logging.getLogger("finsy").setLevel(logging.ERROR)
    result = asyncio.run(run(args.address, args.device_id, args.count, args.label_base, args.batch, args.concurrent,
                             args.p4info, args.config))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
