/*
 * nsm_fabric.p4 — the p4nsm fabric for v1model (BMv2 simple_switch_grpc).
 *
 * Forwarding model (see p4/README.md):
 *   host links  : Ethernet / 802.1Q (one VLAN per connection)       -> edge_classify
 *   fabric links: Ethernet(0x8847) / MPLS(label) / 802.1Q(inner type) -> label_group, label_fwd
 *   tail end    : pop the label, rewrite the VLAN to the far host's, send out the edge port
 *   probes      : EtherType 0x88B5 is never forwarded; it is punted with its ingress port
 *   CPU port    : packet_out names the egress port, packet_in carries the ingress port
 *
 * The VLAN header rides inside the MPLS label on fabric links because it carries the
 * inner EtherType, which MPLS itself does not record; the tail end rewrites its VID.
 *
 * Compile: p4c --target bmv2 --arch v1model --p4runtime-files nsm_fabric.p4info.txtpb nsm_fabric.p4
 */
#include <core.p4>
#include <v1model.p4>

const bit<16> ETHERTYPE_VLAN  = 0x8100;
const bit<16> ETHERTYPE_MPLS  = 0x8847;
const bit<16> ETHERTYPE_PROBE = 0x88B5;

#ifndef CPU_PORT
#define CPU_PORT 255
#endif

typedef bit<9>  port_t;
typedef bit<20> label_t;
typedef bit<12> vlan_id_t;

const bit<8> MPLS_INITIAL_TTL = 64;

@controller_header("packet_in")
header packet_in_t {
    port_t ingress_port;
    bit<7> _pad;
    // When the frame entered the switch, in microseconds of the switch's own clock: the
    // controller tells a probe still on its way from one that is lost by the peer's clock, not
    // by how long packet-ins take to reach it (controller/heal/link_monitor.py).
    bit<48> ingress_ts;
}

@controller_header("packet_out")
header packet_out_t {
    port_t egress_port;
    bit<7> _pad;
}

header ethernet_t {
    bit<48> dst_addr;
    bit<48> src_addr;
    bit<16> ether_type;
}

header vlan_t {
    bit<3>    pcp;
    bit<1>    dei;
    vlan_id_t vid;
    bit<16>   ether_type;
}

header mpls_t {
    label_t label;
    bit<3>  tc;
    bit<1>  bos;
    bit<8>  ttl;
}

struct headers_t {
    packet_in_t  packet_in;
    packet_out_t packet_out;
    ethernet_t   ethernet;
    mpls_t       mpls;
    vlan_t       vlan;
}

struct metadata_t {
    bit<1> from_fabric;
}

parser FabricParser(packet_in packet,
                    out headers_t hdr,
                    inout metadata_t meta,
                    inout standard_metadata_t std) {
    state start {
        transition select(std.ingress_port) {
            CPU_PORT: parse_packet_out;
            default: parse_ethernet;
        }
    }
    state parse_packet_out {
        packet.extract(hdr.packet_out);
        transition parse_ethernet;
    }
    state parse_ethernet {
        packet.extract(hdr.ethernet);
        transition select(hdr.ethernet.ether_type) {
            ETHERTYPE_VLAN: parse_vlan;
            ETHERTYPE_MPLS: parse_mpls;
            default: accept;
        }
    }
    state parse_mpls {
        packet.extract(hdr.mpls);
        transition parse_vlan;
    }
    state parse_vlan {
        packet.extract(hdr.vlan);
        transition accept;
    }
}

control FabricVerifyChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

