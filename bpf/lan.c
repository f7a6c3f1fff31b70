/* daetui: the programs on a LAN interface.
 *
 * lan_ingress  decides every new flow from the LAN (kernel stage of routing)
 *              and carries out the decision for every packet: direct flows
 *              are passed and never reach user space, blocked ones dropped,
 *              the rest handed to the control plane with bpf_sk_assign.
 * route_classify looks up each field's class of a new flow's packet and
 * route_match  finds the first rule set in every class's bitmap (the rule
 *              classifier: a few lookups and word ANDs, whatever the rules);
 * route_chunk  walks the rules instead (the reference, and what a generation
 *              the classifier cannot hold uses): ROUTE_CHUNK match sets per
 *              call, tail-calling itself, so thousands fit the verifier's limits;
 * route_decide records the decision and carries it out.
 * dns_answer   answers a hijacked DNS query from the controller's hot answers
 *              (dns_answers) in place, or hands it to the controller.
 * lan_egress   counts the replies of the flows lan_ingress knows.
 * (*_l3: the same on an interface without Ethernet header: WireGuard, tun.)
 * wan_egress   decides the router's own new flows leaving by a WAN interface
 *              with the same rules; direct ones stay in the kernel, the
 *              rest are redirected into daetui0, where
 * own_ingress  hands them to the control plane's sockets (bpf_sk_assign).
 * own_*        (cgroup hooks) record the process behind each local socket.
 * tproxy_lookup (sk_lookup, on the namespace) finds the listener for a new
 *              connection whose 4-tuple is still in TIME_WAIT here: the kernel
 *              then looks for a listener at the original address, and only
 *              this program knows that daetui's listener stands in for it.
 *
 * Anything the programs cannot parse passes untouched: a router must never
 * lose traffic because daetui did not understand it.
 */
/* The uapi headers only: the wire structs are all the programs need, and the kernel's own
 * linux/ip.h, tcp.h, ... pull in most of the kernel, which was most of BCC's compile time
 * (each of them ~1.3 s here, against ~0.2 s for its uapi twin): every start pays it. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#ifndef AF_INET
#define AF_INET 2       /* linux/socket.h's, not in uapi */
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#include "daetui.h"

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10
#define IPV4_FRAG_MASK 0x3fff  /* MF flag and fragment offset */
#define IPV6_MAX_EXT_HEADERS 4

enum parse_result { PARSED = 0, NOT_OURS = 1 };

static __always_inline void count(__u32 index)
{
    __u64 *v = counters.lookup(&index);
    if (v)
        *v += 1;
}

/* parse() serves both directions; only ingress feeds the global counters. */
static __always_inline void count_if(int cond, __u32 index)
{
    if (cond)
        count(index);
}

static __always_inline void if_count(__u32 ifindex, __u32 len, int egress)
{
    struct if_stat *st;
    if (ifindex < MAX_INTERFACES) {
        st = if_stats.lookup(&ifindex);
    } else {
        st = if_stats_far.lookup(&ifindex);
        if (!st) {
            struct if_stat zero = {};
            if_stats_far.update(&ifindex, &zero);
            st = if_stats_far.lookup(&ifindex);
        }
    }
    if (!st)
        return;
    if (egress) {
        st->tx_packets += 1;
        st->tx_bytes += len;
    } else {
        st->rx_packets += 1;
        st->rx_bytes += len;
    }
}

/* An IPv4 address as the maps key it: v4-mapped (::ffff:a.b.c.d), so one key serves both families. */
static __always_inline void v4_mapped(__u8 *addr16, __be32 addr)
{
    /* Keys are 2-aligned: said so, the fill stays 2-byte stores (a bare __u8 * made it byte stores). */
    __u8 *dst = __builtin_assume_aligned(addr16, 2);
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    __builtin_memcpy(&dst[12], &addr, 4);
}

static __always_inline __u8 v4_mapped_addr(const __u8 *a)
{
    const __u32 *w = __builtin_assume_aligned(a, 4);
    return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

/* The listeners slot of a flow handed to the control plane: TCP or UDP, IPv4
 * or IPv6, and for DNS the DNS controller's own listeners. */
static __always_inline __u32 listener_key(__u8 l4proto, __u8 ipv6, __u8 dns)
{
    if (l4proto == IPPROTO_TCP) {
        if (dns)
            return ipv6 ? LISTENER_DNS_TCP6 : LISTENER_DNS_TCP4;
        return ipv6 ? LISTENER_TCP6 : LISTENER_TCP4;
    }
    if (dns)
        return ipv6 ? LISTENER_DNS_UDP6 : LISTENER_DNS_UDP4;
    return ipv6 ? LISTENER_UDP6 : LISTENER_UDP4;
}

/* The TCP listener a new relayed flow goes to: a live relay worker's, picked
 * by a hash of the flow's tuple (the same flow, the same worker, while it
 * lives), the next live one after a dead worker, else the main process's. */
static __always_inline struct bpf_sock *tcp_listener(struct tuple_key *k, __u8 ipv6, struct params *p)
{
    __u32 lkey;
    if (p && p->workers) {
        __u32 n = p->workers < MAX_WORKERS ? p->workers : MAX_WORKERS;
        __u32 h, a;
        __builtin_memcpy(&a, &k->sip[12], 4);
        h = a ^ p->worker_seed ^ k->sport ^ ((__u32)k->dport << 16);
        h ^= h >> 16;
        h *= 0x45d9f3b;
        h ^= h >> 16;
        __u32 w = h % n;
#pragma unroll
        for (int i = 0; i < MAX_WORKERS; i++) {
            if (i >= n)
                break;
            lkey = WORKER_SLOT0 + 2 * w + ipv6;
            struct bpf_sock *sk = (struct bpf_sock *)listeners.lookup(&lkey);
            if (sk)
                return sk;
            w = w + 1 < n ? w + 1 : 0;
        }
    }
    lkey = ipv6 ? LISTENER_TCP6 : LISTENER_TCP4;
    return (struct bpf_sock *)listeners.lookup(&lkey);
}

/* The listener for a flow handed to the control plane: TCP to a relay worker
 * (or the main process), UDP and DNS to the main process. */
static __always_inline struct bpf_sock *listener_for(struct tuple_key *k, __u8 ipv6, __u8 dns, struct params *p)
{
    if (k->l4proto == IPPROTO_TCP && !dns)
        return tcp_listener(k, ipv6, p);
    __u32 lkey = listener_key(k->l4proto, ipv6, dns);
    return (struct bpf_sock *)listeners.lookup(&lkey);
}

/* len bytes at off of the packet into to: read in place when they are in the linear part (a plain
 * copy), else by the helper (a call and a copy per header, a visible share of a forwarded packet's
 * cost here). */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    if (off <= 0xffff && data + off + len <= end) {
        __builtin_memcpy(to, data + off, len);
        return 0;
    }
    return bpf_skb_load_bytes(skb, off, to, len);
}

/* Parse Ethernet (none with l3), IPv4/IPv6 and the TCP/UDP ports into s: its
 * key, mac, l3, ipversion, tcp_flags and dscp (nothing else of s is touched). Counts and
 * returns NOT_OURS for anything that is to pass untouched. */
