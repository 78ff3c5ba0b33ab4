"""A p4runtime-shell session against a softswitch; runs in .venv-p4rtshell, prints JSON lines.

    .venv-p4rtshell/bin/python p4rtsh_session.py HOST:PORT P4INFO DEVICE_CONFIG

Each line is {"step": ..., ...}; table entries are printed as hex of their serialized proto
so that the test decodes them with its own protos.
"""

import json
import sys

import p4runtime_sh.shell as sh
from p4runtime_sh.p4runtime import P4RuntimeWriteException

TABLE = "FabricIngress.edge_classify"


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


def entries():
    return [e.msg().SerializeToString().hex() for e in sh.TableEntry(TABLE).read()]


def entry(vlan, label):
    te = sh.TableEntry(TABLE)(action="FabricIngress.push_label")
    te.match["ingress_port"] = "5"
    te.match["vlan_id"] = str(vlan)
    te.action["label"] = str(label)
    return te


def main():
    address, p4info, config = sys.argv[1:4]
    sh.setup(device_id=1, grpc_addr=address, election_id=(0, 1), config=sh.FwdPipeConfig(p4info, config), verbose=False)
    try:
        emit("pipeline")
        entry(100, 1000).insert()
        emit("inserted", entries=entries())
        try:
            entry(100, 1000).insert()
            emit("duplicate", error=None)
        except P4RuntimeWriteException as err:
            emit("duplicate", error=str(err))
        entry(100, 2000).modify()
        emit("modified", entries=entries())
        default = sh.TableEntry("FabricIngress.label_fwd")(is_default=True)
        emit("default", entries=[e.msg().SerializeToString().hex() for e in default.read()])
        entry(100, 2000).delete()
        emit("deleted", entries=entries())
        entry(200, 3000).insert()
        emit("left", entries=entries())
    finally:
        sh.teardown()


if __name__ == "__main__":
    main()