control FabricIngress(inout headers_t hdr,
                      inout metadata_t meta,
                      inout standard_metadata_t std) {

    direct_counter(CounterType.packets_and_bytes) edge_counter;
    // Head-end fast failover: members watch their ports and the target prunes dead ones.
    action_selector(HashAlgorithm.crc16, 32w4096, 32w16) next_hop_selector;

    action drop() {
        mark_to_drop(std);
    }

    // Fabric ports are the only ones allowed to deliver MPLS; a host cannot inject labels.
    action mark_fabric() {
        meta.from_fabric = 1;
    }

    table fabric_ports {
        key = {
            std.ingress_port : exact @name("ingress_port");
        }
        actions = {
            mark_fabric;
            @defaultonly NoAction;
        }
        const default_action = NoAction();
        size = 512;
    }

    action push_label(label_t label) {
        hdr.mpls.setValid();
        hdr.mpls.label = label;
        hdr.mpls.tc = hdr.vlan.pcp;
        hdr.mpls.bos = 1;
        hdr.mpls.ttl = MPLS_INITIAL_TTL;
        hdr.ethernet.ether_type = ETHERTYPE_MPLS;
    }

    table edge_classify {
        key = {
            std.ingress_port : exact @name("ingress_port");
            hdr.vlan.vid     : exact @name("vlan_id");
        }
        actions = {
            push_label;
            drop;
        }
        default_action = drop();
        counters = edge_counter;
        size = 8192;
    }

    action forward(port_t port) {
        std.egress_spec = port;
        hdr.mpls.ttl = hdr.mpls.ttl - 1;
    }

    action swap_forward(label_t label, port_t port) {
        hdr.mpls.label = label;
        std.egress_spec = port;
        hdr.mpls.ttl = hdr.mpls.ttl - 1;
    }

    action pop_to_edge(port_t port, vlan_id_t vlan_id) {
        hdr.mpls.setInvalid();
        hdr.ethernet.ether_type = ETHERTYPE_VLAN;
        hdr.vlan.vid = vlan_id;
        std.egress_spec = port;
    }

    table label_group {
        key = {
            hdr.mpls.label        : exact @name("label");
            hdr.ethernet.src_addr : selector;
            hdr.ethernet.dst_addr : selector;
        }
        actions = {
            swap_forward;
        }
        implementation = next_hop_selector;
        size = 4096;
    }

    table label_fwd {
        key = {
            hdr.mpls.label : exact @name("label");
        }
        actions = {
            forward;
            swap_forward;
            pop_to_edge;
            drop;
        }
        default_action = drop();
        size = 32768;
    }

    apply {
        if (std.parser_error != error.NoError) {
            drop();
            exit;
        }
        if (hdr.packet_out.isValid()) {
            std.egress_spec = hdr.packet_out.egress_port;
            hdr.packet_out.setInvalid();
            exit;
        }
        if (hdr.ethernet.ether_type == ETHERTYPE_PROBE) {
            std.egress_spec = CPU_PORT;
            hdr.packet_in.setValid();
            hdr.packet_in.ingress_port = std.ingress_port;
            hdr.packet_in._pad = 0;
            hdr.packet_in.ingress_ts = std.ingress_global_timestamp;
            exit;
        }
        // Whatever no table claims is dropped.
        drop();
        if (hdr.mpls.isValid()) {
            fabric_ports.apply();
            // An expired label is dropped here, before forward() would wrap its TTL.
            if (meta.from_fabric == 0 || hdr.mpls.ttl == 0) {
                exit;
            }
        } else if (hdr.vlan.isValid()) {
            edge_classify.apply();
        }
        if (hdr.mpls.isValid()) {
            if (!label_group.apply().hit) {
                label_fwd.apply();
            }
            if (hdr.mpls.isValid() && hdr.mpls.ttl == 0) {
                drop();
            }
        }
    }
}

control FabricEgress(inout headers_t hdr,
                     inout metadata_t meta,
                     inout standard_metadata_t std) {
    apply { }
}

control FabricComputeChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

control FabricDeparser(packet_out packet, in headers_t hdr) {
    apply {
        packet.emit(hdr.packet_in);
        packet.emit(hdr.ethernet);
        packet.emit(hdr.mpls);
        packet.emit(hdr.vlan);
    }
}

V1Switch(FabricParser(),
         FabricVerifyChecksum(),
         FabricIngress(),
         FabricEgress(),
         FabricComputeChecksum(),
         FabricDeparser()) main;