static __always_inline int parse(struct __sk_buff *skb, struct route_state *s, int egress, int l3)
{
    struct tuple_key *key = &s->key;
    struct ethhdr eth = {};
    __u32 off = 0;
    __u8 proto;

    if (l3) {
        /* WireGuard, tun: the packet starts with its IP header. */
        eth.h_proto = skb->protocol;
    } else {
        if (load(skb, 0, &eth, sizeof(eth)))
            goto unparsed;
        off = sizeof(struct ethhdr);
        /* Broadcast and multicast (ARP, DHCP, mDNS...) are never ours. */
        if (!egress && (eth.h_dest[0] & 1)) {
            count_if(!egress, CNT_NON_UNICAST);
            return NOT_OURS;
        }
    }
    __builtin_memcpy(s->mac, egress ? eth.h_dest : eth.h_source, 6);
    s->l3 = l3;

    if (eth.h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr ip;
        if (load(skb, off, &ip, sizeof(ip)))
            goto unparsed;
        if (ip.ihl < 5)
            goto unparsed;
        if (ip.frag_off & bpf_htons(IPV4_FRAG_MASK)) {
            count_if(!egress, CNT_FRAGMENT);
            return NOT_OURS;
        }
        v4_mapped(key->sip, ip.saddr);
        v4_mapped(key->dip, ip.daddr);
        proto = ip.protocol;
        off += ip.ihl * 4;
        s->ipversion = 4;
        s->dscp = ip.tos >> 2;
    } else if (eth.h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr ip6;
        if (load(skb, off, &ip6, sizeof(ip6)))
            goto unparsed;
        __builtin_memcpy(key->sip, &ip6.saddr, 16);
        __builtin_memcpy(key->dip, &ip6.daddr, 16);
        /* ::ffff:a.b.c.d is how the maps key IPv4: filed, such a packet would share (and
         * overwrite) the entry of the IPv4 flow between those addresses. Linux drops a
         * v4-mapped source itself (ip6_rcv_core); it is passed to it untouched. */
        if (v4_mapped_addr(key->sip) || v4_mapped_addr(key->dip)) {
            count_if(!egress, CNT_V4_MAPPED_V6);
            return NOT_OURS;
        }
        proto = ip6.nexthdr;
        off += sizeof(ip6);
        s->ipversion = 6;
        s->dscp = (((__u8)ip6.priority << 4) | (ip6.flow_lbl[0] >> 4)) >> 2;
        /* Follow hop-by-hop, routing and destination options headers. */
#pragma unroll
        for (int i = 0; i < IPV6_MAX_EXT_HEADERS; i++) {
            if (proto != IPPROTO_HOPOPTS && proto != IPPROTO_ROUTING && proto != IPPROTO_DSTOPTS)
                break;
            __u8 ext[2];
            if (load(skb, off, ext, sizeof(ext)))
                goto unparsed;
            proto = ext[0];
            off += ((__u32)ext[1] + 1) * 8;
        }
        if (proto == IPPROTO_FRAGMENT) {
            count_if(!egress, CNT_FRAGMENT);
            return NOT_OURS;
        }
        if (proto == IPPROTO_HOPOPTS || proto == IPPROTO_ROUTING || proto == IPPROTO_DSTOPTS)
            goto unparsed;
    } else {
        count_if(!egress, CNT_NOT_IP);
        return NOT_OURS;
    }

    if (proto == IPPROTO_TCP) {
        __u8 hdr[14];
        if (load(skb, off, hdr, sizeof(hdr)))
            goto unparsed;
        key->sport = ((__u16)hdr[0] << 8) | hdr[1];
        key->dport = ((__u16)hdr[2] << 8) | hdr[3];
        s->tcp_flags = hdr[13];
    } else if (proto == IPPROTO_UDP) {
        __u8 hdr[4];
        if (load(skb, off, hdr, sizeof(hdr)))
            goto unparsed;
        key->sport = ((__u16)hdr[0] << 8) | hdr[1];
        key->dport = ((__u16)hdr[2] << 8) | hdr[3];
        s->tcp_flags = 0;
    } else {
        count_if(!egress, CNT_OTHER_L4);
        return NOT_OURS;
    }
    key->l4proto = proto;
    key->pad[0] = key->pad[1] = key->pad[2] = 0;
    return PARSED;

unparsed:
    count_if(!egress, CNT_UNPARSED);
    return NOT_OURS;
}

/* Is the control plane's heartbeat older than its timeout (a stopped or hung daemon)? */
static __always_inline __u8 stalled(__u64 now)
{
    __u32 zero = 0;
    struct heartbeat *hb = heartbeat.lookup(&zero);
    if (!hb || !hb->timeout_ns || !hb->beat_ns || now < hb->beat_ns)
        return 0;
    return now - hb->beat_ns > hb->timeout_ns;
}

/* The socket of this TCP flow on the router (a relay's transparent socket,
 * established or in TIME_WAIT), never a listener; NULL if there is none.
 * The caller releases it. */
static __always_inline struct bpf_sock *flow_socket(struct __sk_buff *skb, struct route_state *s)
{
    struct bpf_sock *sk;
    struct bpf_sock_tuple t = {};
    if (s->ipversion == 4) {
        __builtin_memcpy(&t.ipv4.saddr, &s->key.sip[12], 4);
        __builtin_memcpy(&t.ipv4.daddr, &s->key.dip[12], 4);
        t.ipv4.sport = bpf_htons(s->key.sport);
        t.ipv4.dport = bpf_htons(s->key.dport);
        sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    } else {
        __builtin_memcpy(t.ipv6.saddr, s->key.sip, 16);
        __builtin_memcpy(t.ipv6.daddr, s->key.dip, 16);
        t.ipv6.sport = bpf_htons(s->key.sport);
        t.ipv6.dport = bpf_htons(s->key.dport);
        sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
    }
    if (sk && sk->state == BPF_TCP_LISTEN) {
        bpf_sk_release(sk);
        sk = NULL;
    }
    return sk;
}

/* The control plane cannot take the packet: count why, and pass it (fail
 * open) or drop it, as configured. */
static __always_inline int give_up(struct params *p, __u32 counter)
{
    count(counter);
    return p->fail_open ? TC_ACT_OK : TC_ACT_SHOT;
}

/* Hand the packet to the control plane: the flow's own socket when it has
 * one, else the transparent listener. No listener means the daemon is gone:
 * fail open (pass) or closed, as configured. */
static __always_inline int assign(struct __sk_buff *skb, struct route_state *s, struct params *p, __u8 outbound)
{
    struct bpf_sock *sk = NULL;

    if (s->key.l4proto == IPPROTO_TCP) {
        sk = flow_socket(skb, s);
        if (sk && (s->tcp_flags & TCP_FLAG_SYN) && !(s->tcp_flags & TCP_FLAG_ACK)) {
            /* A new connection on a 4-tuple this router still holds (TIME_WAIT
             * from the last one): the kernel must retire the old socket itself,
             * then tproxy_lookup hands it our listener. Route it here, unassigned. */
            bpf_sk_release(sk);
            skb->mark = p->tproxy_mark;
            count(CNT_TO_CONTROL);
            return TC_ACT_OK;
        }
        if (!sk)
            sk = listener_for(&s->key, s->ipversion != 4, outbound == OUTBOUND_DNS, p);
    } else {
        sk = listener_for(&s->key, s->ipversion != 4, outbound == OUTBOUND_DNS, p);
    }
    if (!sk)
        return give_up(p, CNT_FAIL_OPEN);
    skb->mark = p->tproxy_mark;
    long err = bpf_sk_assign(skb, sk, 0);
    bpf_sk_release(sk);
    if (err)
        return give_up(p, CNT_ASSIGN_ERROR);
    count(CNT_TO_CONTROL);
    return TC_ACT_OK;
}

/* A mid-stream TCP packet with no routing_tuples entry. If it belongs to a
 * relay (the LRU forgot the flow under churn), it must reach the relay's
 * socket, or be dropped once that socket is gone: routed on as it is, it would
 * leave the WAN with the client's own address. Anything else (a direct flow
 * the LRU forgot, a connection older than daetui) passes as before. */
static __always_inline int orphan(struct __sk_buff *skb, struct route_state *s)
{
    __u32 zero = 0;
    struct bpf_sock *sk = flow_socket(skb, s);
    if (sk) {
        struct params *p = params.lookup(&zero);
        long err = -1;
        if (p) {
            skb->mark = p->tproxy_mark;
            err = bpf_sk_assign(skb, sk, 0);
        }
        bpf_sk_release(sk);
        if (!err) {
            count(CNT_ORPHAN_TO_SOCKET);
            return TC_ACT_OK;
        }
        skb->mark = 0;
        count(CNT_ASSIGN_ERROR);
    }
    if (relayed_tuples.lookup(&s->key)) {
        count(CNT_ORPHAN_DROPPED);
        return TC_ACT_SHOT;
    }
    count(CNT_UNTRACKED_TCP);
    return TC_ACT_OK;
}

/* Hand one of the router's own packets to the control plane: wan_egress sees
 * it after routing, where no socket can be assigned, so it is redirected into
 * the ingress of daetui0 (addressed to it), where own_ingress assigns it as
 * lan_ingress would. No listener (the daemon is gone): fail open or closed. */
static __always_inline int own_redirect(struct __sk_buff *skb, struct route_state *s, struct params *p,
                                        __u8 outbound)
{
    struct bpf_sock *sk = listener_for(&s->key, s->ipversion != 4, outbound == OUTBOUND_DNS, p);
    if (sk)
        bpf_sk_release(sk);
    if (!sk || !p->own_ifindex)
        return give_up(p, CNT_FAIL_OPEN);
    if (s->l3) {
        /* daetui0 is Ethernet: give the packet the header it expects. */
        struct ethhdr eth = {};
        eth.h_proto = skb->protocol;
        __builtin_memcpy(eth.h_dest, p->own_mac, 6);
        __builtin_memcpy(eth.h_source, p->own_mac, 6);
        if (bpf_skb_change_head(skb, sizeof(eth), 0) ||
            bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
            return give_up(p, CNT_ASSIGN_ERROR);
    } else if (bpf_skb_store_bytes(skb, 0, p->own_mac, 6, 0)) {
        /* Addressed to the WAN's next hop, the packet would be dropped as
         * another host's (PACKET_OTHERHOST) once it enters daetui0. */
        return give_up(p, CNT_ASSIGN_ERROR);
    }
    skb->mark = p->tproxy_mark;
    count(CNT_OWN_TO_CONTROL);
    return bpf_redirect(p->own_ifindex, BPF_F_INGRESS);
}

/* -- Cached DNS answered here (dns_answer) ------------------------------------------------------ */

static __always_inline void dns_count(__u32 index)
{
    __u64 *v = dns_stats.lookup(&index);
    if (v)
        *v += 1;
}

/* The query is not one to answer here: to the DNS controller, as without dns_answers. */
static __always_inline int dns_hand_over(struct __sk_buff *skb, struct route_state *s, __u32 why)
{
    __u32 zero = 0;
    dns_count(why);
    struct params *p = params.lookup(&zero);
    if (!p)
        return TC_ACT_OK;
    return assign(skb, s, p, OUTBOUND_DNS);
}

/* The reply could not be finished once the packet was changed: dropped (the client asks again). */
static __always_inline int dns_failed(void)
{
    dns_count(DNS_ST_ERROR);
    return TC_ACT_SHOT;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)~sum;
}

