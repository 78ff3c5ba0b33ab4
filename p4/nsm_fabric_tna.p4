/*
 * nsm_fabric_tna.p4 — the p4nsm fabric for Tofino (TNA), driven through Stratum.
 *
 * Same vocabulary as nsm_fabric.p4 (tables, actions, match fields, parameters, controller
 * headers), so the controller runs unchanged. Differences that the target imposes:
 *   - ports are FabricPortId_t: 32 bits in P4Info (@p4runtime_translation), so that Stratum's
 *     --experimental_enable_p4runtime_translation may be turned on; without it (Stratum's
 *     default, and p4nsm's) the values are the SDK's 9-bit dev ports, passed through;
 *   - no watch ports in Stratum's action profiles: head-end failover is the controller's
 *     single MODIFY of edge_classify (see controller/heal);
 *   - the packet_in/packet_out headers carry the 9-bit port plus 7 bits of padding to whole
 *     bytes; the controller sends every field of packet_out, _pad as 0;
 *   - CPU_PORT is the chip's PCIe CPU port: 192 on Tofino 1 with two pipes or fewer, 320 with
 *     more, 0 on Tofino 2 (make -C p4 tofino TOFINO_CPU_PORT=...); the topology's cpu_port
 *     must be the same.
 *
 * Compile: bf-p4c --arch tna -DCPU_PORT=192 --p4runtime-files nsm_fabric_tna.p4info.txtpb -o build/tofino nsm_fabric_tna.p4
 */
#include <core.p4>
#include <tna.p4>

const bit<16> ETHERTYPE_VLAN  = 0x8100;
const bit<16> ETHERTYPE_MPLS  = 0x8847;
const bit<16> ETHERTYPE_PROBE = 0x88B5;

#ifndef CPU_PORT
#define CPU_PORT 192
#endif

@p4runtime_translation("tna/PortId_t", 32)
type bit<9> FabricPortId_t;

typedef bit<20> label_t;
typedef bit<12> vlan_id_t;

const bit<8> MPLS_INITIAL_TTL = 64;

@controller_header("packet_in")
header packet_in_t {
    FabricPortId_t ingress_port;
    bit<7>         _pad;
}

@controller_header("packet_out")
header packet_out_t {
    FabricPortId_t egress_port;
    bit<7>         _pad;
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

struct ig_metadata_t {
    bit<1>         from_fabric;
    // The ingress port in its translated P4Runtime type, so that keys read as SDN ports.
    FabricPortId_t ig_port;
}

struct eg_metadata_t { }

parser FabricIngressParser(packet_in packet,
                           out headers_t hdr,
                           out ig_metadata_t meta,
                           out ingress_intrinsic_metadata_t ig_intr_md) {
    state start {
        packet.extract(ig_intr_md);
        packet.advance(PORT_METADATA_SIZE);
        meta.from_fabric = 0;
        meta.ig_port = (FabricPortId_t) ig_intr_md.ingress_port;
        transition select(ig_intr_md.ingress_port) {
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

control FabricIngress(inout headers_t hdr,
                      inout ig_metadata_t meta,
                      in ingress_intrinsic_metadata_t ig_intr_md,
                      in ingress_intrinsic_metadata_from_parser_t ig_prsr_md,
                      inout ingress_intrinsic_metadata_for_deparser_t ig_dprsr_md,
                      inout ingress_intrinsic_metadata_for_tm_t ig_tm_md) {

    DirectCounter<bit<64>>(CounterType_t.PACKETS_AND_BYTES) edge_counter;
    Hash<bit<16>>(HashAlgorithm_t.CRC16) selector_hash;
    ActionProfile(4096) next_hop_profile;
    ActionSelector(next_hop_profile, selector_hash, SelectorMode_t.FAIR, 16, 256) next_hop_selector;

    action drop() {
        ig_dprsr_md.drop_ctl = 1;
    }

    action mark_fabric() {
        meta.from_fabric = 1;
    }

    table fabric_ports {
        key = {
            meta.ig_port            : exact @name("ingress_port");
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
        edge_counter.count();
    }

    table edge_classify {
        key = {
            meta.ig_port            : exact @name("ingress_port");
            hdr.vlan.vid            : exact @name("vlan_id");
        }
        actions = {
            push_label;
            drop;
        }
        const default_action = drop();
        counters = edge_counter;
        size = 8192;
    }

    action forward(FabricPortId_t port) {
        ig_tm_md.ucast_egress_port = (PortId_t) port;
        ig_dprsr_md.drop_ctl = 0;
        hdr.mpls.ttl = hdr.mpls.ttl - 1;
    }

    action swap_forward(label_t label, FabricPortId_t port) {
        hdr.mpls.label = label;
        ig_tm_md.ucast_egress_port = (PortId_t) port;
        ig_dprsr_md.drop_ctl = 0;
        hdr.mpls.ttl = hdr.mpls.ttl - 1;
    }

    action pop_to_edge(FabricPortId_t port, vlan_id_t vlan_id) {
        hdr.mpls.setInvalid();
        hdr.ethernet.ether_type = ETHERTYPE_VLAN;
        hdr.vlan.vid = vlan_id;
        ig_tm_md.ucast_egress_port = (PortId_t) port;
        ig_dprsr_md.drop_ctl = 0;
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
        const default_action = drop();
        size = 32768;
    }

    apply {
        if (hdr.packet_out.isValid()) {
            ig_tm_md.ucast_egress_port = (PortId_t) hdr.packet_out.egress_port;
            hdr.packet_out.setInvalid();
            ig_tm_md.bypass_egress = 1;
            exit;
        }
        if (hdr.ethernet.ether_type == ETHERTYPE_PROBE) {
            ig_tm_md.ucast_egress_port = CPU_PORT;
            hdr.packet_in.setValid();
            hdr.packet_in.ingress_port = meta.ig_port;
            hdr.packet_in._pad = 0;
            ig_tm_md.bypass_egress = 1;
            exit;
        }
        drop();
        if (hdr.mpls.isValid()) {
            fabric_ports.apply();
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
        ig_tm_md.bypass_egress = 1;
    }
}

control FabricIngressDeparser(packet_out packet,
                              inout headers_t hdr,
                              in ig_metadata_t meta,
                              in ingress_intrinsic_metadata_for_deparser_t ig_dprsr_md) {
    apply {
        packet.emit(hdr.packet_in);
        packet.emit(hdr.ethernet);
        packet.emit(hdr.mpls);
        packet.emit(hdr.vlan);
    }
}

parser FabricEgressParser(packet_in packet,
                          out headers_t hdr,
                          out eg_metadata_t meta,
                          out egress_intrinsic_metadata_t eg_intr_md) {
    state start {
        packet.extract(eg_intr_md);
        transition accept;
    }
}

control FabricEgress(inout headers_t hdr,
                     inout eg_metadata_t meta,
                     in egress_intrinsic_metadata_t eg_intr_md,
                     in egress_intrinsic_metadata_from_parser_t eg_prsr_md,
                     inout egress_intrinsic_metadata_for_deparser_t eg_dprsr_md,
                     inout egress_intrinsic_metadata_for_output_port_t eg_oport_md) {
    apply { }
}

control FabricEgressDeparser(packet_out packet,
                             inout headers_t hdr,
                             in eg_metadata_t meta,
                             in egress_intrinsic_metadata_for_deparser_t eg_dprsr_md) {
    apply { }
}

Pipeline(FabricIngressParser(),
         FabricIngress(),
         FabricIngressDeparser(),
         FabricEgressParser(),
         FabricEgress(),
         FabricEgressDeparser()) pipe;

Switch(pipe) main;
