"""Writer for bench_p4rt_write_peers.py: p4runtime-shell 0.0.6. Runs in .venv-p4rtshell (its own
protobuf<3.21), so it imports nothing from p4nsm.

    .venv-p4rtshell/bin/python benchmarks/peers/p4rtsh_writer.py ADDRESS P4INFO CONFIG \
        --count 10000 --mode insert|write-file [--batch 1000]

`sh.setup(..., config=FwdPipeConfig(...))` connects, becomes primary and commits the pipeline;
the clock starts when it returns. Entries are built with the shell's own API
(`TableEntry(table)(action=...)`, `.match[...]`, `.action[...]`) in both modes:
  * insert: `TableEntry.insert()`, the shell's way to write an entry: one Write RPC per entry.
  * write-file: the shell's only documented batch path, the `Write` command, which reads a
    WriteRequest in protobuf text format from a file: BATCH entries per file, one Write each.
    Rendering and parsing the text are part of that path, so they are inside the clock.
Prints one JSON line: {"peer", "mode", "entries", "seconds"}.
"""

import argparse
import json
import os
import tempfile
import time

import p4runtime_sh.shell as sh
from google.protobuf import text_format
from p4.v1 import p4runtime_pb2

TABLE = "FabricIngress.label_fwd"
ACTION = "FabricIngress.forward"


def entry(label, port):
    te = sh.TableEntry(TABLE)(action=ACTION)
    te.match["label"] = str(label)
    te.action["port"] = str(port)
    return te


def write_request(entries):
    request = p4runtime_pb2.WriteRequest()
    for te in entries:
        u = request.updates.add()
        u.type = p4runtime_pb2.Update.INSERT
        u.entity.table_entry.CopyFrom(te.msg())
    return request


def write_file(path, entries):
    with open(path, "w") as f:
        f.write(text_format.MessageToString(write_request(entries)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("address")
    parser.add_argument("p4info")
    parser.add_argument("config")
    parser.add_argument("--device-id", type=int, default=1)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--label-base", type=int, default=1024)
    parser.add_argument("--mode", choices=["insert", "write-file", "client-write"], default="insert")
    parser.add_argument("--batch", type=int, default=1000, help="entries per Write (write-file and client-write modes)")
    args = parser.parse_args()

    sh.setup(device_id=args.device_id, grpc_addr=args.address, election_id=(0, 1),
             config=sh.FwdPipeConfig(args.p4info, args.config), verbose=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "write.txtpb")
            start = time.perf_counter()
            if args.mode == "insert":
                for i in range(args.count):
                    entry(args.label_base + i, i % 510 + 1).insert()
            else:
                for first in range(0, args.count, args.batch):
                    last = min(first + args.batch, args.count)
                    batch = [entry(args.label_base + i, i % 510 + 1) for i in range(first, last)]
                    if args.mode == "write-file":
                        write_file(path, batch)
                        sh.Write(path)
                    else:
                        sh.client.write(write_request(batch))
            seconds = time.perf_counter() - start
    finally:
        sh.teardown()
    if args.mode == "insert":
        mode = "TableEntry.insert(), one Write per entry"
    elif args.mode == "write-file":
        mode = f"Write(file) of {args.batch:,} updates each"
    else:
        mode = f"client.write(WriteRequest) of {args.batch:,} updates each (undocumented)"
    print(json.dumps({"peer": "p4runtime-shell", "mode": mode, "entries": args.count, "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