/* dns_answer: count why the query goes to the controller, and send it there (one exit, so assign() is
 * inlined once). */
#define HAND_OVER(reason) do { why = (reason); goto over; } while (0)

/* A hijacked UDP query on an Ethernet LAN interface (act() tail-calls here): answered in place from
 * dns_answers and sent back out of the interface it came in on, when it is a plain query whose answer
 * the controller put there under the current epoch and that has not expired; else handed to the
 * controller, counted by reason. The reply is the one the controller would send from its cache
 * (wire.answer_from_template): the query's ID, RD bit and question as the client spelt it, the
 * entry's flags and sections, its TTLs counted down by the whole seconds since it was stored, and our
 * OPT record when the query had one. */
int dns_answer(struct __sk_buff *skb)
{
    __u32 zero = 0;
    __u32 why;
    struct route_state *s = scratch.lookup(&zero);
    if (!s)
        return TC_ACT_OK;
    struct dns_scratch *ds = dns_scratch.lookup(&zero);
    struct dns_conf *conf = dns_conf.lookup(&zero);
    if (!ds || !conf)
        HAND_OVER(DNS_ST_ERROR);
    __u8 v6 = s->ipversion == 6;
    struct iphdr ip = {};
    struct ipv6hdr ip6 = {};
    __u32 l4;
    if (!v6) {
        if (load(skb, ETH_HLEN, &ip, sizeof(ip)))
            HAND_OVER(DNS_ST_TRUNCATED);
        if (ip.ihl != 5 || ip.protocol != IPPROTO_UDP)
            HAND_OVER(DNS_ST_NOT_PLAIN);
        if (ETH_HLEN + (__u32)bpf_ntohs(ip.tot_len) > skb->len)
            HAND_OVER(DNS_ST_TRUNCATED);
        l4 = ETH_HLEN + sizeof(struct iphdr);
    } else {
        if (load(skb, ETH_HLEN, &ip6, sizeof(ip6)))
            HAND_OVER(DNS_ST_TRUNCATED);
        if (ip6.nexthdr != IPPROTO_UDP)
            HAND_OVER(DNS_ST_NOT_PLAIN);
        if (ETH_HLEN + sizeof(struct ipv6hdr) + (__u32)bpf_ntohs(ip6.payload_len) > skb->len)
            HAND_OVER(DNS_ST_TRUNCATED);
        l4 = ETH_HLEN + sizeof(struct ipv6hdr);
    }
    struct udphdr uh;
    if (load(skb, l4, &uh, sizeof(uh)))
        HAND_OVER(DNS_ST_TRUNCATED);
    __u32 ulen = bpf_ntohs(uh.len);
    if (ulen < sizeof(uh) + 12 || l4 + ulen > skb->len)
        HAND_OVER(DNS_ST_TRUNCATED);
    __u32 d = l4 + sizeof(uh);          /* the DNS message */
    __u32 dend = l4 + ulen;
    __u8 h[12];
    if (load(skb, d, h, sizeof(h)))
        HAND_OVER(DNS_ST_TRUNCATED);
    __u16 qflags = ((__u16)h[2] << 8) | h[3];
    /* QR, opcode and TC clear; one question, no answer or authority records, at most an OPT. */
    if ((qflags & 0xfa00) || h[4] || h[5] != 1 || h[6] || h[7] || h[8] || h[9] || h[10] || h[11] > 1)
        HAND_OVER(DNS_ST_NOT_PLAIN);

    /* The name: labels up to a root label, no compression, at most DNS_QNAME_MAX bytes. One pass per
     * label (a single path on to the next, so the verifier's work grows with the label count only). */
    __u32 q = d + 12;
    __u32 off = 0;
    __u32 nlen = 0;
    for (int hop = 0; hop < DNS_QNAME_MAX / 2; hop++) {
        if (off >= DNS_QNAME_MAX)
            break;
        __u8 b;
        if (bpf_skb_load_bytes(skb, q + off, &b, 1))
            break;
        if (b == 0) {
            nlen = off + 1;
            break;
        }
        if (b & 0xc0)
            break;
        off += (__u32)b + 1;
    }
    *(volatile __u32 *)&ds->nlen = nlen;
    nlen = *(volatile __u32 *)&ds->nlen;
    if (nlen == 0 || nlen > DNS_QNAME_MAX)
        HAND_OVER(DNS_ST_NAME);
    if (q + nlen + 4 > dend)
        HAND_OVER(DNS_ST_TRUNCATED);
    __u8 tc[4];
    if (bpf_skb_load_bytes(skb, q + nlen, tc, sizeof(tc)))
        HAND_OVER(DNS_ST_TRUNCATED);
    __u32 pos = q + nlen + 4;           /* just past the question */
    __u8 has_opt = h[11];
    if (has_opt) {
        /* Only an OPT we can answer as the controller does without reading it: version 0, no
         * extended rcode, DO and Z clear, no options (ECS, cookies: they would be lost). */
        __u8 o[11];
        if (pos + sizeof(o) > dend || bpf_skb_load_bytes(skb, pos, o, sizeof(o)))
            HAND_OVER(DNS_ST_EDNS);
        if (o[0] || o[1] || o[2] != 41 || o[5] || o[6] || o[7] || o[8] || o[9] || o[10])
            HAND_OVER(DNS_ST_EDNS);
        pos += sizeof(o);
    }
    if (pos != dend)
        HAND_OVER(DNS_ST_TRAILING);

    /* The key: the name lower-cased (as Python's bytes.lower(): length bytes are below 'A'), zero-padded. */
    __builtin_memset(ds->key.name, 0, DNS_QNAME_MAX);
    /* nlen is 1..DNS_QNAME_MAX (checked above); said again in a form the verifier keeps (the asm
     * stops clang from dropping a mask it knows changes nothing). */
    __u32 ln = nlen - 1;
    asm volatile("" : "+r"(ln));
    if (bpf_skb_load_bytes(skb, q, ds->key.name, (ln & (DNS_QNAME_MAX - 1)) + 1))
        HAND_OVER(DNS_ST_TRUNCATED);
    /* Eight bytes at a time: a byte's top bit in `upper` when it is 'A'..'Z' (a + b < 0x80 + 'A' - 1
     * < z + b: the heptets never carry), then its 0x20 bit set. */
    __u64 *w = (__u64 *)ds->key.name;
#pragma unroll
    for (int i = 0; i < DNS_QNAME_MAX / 8; i++) {
        __u64 x = w[i];
        __u64 low = x & 0x7f7f7f7f7f7f7f7fULL;
        __u64 ge_a = low + 0x3f3f3f3f3f3f3f3fULL;   /* top bit: byte >= 'A' (0x41) */
        __u64 gt_z = low + 0x2525252525252525ULL;   /* top bit: byte > 'Z' (0x5a) */
        __u64 upper = (ge_a ^ gt_z) & ~x & 0x8080808080808080ULL;
        w[i] = x | (upper >> 2);
    }
    ds->key.qtype = ((__u16)tc[0] << 8) | tc[1];
    ds->key.qclass = ((__u16)tc[2] << 8) | tc[3];
    struct dns_entry *e = dns_answers.lookup(&ds->key);
    if (!e)
        HAND_OVER(DNS_ST_MISS);
    __u64 now = bpf_ktime_get_ns();
    if (e->epoch != conf->epoch)
        HAND_OVER(DNS_ST_EPOCH);
    if (now >= e->expires_ns)
        HAND_OVER(DNS_ST_EXPIRED);
    __u32 rest_len = e->rest_len;
    __u32 n_ttls = e->n_ttls;
    __u32 newlen = 12 + nlen + 4 + rest_len + (has_opt ? 11 : 0);
    if (rest_len > DNS_REST_MAX || newlen > DNS_REPLY_MAX || n_ttls > DNS_MAX_TTLS)
        HAND_OVER(DNS_ST_TOO_BIG);
    __u32 elapsed = now > e->stored_ns ? (now - e->stored_ns) / 1000000000ULL : 0;

    /* The reply's sections in scratch: the entry's, with its TTLs counted down. */
    __builtin_memcpy(ds->rest, e->rest, DNS_REST_MAX);
#pragma unroll
    for (int i = 0; i < DNS_MAX_TTLS; i++) {
        if (i >= n_ttls)
            continue;   /* not break: clang unrolls this */
        __u32 t = e->ttls[i];
        __u32 toff = e->ttl_off[i];
        if (toff + 4 > rest_len)
            HAND_OVER(DNS_ST_TOO_BIG);
        t = t > elapsed ? t - elapsed : 0;
        toff &= DNS_REST_MAX - 1;
        if (toff > DNS_REST_MAX - 4)
            HAND_OVER(DNS_ST_TOO_BIG);
        ds->rest[toff] = t >> 24;
        ds->rest[toff + 1] = t >> 16;
        ds->rest[toff + 2] = t >> 8;
        ds->rest[toff + 3] = t;
    }
    /* The question as the client spelt it (0x20 case randomisation), zero-padded. */
    __builtin_memset(ds->question, 0, sizeof(ds->question));
    __u32 qn = nlen + 3;   /* 4..DNS_QNAME_MAX + 4 bytes, said as the verifier keeps it */
    asm volatile("" : "+r"(qn));
    if (bpf_skb_load_bytes(skb, q, ds->question, (qn & (2 * DNS_QNAME_MAX - 1)) + 1))
        HAND_OVER(DNS_ST_TRUNCATED);
    __u16 flags = e->flags | (qflags & 0x0100);
    __u16 arcount = e->arcount + has_opt;
    __u8 hdr[12] = {h[0], h[1], flags >> 8, flags & 0xff, 0, 1,
                    e->ancount >> 8, e->ancount & 0xff, e->nscount >> 8, e->nscount & 0xff,
                    arcount >> 8, arcount & 0xff};
    /* Our OPT record (wire.OPT_RR): root name, type 41, our UDP size 1232, no flags, no options; a
     * zero byte more for bpf_csum_diff's multiple of 4. On the stack: BCC keeps no read-only data. */
    __u8 opt[12] = {0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0, 0};

    /* The UDP checksum (IPv6 needs one; IPv4 gets one too), summed by parts: a part that starts at an
     * odd offset has its folded sum's bytes swapped (RFC 1071's byte-order independence). */
    __u32 udp_len = sizeof(uh) + newlen;
    __u64 sum = bpf_htons(IPPROTO_UDP) + bpf_htons(udp_len);
    sum += uh.source + uh.dest + bpf_htons(udp_len);
    sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)hdr, sizeof(hdr), 0);
    sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)ds->question, sizeof(ds->question), 0);
    __u16 part = ~csum_fold((__u32)bpf_csum_diff(0, 0, (__be32 *)ds->rest, DNS_REST_MAX, 0));
    sum += (nlen & 1) ? (__u16)((part >> 8) | (part << 8)) : part;
    if (has_opt) {
        part = ~csum_fold((__u32)bpf_csum_diff(0, 0, (__be32 *)opt, sizeof(opt), 0));
        sum += ((nlen + rest_len) & 1) ? (__u16)((part >> 8) | (part << 8)) : part;
    }

    /* From here the packet is the reply. */
    if (bpf_skb_change_tail(skb, d + newlen, 0))
        HAND_OVER(DNS_ST_ERROR);  /* the packet is unchanged: the controller answers it */
    if (bpf_skb_store_bytes(skb, d, hdr, sizeof(hdr), BPF_F_RECOMPUTE_CSUM))
        return dns_failed();
    __u32 rest = q + nlen + 4;
    __u32 rl = rest_len - 1;
    asm volatile("" : "+r"(rl));
    if (rest_len > 0 && bpf_skb_store_bytes(skb, rest, ds->rest, (rl & (DNS_REST_MAX - 1)) + 1, BPF_F_RECOMPUTE_CSUM))
        return dns_failed();
    if (has_opt && bpf_skb_store_bytes(skb, rest + rest_len, opt, 11, BPF_F_RECOMPUTE_CSUM))
        return dns_failed();

    /* Back the way it came: MACs, addresses and ports swapped, lengths and checksums made anew. */
    struct ethhdr eth;
    if (load(skb, 0, &eth, sizeof(eth)))
        return dns_failed();
    __u8 mac[6];
    __builtin_memcpy(mac, eth.h_dest, 6);
    __builtin_memcpy(eth.h_dest, eth.h_source, 6);
    __builtin_memcpy(eth.h_source, mac, 6);
    if (bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), BPF_F_RECOMPUTE_CSUM))
        return dns_failed();
    if (!v6) {
        __be32 a = ip.saddr;
        ip.saddr = ip.daddr;
        ip.daddr = a;
        ip.tot_len = bpf_htons(sizeof(struct iphdr) + udp_len);
        ip.ttl = 64;
        ip.check = 0;
        __u16 *w = (__u16 *)&ip;
        __u64 isum = 0;
#pragma unroll
        for (int i = 0; i < 10; i++)
            isum += w[i];
        ip.check = csum_fold(isum);
        if (bpf_skb_store_bytes(skb, ETH_HLEN, &ip, sizeof(ip), BPF_F_RECOMPUTE_CSUM))
            return dns_failed();
        sum += (ip.saddr & 0xffff) + (ip.saddr >> 16) + (ip.daddr & 0xffff) + (ip.daddr >> 16);
    } else {
        struct in6_addr a = ip6.saddr;
        ip6.saddr = ip6.daddr;
        ip6.daddr = a;
        ip6.payload_len = bpf_htons(udp_len);
        ip6.hop_limit = 64;
        if (bpf_skb_store_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6), BPF_F_RECOMPUTE_CSUM))
            return dns_failed();
        __u16 *w = (__u16 *)&ip6.saddr;
