/*
 * nsm_fabric_pna.p4 — the p4nsm fabric for PNA, run by P4-DPDK under infrap4d.
 *
 * Same vocabulary as nsm_fabric.p4: the main control is called FabricIngress, so tables and
 * actions get the same P4Info names (FabricIngress.edge_classify, ...), and keys and
 * parameters keep their names. Differences that PNA and P4-DPDK impose (p4/README.md):
 *   - ports are PNA's PortId_t: 32 bits in P4Info, a translated type that infrap4d passes
 *     through untranslated (DPDK port numbers 0, 1, 2, ... in the order the ports were made);
 *   - no controller headers: P4-DPDK has no packet I/O (PacketOut is dropped, no PacketIn),
 *     so probes are dropped here like any frame no table claims;
 *   - edge_counter counts packets only: P4-DPDK counts bytes only from a length the program
 *     passes, and PNA's metadata carries none;
 *   - a table with a direct counter must count in its default action on P4-DPDK, so
 *     edge_classify's drop counts and label_fwd, which cannot share it, misses to NoAction
 *     (the packet is already marked to drop at the top of the apply block);
 *   - struct fields are whole bytes (P4-DPDK's rule): from_fabric is bit<8>.
 *
 * Compile (p4c-dpdk, not on every machine):
 *   p4c-dpdk --arch pna --target dpdk --p4runtime-files OUT/p4Info.txt --bf-rt-schema OUT/bf-rt.json \
 *       --context OUT/pipe/context.json -o OUT/pipe/nsm_fabric_pna.spec nsm_fabric_pna.p4
 */
#include <core.p4>
#include <pna.p4>

const bit<16> ETHERTYPE_VLAN  = 0x8100;
const bit<16> ETHERTYPE_MPLS  = 0x8847;

typedef bit<20> label_t;
typedef bit<12> vlan_id_t;

const bit<8> MPLS_INITIAL_TTL = 64;

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
    ethernet_t ethernet;
    mpls_t     mpls;
    vlan_t     vlan;
}

struct metadata_t {
    bit<8> from_fabric;
}

parser FabricParser(packet_in packet,
                    out headers_t hdr,
                    inout metadata_t meta,
                    in pna_main_parser_input_metadata_t istd) {
    state start {
        meta.from_fabric = 0;
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

control FabricPreControl(in headers_t hdr,
                         inout metadata_t meta,
                         in pna_pre_input_metadata_t istd,
                         inout pna_pre_output_metadata_t ostd) {
    apply { }
}

control FabricIngress(inout headers_t hdr,
                      inout metadata_t meta,
                      in pna_main_input_metadata_t istd,
                      inout pna_main_output_metadata_t ostd) {

    DirectCounter<bit<64>>(PNA_CounterType_t.PACKETS) edge_counter;
    // P4-DPDK does not honour watch ports: the group only spreads flows over both legs.
    ActionSelector(PNA_HashAlgorithm_t.CRC32, 32w4096, 32w16) next_hop_selector;

    action drop() {
        edge_counter.count();
        drop_packet();
    }

    // Fabric ports are the only ones allowed to deliver MPLS; a host cannot inject labels.
    action mark_fabric() {
        meta.from_fabric = 1;
    }

    table fabric_ports {
        key = {
            istd.input_port : exact @name("ingress_port");
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
            istd.input_port : exact @name("ingress_port");
            hdr.vlan.vid    : exact @name("vlan_id");
        }
        actions = {
            push_label;
            drop;
        }
        default_action = drop();
        pna_direct_counter = edge_counter;
        size = 8192;
    }

    action forward(PortId_t port) {
        send_to_port(port);
        hdr.mpls.ttl = hdr.mpls.ttl - 1;
    }

    action swap_forward(label_t label, PortId_t port) {
        hdr.mpls.label = label;
        send_to_port(port);
        hdr.mpls.ttl = hdr.mpls.ttl - 1;
    }

    action pop_to_edge(PortId_t port, vlan_id_t vlan_id) {
        hdr.mpls.setInvalid();
        hdr.ethernet.ether_type = ETHERTYPE_VLAN;
        hdr.vlan.vid = vlan_id;
        send_to_port(port);
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
        pna_implementation = next_hop_selector;
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
            @defaultonly NoAction;
        }
        const default_action = NoAction();
        size = 32768;
    }

    apply {
        // Whatever no table claims is dropped; send_to_port in an action replaces this.
        drop_packet();
        if (istd.parser_error != error.NoError) {
            exit;
        }
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
                drop_packet();
            }
        }
    }
}

control FabricDeparser(packet_out packet,
                       in headers_t hdr,
                       in metadata_t meta,
                       in pna_main_output_metadata_t ostd) {
    apply {
        packet.emit(hdr.ethernet);
        packet.emit(hdr.mpls);
        packet.emit(hdr.vlan);
    }
}

PNA_NIC(FabricParser(),
        FabricPreControl(),
        FabricIngress(),
        FabricDeparser()) main;