#pragma unroll
        for (int i = 0; i < 16; i++)
            sum += w[i];
    }
    __u16 check = csum_fold(sum);
    if (check == 0)
        check = 0xffff;
    __u16 port = uh.source;
    uh.source = uh.dest;
    uh.dest = port;
    uh.len = bpf_htons(udp_len);
    uh.check = check;
    if (bpf_skb_store_bytes(skb, l4, &uh, sizeof(uh), BPF_F_RECOMPUTE_CSUM))
        return dns_failed();
    dns_count(DNS_ST_ANSWERED);
    return bpf_redirect(skb->ifindex, 0);

over:
    return dns_hand_over(skb, s, why);
}
#undef HAND_OVER

/* The interface the router would send this flow out of, asked of the FIB once. */
static __always_inline __u32 wan_ifindex(struct __sk_buff *skb, struct route_state *s)
{
    if (s->wan_ifindex)
        return s->wan_ifindex;
    __builtin_memset(&s->fib, 0, sizeof(s->fib));
    if (s->ipversion == 4) {
        s->fib.family = AF_INET;
        __builtin_memcpy(&s->fib.ipv4_src, &s->key.sip[12], 4);
        __builtin_memcpy(&s->fib.ipv4_dst, &s->key.dip[12], 4);
    } else {
        s->fib.family = AF_INET6;
        __builtin_memcpy(s->fib.ipv6_src, s->key.sip, 16);
        __builtin_memcpy(s->fib.ipv6_dst, s->key.dip, 16);
    }
    s->fib.l4_protocol = s->key.l4proto;
    s->fib.sport = bpf_htons(s->key.sport);
    s->fib.dport = bpf_htons(s->key.dport);
    s->fib.tot_len = s->pkt_len;
    s->fib.ifindex = s->ifindex;
    long rc = bpf_fib_lookup(skb, &s->fib, sizeof(s->fib), 0);
    /* No neighbour yet still names the interface; anything else: no route out. */
    if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
        s->wan_ifindex = s->fib.ifindex;
    else
        s->wan_ifindex = 0xffffffff;
    return s->wan_ifindex;
}

static __always_inline int act(struct __sk_buff *skb, struct route_state *s, __u8 outbound, __u32 mark,
                               __u8 flags)
{
    if (outbound == OUTBOUND_DIRECT && !(flags & FLOW_HELD_TUPLE)) {
        if (mark)
            skb->mark = mark;
        return TC_ACT_OK;
    }
    if (outbound == OUTBOUND_BLOCK)
        return TC_ACT_SHOT;
    __u32 zero = 0;
    struct params *p = params.lookup(&zero);
    if (!p)
        return TC_ACT_OK;
    if (s->own)
        return own_redirect(skb, s, p, outbound);
    if (outbound == OUTBOUND_DNS && !s->l3 && s->key.l4proto == IPPROTO_UDP) {
        /* A LAN client's query over UDP on Ethernet: perhaps answered here (dns_answer). */
        struct dns_conf *dc = dns_conf.lookup(&zero);
        if (dc && dc->enabled)
            route_progs.call(skb, PROG_DNS);
    }
    return assign(skb, s, p, outbound);
}

/* Record a new flow's decision, count it, and carry it out. */
static __always_inline int decide(struct __sk_buff *skb, struct route_state *s, __u8 outbound,
                                  __u16 rule_index, __u32 mark, __u8 must)
{
    /* DNS is answered by the controller whatever the rule said, unless a
     * must_* rule matched or the rule blocks it (dae's hijack). */
    if (s->key.dport == DNS_PORT && !(must || s->must) && outbound != OUTBOUND_BLOCK)
        outbound = OUTBOUND_DNS;
    __u8 group_dead = 0;
    if (outbound >= OUTBOUND_FIRST_GROUP && outbound < OUTBOUND_FIRST_GROUP + MAX_GROUPS) {
        __u32 gk = (__u32)s->gen * MAX_GROUPS + (outbound - OUTBOUND_FIRST_GROUP);
        __u8 *gh = group_health.lookup(&gk);
        if (gh && (*gh & (s->ipversion == 4 ? GROUP_DEAD4 : GROUP_DEAD6))) {
            group_dead = 1;
            __u8 action = *gh & GROUP_ACTION_MASK;
            if (action == GROUP_DEAD_DIRECT)
                outbound = OUTBOUND_DIRECT;
            else if (action == GROUP_DEAD_DROP)
                outbound = OUTBOUND_BLOCK;
        }
    }
    __u64 now = bpf_ktime_get_ns();
    __u8 stale = 0;
    __u8 held = 0;
    if (outbound == OUTBOUND_DIRECT && !s->own && s->key.l4proto == IPPROTO_TCP &&
        (s->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN && !stalled(now)) {
        /* A relay of this 4-tuple ended here lately (the server closed first: TIME_WAIT). Forwarded,
         * the SYN would meet that socket in early demux and be dropped, for the minute TIME_WAIT
         * lasts: the control plane takes the connection instead (assign() retires the old socket). */
        struct bpf_sock *held_sk = flow_socket(skb, s);
        if (held_sk) {
            bpf_sk_release(held_sk);
            /* Only a flow the router forwards: one to the router itself (its web UI, ssh) meets its own
             * TIME_WAIT socket, which the stack retires on a new SYN as it should. The FIB (main rules,
             * no mark) routing it out says so; where it does not (the router's own address, or a
             * destination only the flow's mark routes), the tuple's last flow having gone through the
             * control plane says the socket is a relay's. */
            struct flow *prev = routing_tuples.lookup(&s->key);
            held = wan_ifindex(skb, s) != 0xffffffff ||
                   (prev && (prev->outbound >= OUTBOUND_FIRST_GROUP || (prev->flags & FLOW_HELD_TUPLE)));
        }
    }
    if (outbound >= OUTBOUND_FIRST_GROUP && stalled(now)) {
        /* The daemon is stopped or hung: its listeners are still there, so the
         * flow would wait on it for ever. As if it were gone: pass the flow
         * direct (DNS to the server the client asked), or drop it. */
        __u32 zero = 0;
        struct params *p = params.lookup(&zero);
        stale = 1;
        outbound = (p && !p->fail_open) ? OUTBOUND_BLOCK : OUTBOUND_DIRECT;
        mark = 0;
        count(CNT_STALLED);
    }
    struct flow f = {};
    f.first_seen_ns = now;
    f.last_seen_ns = now;
    f.packets = 1;
    f.bytes = s->pkt_len;
    f.ifindex = s->own ? s->wan_ifindex : s->ifindex;
    f.mark = mark;
    f.rule_index = rule_index;
    f.outbound = outbound;
    f.generation = s->gen;
    f.ipversion = s->ipversion;
    __builtin_memcpy(f.mac, s->mac, 6);
    if (must || s->must)
        f.flags |= FLOW_MUST;
    if (outbound >= OUTBOUND_FIRST_GROUP)
        f.flags |= FLOW_ASSIGNED;
    if (held) {
        f.flags |= FLOW_ASSIGNED | FLOW_HELD_TUPLE;
        count(CNT_DIRECT_HELD);
    }
    if (group_dead) {
        f.flags |= FLOW_GROUP_DEAD;
        count(CNT_GROUP_DEAD);
    }
    if (stale)
        f.flags |= FLOW_FAIL_OPEN;
    if (s->own) {
        f.flags |= FLOW_OWN;
        f.pid = s->pid;
        __builtin_memcpy(f.comm, s->comm, PNAME_LEN);
    }
    routing_tuples.update(&s->key, &f);
    if ((outbound >= OUTBOUND_FIRST_GROUP || held) && s->key.l4proto == IPPROTO_TCP) {
        /* Remembered where no churn can evict it (see orphan()). */
        if (relayed_tuples.update(&s->key, &now))
            count(CNT_RELAYED_FULL);
    }

    __u32 ri = rule_index == RULE_FALLBACK ? MAX_RULES : rule_index;
    if (ri > MAX_RULES)
        ri = MAX_RULES;
    __u32 si = (__u32)s->gen * (MAX_RULES + 1) + ri;
    struct rule_stat *rs = rule_stats.lookup(&si);
    if (rs) {
        rs->hits += 1;
        rs->last_hit_ns = now;
    }
    count(CNT_NEW_FLOWS);
    if (outbound == OUTBOUND_DIRECT)
        count(CNT_DECIDED_DIRECT);
    else if (outbound == OUTBOUND_BLOCK)
        count(CNT_DECIDED_BLOCK);
    else if (outbound == OUTBOUND_USERSPACE)
        count(CNT_UNDECIDED);
    else if (outbound == OUTBOUND_DNS)
        count(CNT_DNS_HIJACKED);
    else
        count(CNT_DECIDED_GROUP);
    return act(skb, s, outbound, mark, f.flags);
}

/* route_decide: decide() for every path (walk, classifier, fallback), so it is compiled once. */
int route_decide(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct route_state *s = scratch.lookup(&zero);
    if (!s)
        return TC_ACT_OK;
    return decide(skb, s, s->d_outbound, s->d_rule, s->d_mark, s->d_must);
}

/* Decide by s->d_* (route_decide). */
static __always_inline int to_decide(struct __sk_buff *skb, struct route_state *s)
{
    route_progs.call(skb, PROG_DECIDE);
    /* Out of tail calls (KernelProgram refuses more match sets than fit the 33 a packet may make): passed. */
    count(CNT_CHUNK_LIMIT);
    return TC_ACT_OK;
}

static __always_inline int decide_rule(struct __sk_buff *skb, struct route_state *s, __u8 outbound,
                                       __u16 rule_index, __u32 mark, __u8 must)
{
    s->d_outbound = outbound;
    s->d_rule = rule_index;
    s->d_mark = mark;
    s->d_must = must;
    return to_decide(skb, s);
}

static __always_inline int decide_fallback(struct __sk_buff *skb, struct route_state *s)
{
    __u32 g = s->gen;
    struct gen_params *gp = gen_params.lookup(&g);
    if (!gp)
        return TC_ACT_OK;
    return decide_rule(skb, s, gp->fallback_outbound, RULE_FALLBACK, gp->fallback_mark, 0);
}

static __always_inline __u8 mac_equal(const __u8 *a, const __u8 *b)
{
    return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
           a[5] == b[5];
}

static __always_inline __u8 names_equal(const char *a, const char *b)
{
#pragma unroll
    for (int i = 0; i < PNAME_LEN; i++) {
        if (a[i] != b[i])
            return 0;
        if (!a[i])
            return 1;
    }
    return 1;
}

/* Does one value of a function match this packet? */
static __always_inline __u8 match_one(struct __sk_buff *skb, struct route_state *s, struct match_set *m)
{
    switch (m->type) {
    case MATCH_DIP:
    case MATCH_SIP:
        s->ipk.prefixlen = 32 + 128;
        /* Each family has its own half of a set: a v6 prefix never covers v4-mapped keys. */
        s->ipk.set_id = (m->ip_set << 1) | (s->ipversion == 6 ? 1 : 0);
        if (m->type == MATCH_DIP)
            __builtin_memcpy(s->ipk.addr, s->key.dip, 16);
        else
            __builtin_memcpy(s->ipk.addr, s->key.sip, 16);
        return ip_sets.lookup(&s->ipk) != NULL;
    case MATCH_DPORT:
        return s->key.dport >= m->port_lo && s->key.dport <= m->port_hi;
    case MATCH_SPORT:
        return s->key.sport >= m->port_lo && s->key.sport <= m->port_hi;
    case MATCH_L4PROTO:
        if (s->key.l4proto == IPPROTO_TCP)
            return (m->mask & L4_TCP) != 0;
        return (m->mask & L4_UDP) != 0;
    case MATCH_IPVERSION:
        if (s->ipversion == 4)
            return (m->mask & IPV_4) != 0;
        return (m->mask & IPV_6) != 0;
    case MATCH_MAC:
        return mac_equal(m->mac, s->mac);
    case MATCH_DSCP:
        return s->dscp == m->dscp;
    case MATCH_IFACE_LAN:
        return s->ifindex == m->ifindex;
    case MATCH_IFACE_WAN:
        return wan_ifindex(skb, s) == m->ifindex;
    case MATCH_DOMAIN: {
        struct domain_entry *d = domain_routing.lookup((struct ip_key *)s->key.dip);
        if (!d) {
            s->undecided = !s->domain_no_match;
            return 0;
        }
        __u32 bit = m->domain_bit & (MAX_DOMAIN_FUNCTIONS - 1);
        return (d->bits[(s->gen & 1) * DOMAIN_WORDS + ((bit >> 6) & (DOMAIN_WORDS - 1))] >> (bit & 63)) & 1;
    }
    case MATCH_PNAME:
        return s->own && s->comm[0] && names_equal(s->comm, m->pname);
    case MATCH_NEVER:
        return 0;
    }
    return 0;
}

int route_chunk(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct route_state *s = scratch.lookup(&zero);
    if (!s)
        return TC_ACT_OK;

    __u8 decided = 0, outbound = 0, must = 0;
    __u16 rule_index = 0;
    __u32 mark = 0;
    for (int k = 0; k < ROUTE_CHUNK; k++) {
        __u32 idx = s->i;
        if (idx >= s->n || idx >= MAX_MATCH_SETS)
            return decide_fallback(skb, s);
        __u32 mkey = s->base + idx;
        struct match_set *m = match_sets.lookup(&mkey);
        if (!m)
            return decide_fallback(skb, s);
        s->i = idx + 1;
        __u8 hit = 0;
        if (!s->good)
            hit = match_one(skb, s, m);
        if (s->undecided) {
            /* The rule needs the name of an address the kernel has no name for. */
            decided = 1;
            outbound = OUTBOUND_USERSPACE;
            rule_index = m->rule_index;
            break;
        }
        if (!(m->flags & MS_FUNC_END)) {
            if (hit) {
                /* One value matched: the function is true, skip its other values. */
                s->good = 1;
                s->i = m->func_end;
            }
            continue;
        }
        __u8 ok = (s->good | hit) ^ (m->negate & 1);
        s->good = 0;
        if (!ok) {
            s->i = m->next;  /* this rule failed: on to the next one */
            continue;
        }
        if (m->flags & MS_RULE_END) {
            if (m->outbound == OUTBOUND_MUST_RULES) {
                s->must = 1;  /* must_rules: note it and go on with the next rule */
                continue;
            }
            decided = 1;
            outbound = m->outbound;
            rule_index = m->rule_index;
            mark = m->mark;
            must = m->must;
            break;
        }
    }
    if (decided)
        return decide_rule(skb, s, outbound, rule_index, mark, must);
    route_progs.call(skb, PROG_CHUNK);
    /* Out of tail calls: more match sets than the build supports. */
    count(CNT_CHUNK_LIMIT);
    return decide_fallback(skb, s);
}

/* -- the classifier ------------------------------------------------------------------------ */

static __always_inline __u32 keyed_class(struct route_state *s, __u8 kind, __u32 dflt)
{
    s->ck.kind = kind;
    __u32 *c = cls_keyed.lookup(&s->ck);
    return c ? *c : dflt;
}

static __always_inline __u32 ip_class(struct route_state *s, __u8 sip, __u32 dflt)
{
    s->ipk.prefixlen = 32 + 128;
    s->ipk.set_id = ((__u32)s->gen << 2) | (sip << 1) | (s->ipversion == 6 ? 1 : 0);
    if (sip)
        __builtin_memcpy(s->ipk.addr, s->key.sip, 16);
    else
        __builtin_memcpy(s->ipk.addr, s->key.dip, 16);
    __u32 *c = cls_ip.lookup(&s->ipk);
    return c ? *c : dflt;
}

static __always_inline __u32 array_class(void *map_lookup_result)
{
    return map_lookup_result ? *(__u32 *)map_lookup_result : 0;
}

/* The classifier of the generation deciding the packet (NULL: none). */
static __always_inline struct cls_gen *classifier(struct route_state *s)
{
    __u32 g = s->gen & 1;
    return cls_gens.lookup(&g);
}

/* Each field's class of the packet, then route_match. */
int route_classify(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct route_state *s = scratch.lookup(&zero);
    if (!s)
        return TC_ACT_OK;
    __u32 g = s->gen & 1;
    struct cls_gen *cg = classifier(s);
    if (!cg)
        return decide_fallback(skb, s);
    /* A field no rule uses has class 0 (bitmap 0: every rule); its lookup is skipped. */
    __u32 used = cg->used, k;
    __builtin_memset(s->cls, 0, sizeof(s->cls));
    if (used & (1 << CLS_F_DPORT)) {
        k = (g * 2) * CLS_PORTS + s->key.dport;
        s->cls[CLS_F_DPORT] = array_class(cls_ports.lookup(&k));
    }
    if (used & (1 << CLS_F_SPORT)) {
        k = (g * 2 + 1) * CLS_PORTS + s->key.sport;
        s->cls[CLS_F_SPORT] = array_class(cls_ports.lookup(&k));
    }
    if (used & (1 << CLS_F_DIP))
        s->cls[CLS_F_DIP] = ip_class(s, 0, cg->dflt[CLS_F_DIP]);
    if (used & (1 << CLS_F_SIP))
        s->cls[CLS_F_SIP] = ip_class(s, 1, cg->dflt[CLS_F_SIP]);
    /* Always: its class also clears the positions past the last rule and the rules that never match. */
    k = g * CLS_MISC + ((s->key.l4proto == IPPROTO_TCP ? 0 : 1) << 7) + ((s->ipversion == 6 ? 1 : 0) << 6) +
        (s->dscp & 63);
    s->cls[CLS_F_MISC] = array_class(cls_misc.lookup(&k));
    if (used & ((1 << CLS_F_MAC) | (1 << CLS_F_IFACE) | (1 << CLS_F_PNAME))) {
        __builtin_memset(&s->ck, 0, sizeof(s->ck));
        s->ck.gen = g;
    }
    if (used & (1 << CLS_F_MAC)) {
        __builtin_memcpy(s->ck.name, s->mac, 6);
        s->cls[CLS_F_MAC] = keyed_class(s, CLS_KEY_MAC, cg->dflt[CLS_F_MAC]);
        __builtin_memset(s->ck.name, 0, 6);
    }
    if (used & (1 << CLS_F_IFACE)) {
        s->ck.ifindex = s->ifindex;
        __u32 lan = keyed_class(s, CLS_KEY_LAN, 0), wan = 0;
        if (cg->has_wan) {
            s->ck.ifindex = wan_ifindex(skb, s);
            wan = keyed_class(s, CLS_KEY_WAN, 0);
        }
        k = (g * CLS_IFACES + (lan & (CLS_IFACES - 1))) * CLS_IFACES + (wan & (CLS_IFACES - 1));
        s->cls[CLS_F_IFACE] = array_class(cls_ifaces.lookup(&k));
    }
    if (used & (1 << CLS_F_PNAME)) {
        s->cls[CLS_F_PNAME] = cg->dflt[CLS_F_PNAME];
        if (s->own && s->comm[0]) {
            s->ck.ifindex = 0;
            __builtin_memcpy(s->ck.name, s->comm, PNAME_LEN);
            s->cls[CLS_F_PNAME] = keyed_class(s, CLS_KEY_PNAME, cg->dflt[CLS_F_PNAME]);
        }
    }
    s->cls_w = 0;
    s->cls_acc = 0;
    s->cls_runs = 0;
    s->cls_next = 0;
    s->dom_state = 0;
    route_progs.call(skb, PROG_MATCH);
    return decide_fallback(skb, s);
}

/* x, as something clang cannot reason about: keeps a branch-free expression from being turned back into
 * a compare and branch (each branch doubles what the verifier explores). */
static __always_inline __u64 opaque(__u64 x)
{
    asm volatile("" : "+r"(x));
    return x;
}

/* The position of a word's only set bit (a branch-free popcount of the bits below it). */
static __always_inline __u32 bit_index(__u64 low)
{
    __u64 x = low - 1;
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0fULL;
    return (x * 0x0101010101010101ULL) >> 56;
}

/* Whether every domain() function of a rule holds for the name's bits (s->dbits). */
static __always_inline __u8 domains_hold(struct route_state *s, struct cls_rule *r)
{
    __u32 f = r->dom_first & (MAX_DOMAIN_FUNCTIONS - 1);
    __u32 c = r->dom_count & 63;
    __u32 off = f & 63, wi = f >> 6;
    __u64 v = s->dbits[wi & (DOMAIN_WORDS - 1)] >> off;
    if (off && off + c > 64 && wi + 1 < DOMAIN_WORDS)
        v |= s->dbits[(wi + 1) & (DOMAIN_WORDS - 1)] << ((64 - off) & 63);
    __u64 mask = c >= 64 ? ~0ULL : (1ULL << c) - 1;
    return ((v ^ r->dom_negate) & mask) == mask;
}

/* The first rule set in every field's class bitmap (AND, word by word), and domain() and must_rules
 * applied to each candidate in turn. CLS_STEPS words or candidates per run; the state is in s, so a
 * longer search goes on in a tail call to itself. */
int route_match(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct route_state *s = scratch.lookup(&zero);
    if (!s)
        return TC_ACT_OK;
    __u32 g = s->gen & 1;
    struct cls_gen *cg = classifier(s);
    if (!cg)
        return decide_fallback(skb, s);
    __u32 nw = cg->n_words;
    struct cls_block *b[CLS_FIELDS];
    __u32 base[CLS_FIELDS];
    __u32 ew[CLS_FIELDS];
    __u64 eb[CLS_FIELDS];
#pragma unroll
    for (int f = 0; f < CLS_FIELDS; f++) {
        __u32 c = s->cls[f];
        __u32 off = c >> CLS_EXTRA_BITS;
        __u32 bk = g * CLS_BLOCKS + ((off >> 6) & (CLS_BLOCKS - 1));
        b[f] = cls_blocks.lookup(&bk);
        if (!b[f])
            return decide_fallback(skb, s);
        base[f] = off & 63;
        /* Branch-free (a branch per field would multiply the verifier's states): with no extra bit,
         * ex - 1 wraps and its word is past any bitmap. */
        __u32 ex = (c & ((1 << CLS_EXTRA_BITS) - 1)) - 1;
        ew[f] = ex >> 6;
        eb[f] = 1ULL << (ex & 63);
    }
    for (int k = 0; k < CLS_STEPS; k++) {
        __u64 acc = s->cls_acc;
        if (!acc) {
            __u32 w = s->cls_w;
            if (w >= nw || w >= CLS_WORDS)
                return decide_fallback(skb, s);
            acc = ~0ULL;
#pragma unroll
            for (int f = 0; f < CLS_FIELDS; f++) {
                /* The extra bit when it is in word w, without a branch: x | -x has its top bit set unless x is 0. */
                __u64 x = ew[f] ^ w;
                __u64 in_word = (opaque(x | -x) >> 63) ^ 1;
                acc &= b[f]->w[(base[f] + w) & (CLS_WORDS - 1)] | (eb[f] & -in_word);
            }
            s->cls_w = w + 1;
            s->cls_acc = acc;
            continue;
        }
        __u64 low = acc & -acc;
        s->cls_acc = acc ^ low;
        __u32 pos = ((s->cls_w - 1) << 6) | bit_index(low);
        __u32 rk = g * MAX_RULES + (pos & (MAX_RULES - 1));
        struct cls_rule *r = cls_rules.lookup(&rk);
        if (!r)
            continue;
        s->cls_next = pos + 1;
        if (r->dom_count) {
            if (!s->dom_state) {
                struct domain_entry *d = domain_routing.lookup((struct ip_key *)s->key.dip);
                /* No name known and domain_no_match: as a name that matches no domain(). */
                s->dom_state = d || s->domain_no_match ? 2 : 1;
#pragma unroll
                for (int i = 0; i < DOMAIN_WORDS; i++)
                    s->dbits[i] = d ? d->bits[g * DOMAIN_WORDS + i] : 0;
            }
            /* The rule needs the name of an address the kernel has no name for. */
            if (s->dom_state == 1)
                return decide_rule(skb, s, OUTBOUND_USERSPACE, r->rule_index, 0, 0);
            if (!domains_hold(s, r))
                continue;
        }
        if (r->flags & CLS_RULE_MUST_RULES) {
            s->must = 1;  /* must_rules: note it and go on with the next rule */
            continue;
        }
        return decide_rule(skb, s, r->outbound, r->rule_index, r->mark, r->must);
    }
    if (++s->cls_runs < CLS_MAX_RUNS)
        route_progs.call(skb, PROG_MATCH);
    /* Many candidates turned down: the walk goes on from the next rule, in what tail calls remain. */
    if (s->cls_next >= cg->n_rules || s->cls_next >= MAX_RULES)
        return decide_fallback(skb, s);
    __u32 nk = g * MAX_RULES + (s->cls_next & (MAX_RULES - 1));
    struct cls_rule *next = cls_rules.lookup(&nk);
    if (!next)
        return decide_fallback(skb, s);
    s->i = next->ms_first;
    s->good = 0;
    s->undecided = 0;
    route_progs.call(skb, PROG_CHUNK);
    count(CNT_CHUNK_LIMIT);
    return decide_fallback(skb, s);
}

/* The packet's flow, when its decision still holds: a TCP flow's until a new
 * SYN, a UDP flow's until it idles UDP_REDECIDE_NS or the daemon's heartbeat
 * changes between stale and fresh. Counts the packet on it. */
static __always_inline struct flow *known_flow(struct __sk_buff *skb, struct route_state *s, __u64 now,
                                               __u8 is_tcp, __u8 is_syn)
{
    struct flow *f = routing_tuples.lookup(&s->key);
    if (f && !is_tcp) {
        /* UDP can change path between datagrams: while the daemon is stalled a
         * flow handed to it goes direct, and one passed for that reason goes
         * back to it once its heartbeat is fresh. TCP keeps its path. */
        __u8 st = stalled(now);
        if ((f->flags & FLOW_FAIL_OPEN) ? !st : (st && f->outbound >= OUTBOUND_FIRST_GROUP))
            return NULL;
    }
    /* A new SYN on a known tuple is a new connection: decide it again. */
    if (!f || is_syn || (!is_tcp && now - f->last_seen_ns >= UDP_REDECIDE_NS))
        return NULL;
    __sync_fetch_and_add(&f->packets, 1);
    __sync_fetch_and_add(&f->bytes, skb->len);
    f->last_seen_ns = now;
    if (s->tcp_flags & TCP_FLAG_FIN)
        f->flags |= FLOW_TCP_FIN;
    if (s->tcp_flags & TCP_FLAG_RST)
        f->flags |= FLOW_TCP_RST;
    return f;
}

/* Decide a new flow: classify it (route_classify) or walk the active generation's rules (route_chunk). */
static __always_inline int route_new(struct __sk_buff *skb, struct route_state *s)
{
    __u32 zero = 0;
    struct params *p = params.lookup(&zero);
    if (!p)
        return TC_ACT_OK;
    __u32 gen = p->active_gen & 1;
    struct gen_params *gp = gen_params.lookup(&gen);
    if (!gp)
        return TC_ACT_OK;
    s->gen = gen;
    s->base = gen * MAX_MATCH_SETS;
    s->n = gp->n_match_sets;
    s->i = 0;
    s->good = 0;
    s->must = 0;
    s->undecided = 0;
    s->domain_no_match = p->domain_no_match;
    struct cls_gen *cg = cls_gens.lookup(&gen);
    if (cg && cg->ok && !p->walk)
        route_progs.call(skb, PROG_CLASSIFY);
    route_progs.call(skb, PROG_CHUNK);
    /* route_chunk is not installed (never, once loaded): the fallback, through route_decide. */
    count(CNT_CHUNK_LIMIT);
    return decide_fallback(skb, s);
}

static __always_inline int lan_in(struct __sk_buff *skb, int l3)
{
    __u32 zero = 0;
    struct route_state *s = scratch.lookup(&zero);
    if (!s)
        return TC_ACT_OK;
    count(CNT_PACKETS);
    if_count(skb->ifindex, skb->len, 0);
    if (parse(skb, s, 0, l3) != PARSED)
        return TC_ACT_OK;
    s->ifindex = skb->ifindex;
    s->pkt_len = skb->len;
    s->own = 0;
    s->wan_ifindex = 0;
    s->pid = 0;
    s->comm[0] = 0;

    __u8 is_tcp = s->key.l4proto == IPPROTO_TCP;
    __u8 is_syn = is_tcp && (s->tcp_flags & TCP_FLAG_SYN) && !(s->tcp_flags & TCP_FLAG_ACK);
    struct flow *f = known_flow(skb, s, bpf_ktime_get_ns(), is_tcp, is_syn);
    if (f)
        return act(skb, s, f->outbound, f->mark, f->flags);
    if (is_tcp && !is_syn)
        return orphan(skb, s);  /* forgotten by the LRU, or older than daetui */
    return route_new(skb, s);
}

int lan_ingress(struct __sk_buff *skb)
{
    return lan_in(skb, 0);
}

/* lan_ingress for an interface without Ethernet header (WireGuard, tun). */
int lan_ingress_l3(struct __sk_buff *skb)
{
    return lan_in(skb, 1);
}

static __always_inline int lan_out(struct __sk_buff *skb, int l3)
{
    /* On the stack: the per-CPU scratch is lan_ingress's, mid-walk across tail calls. */
    struct route_state pkt = {};
    struct tuple_key key = {};

    count(CNT_EGRESS_PACKETS);
    if_count(skb->ifindex, skb->len, 1);
    if (parse(skb, &pkt, 1, l3) != PARSED)
        return TC_ACT_OK;
    /* A reply: the client is the destination. */
    __builtin_memcpy(key.sip, pkt.key.dip, 16);
    __builtin_memcpy(key.dip, pkt.key.sip, 16);
    key.sport = pkt.key.dport;
    key.dport = pkt.key.sport;
    key.l4proto = pkt.key.l4proto;
    struct flow *f = routing_tuples.lookup(&key);
    if (f) {
        __sync_fetch_and_add(&f->rx_packets, 1);
        __sync_fetch_and_add(&f->rx_bytes, skb->len);
        f->last_seen_ns = bpf_ktime_get_ns();
        if (pkt.tcp_flags & TCP_FLAG_FIN)
            f->flags |= FLOW_TCP_FIN;
        if (pkt.tcp_flags & TCP_FLAG_RST)
            f->flags |= FLOW_TCP_RST;
    }
    return TC_ACT_OK;
}

int lan_egress(struct __sk_buff *skb)
{
    return lan_out(skb, 0);
}

int lan_egress_l3(struct __sk_buff *skb)
{
    return lan_out(skb, 1);
}

/* Is the destination of this link only: a broadcast or multicast frame or
 * address, or a link-local one (IPv4 169.254/16, IPv6 fe80::/10)? */
static __always_inline __u8 link_scoped(struct route_state *s)
{
    const __u8 *d = s->key.dip;
    if (!s->l3 && (s->mac[0] & 1))
        return 1;
    if (s->ipversion == 4)
        return d[12] >= 224 || (d[12] == 169 && d[13] == 254);
    return d[0] == 0xff || (d[0] == 0xfe && (d[1] & 0xc0) == 0x80);
}

/* The router's own packets leaving by a WAN interface. A packet with no
 * socket is forwarded (a LAN client's, decided by lan_ingress) and passes;
 * one from daetui's own sockets (so_mark_from_dae, or its process as the
 * cgroup hooks saw it) or with a listed mark passes, or daetui would catch
 * its own dials. The rest is routed like a LAN
 * flow: direct passes in the kernel, block drops, a group's or DNS goes to the
 * control plane through daetui0 (own_redirect). */
static __always_inline int wan_out(struct __sk_buff *skb, int l3)
{
    __u32 zero = 0;
    if (!skb->sk)
        return TC_ACT_OK;
    struct params *p = params.lookup(&zero);
    if (!p)
        return TC_ACT_OK;
    __u32 mark = skb->mark;
    if (mark && ((p->so_mark && (mark & p->so_mark) == p->so_mark) || bypass_marks.lookup(&mark))) {
        count(CNT_OWN_BYPASS);
        return TC_ACT_OK;
    }
    struct route_state *s = scratch.lookup(&zero);
    if (!s)
        return TC_ACT_OK;
    count(CNT_OWN_PACKETS);
    if (parse(skb, s, 1, l3) != PARSED)
        return TC_ACT_OK;
    s->own = 1;
    s->ifindex = 0;
    s->wan_ifindex = skb->ifindex;
    s->pkt_len = skb->len;
    if (link_scoped(s)) {
        /* Broadcast, multicast, link-local: for this link only, never anyone's to proxy. */
        count(CNT_NON_UNICAST);
        return TC_ACT_OK;
    }
    if (s->key.l4proto == IPPROTO_UDP && (s->key.dport == 67 || s->key.sport == 68 || s->key.dport == 547 ||
                                          s->key.sport == 546)) {
        /* DHCP and DHCPv6 (a lease renewed by unicast too): the WAN's own address depends on it. */
        count(CNT_OWN_BYPASS);
        return TC_ACT_OK;
    }

    __u8 is_tcp = s->key.l4proto == IPPROTO_TCP;
    __u8 is_syn = is_tcp && (s->tcp_flags & TCP_FLAG_SYN) && !(s->tcp_flags & TCP_FLAG_ACK);
    struct flow *f = known_flow(skb, s, bpf_ktime_get_ns(), is_tcp, is_syn);
    if (f)
        return act(skb, s, f->outbound, f->mark, f->flags);
    if (is_tcp && !is_syn) {
        /* A relayed flow the LRU forgot still goes to its relay (own_ingress
         * finds the socket); anything else (a connection older than daetui, a
         * server's answer) passes. */
        if (relayed_tuples.lookup(&s->key))
            return own_redirect(skb, s, p, OUTBOUND_FIRST_GROUP);
        count(CNT_UNTRACKED_TCP);
        return TC_ACT_OK;
    }
    __u64 cookie = bpf_get_socket_cookie(skb);
    struct sock_owner *o = sock_owner.lookup(&cookie);
    if (o && (o->pid == p->own_tgid || own_tgids.lookup(&o->pid))) {
        /* daetui's own socket without a mark (so_mark_from_dae = 0, as dae's default). */
        count(CNT_OWN_BYPASS);
        return TC_ACT_OK;
    }
    if (!is_tcp) {
        /* A UDP server answering (a DNS server for the WAN, a user-space VPN):
         * the socket heard from this peer first, so this is a reply. */
        struct answered_key ak = {};
        ak.cookie = cookie;
        __builtin_memcpy(ak.addr, s->key.dip, 16);
        ak.port = s->key.dport;
        if (answered.lookup(&ak)) {
            count(CNT_OWN_SERVER);
            return TC_ACT_OK;
        }
    }
    if (o) {
        s->pid = o->pid;
        __builtin_memcpy(s->comm, o->comm, PNAME_LEN);
    } else {
        s->pid = 0;
        s->comm[0] = 0;
    }
    return route_new(skb, s);
}

int wan_egress(struct __sk_buff *skb)
{
    return wan_out(skb, 0);
}

int wan_egress_l3(struct __sk_buff *skb)
{
    return wan_out(skb, 1);
}

/* The ingress of daetui0, where wan_egress redirects the router's own packets
 * for the control plane: hand each to its flow's socket or listener. */
int own_ingress(struct __sk_buff *skb)
{
    __u32 zero = 0;
    struct route_state *s = scratch.lookup(&zero);
    if (!s)
        return TC_ACT_OK;
    if (parse(skb, s, 1, 0) != PARSED)
        return TC_ACT_OK;
    struct params *p = params.lookup(&zero);
    if (!p)
        return TC_ACT_OK;
    s->own = 0;
    struct flow *f = routing_tuples.lookup(&s->key);
    if (f && f->outbound >= OUTBOUND_FIRST_GROUP)
        return assign(skb, s, p, f->outbound);
    if (s->key.l4proto == IPPROTO_TCP && relayed_tuples.lookup(&s->key))
        return orphan(skb, s);
    if (skb->mark == p->tproxy_mark) {
        /* Redirected here for a flow that is gone: routed on, it would meet no socket. */
        count(CNT_OWN_LOST);
        return TC_ACT_SHOT;
    }
    return TC_ACT_OK;
}

/* cgroup socket hooks: who owns each local socket, for pname() and the console.
 * connect and sendmsg run for every datagram of an unconnected UDP socket:
 * the entry is written only when the process using the socket changed. */
static __always_inline void own_socket(__u64 cookie)
{
    __u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct sock_owner *old = sock_owner.lookup(&cookie);
    if (old && old->pid == pid)
        return;
    struct sock_owner o = {};
    o.pid = pid;
    bpf_get_current_comm(o.comm, sizeof(o.comm));
    sock_owner.update(&cookie, &o);
}

int own_sock_create(struct bpf_sock *ctx)
{
    own_socket(bpf_get_socket_cookie(ctx));
    return 1;
}

int own_sock_release(struct bpf_sock *ctx)
{
    __u64 cookie = bpf_get_socket_cookie(ctx);
    sock_owner.delete(&cookie);
    return 1;
}

/* connect and sendmsg: the process using the socket now (it may have been passed on). */
int own_connect4(struct bpf_sock_addr *ctx) { own_socket(bpf_get_socket_cookie(ctx)); return 1; }
int own_connect6(struct bpf_sock_addr *ctx) { own_socket(bpf_get_socket_cookie(ctx)); return 1; }
int own_sendmsg4(struct bpf_sock_addr *ctx) { own_socket(bpf_get_socket_cookie(ctx)); return 1; }
int own_sendmsg6(struct bpf_sock_addr *ctx) { own_socket(bpf_get_socket_cookie(ctx)); return 1; }

/* recvmsg on an unconnected UDP socket: it heard from this peer (see wan_out).
 * Runs per datagram: a peer already noted is not written again. */
static __always_inline int heard_from(struct bpf_sock_addr *ctx, struct answered_key *ak)
{
    ak->cookie = bpf_get_socket_cookie(ctx);
    ak->port = bpf_ntohs((__u16)ctx->user_port);
    if (!answered.lookup(ak)) {
        __u8 one = 1;
        answered.update(ak, &one);
    }
    return 1;
}

int own_recvmsg4(struct bpf_sock_addr *ctx)
{
    struct answered_key ak = {};
    v4_mapped(ak.addr, ctx->user_ip4);
    return heard_from(ctx, &ak);
}

int own_recvmsg6(struct bpf_sock_addr *ctx)
{
    struct answered_key ak = {};
    __u32 a[4] = {ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]};
    __builtin_memcpy(ak.addr, a, 16);
    return heard_from(ctx, &ak);
}

/* The kernel's own listener lookup, in this namespace (BPF_SK_LOOKUP). Only
 * reached by packets policy routing made local: for a TCP flow the kernel
 * decided to hand to the control plane, answer with daetui's listener. */
int tproxy_lookup(struct bpf_sk_lookup *ctx)
{
    struct tuple_key key = {};
    if (ctx->protocol != IPPROTO_TCP)
        return SK_PASS;
    if (ctx->family == AF_INET) {
        v4_mapped(key.sip, ctx->remote_ip4);
        v4_mapped(key.dip, ctx->local_ip4);
    } else {
        __builtin_memcpy(key.sip, ctx->remote_ip6, 16);
        __builtin_memcpy(key.dip, ctx->local_ip6, 16);
    }
    key.sport = bpf_ntohs(ctx->remote_port);
    key.dport = ctx->local_port;
    key.l4proto = IPPROTO_TCP;
    struct flow *f = routing_tuples.lookup(&key);
    if (!f || (f->outbound < OUTBOUND_FIRST_GROUP && !(f->flags & FLOW_HELD_TUPLE)))
        return SK_PASS;
    __u32 zero = 0;
    struct bpf_sock *sk = listener_for(&key, ctx->family != AF_INET, f->outbound == OUTBOUND_DNS,
                                       params.lookup(&zero));
    if (!sk)
        return SK_PASS;
    bpf_sk_assign(ctx, sk, 0);
    bpf_sk_release(sk);
    return SK_PASS;
}
