/* daetui: the layouts and constants shared by the kernel programs and user space.
 *
 * This header is the only description of the maps. Python reads the
 * `#define`s below (daetui/dataplane/constants.py) and takes the structs'
 * ctypes from BCC, so there is no second copy of a layout to keep in step.
 * A constant meant for Python is a plain `#define NAME <integer>`.
 */
#ifndef DAETUI_H
#define DAETUI_H

/* Limits; the loader may override them with -D. */
#ifndef MAX_MATCH_SETS
#define MAX_MATCH_SETS 4096     /* per generation */
#endif
#ifndef MAX_RULES
#define MAX_RULES 4096          /* rule indices per generation */
#endif
#ifndef MAX_FLOWS
#define MAX_FLOWS 65536         /* routing_tuples (LRU) */
#endif
#ifndef MAX_IP_SET_ENTRIES
#define MAX_IP_SET_ENTRIES 65536
#endif
#ifndef MAX_INTERFACES
#define MAX_INTERFACES 256
#endif
#ifndef MAX_DOMAIN_IPS
#define MAX_DOMAIN_IPS 65536    /* domain_routing: addresses with a known name (the control plane evicts) */
#endif
/* Domain functions per generation: one bit each in domain_routing's bitmaps. */
#define MAX_DOMAIN_FUNCTIONS 256
#define DOMAIN_WORDS 4
/* The port whose flows the DNS controller answers. */
#define DNS_PORT 53
/* Match sets evaluated per program before tail-calling the next chunk. The
 * verifier explores each branch of every iteration, so a chunk must stay well
 * below its 8192 pending-jump limit; 16 chunks cover 4096 match sets. */
#define ROUTE_CHUNK 256
#define GENERATIONS 2

/* The programs of a new flow's decision, by their index in route_progs (tail calls). */
#define PROG_CHUNK 0      /* route_chunk: the rule walk */
#define PROG_CLASSIFY 1   /* route_classify: each field's class */
#define PROG_MATCH 2      /* route_match: the first rule set in every field's bitmap */
#define PROG_DECIDE 3     /* route_decide: records and carries out s->d_* */
#define PROG_DNS 4        /* dns_answer: a hijacked UDP query answered from dns_answers, or handed over */
#define N_ROUTE_PROGS 5

/* The rule classifier. Bit r of a bitmap is rule position r (the r-th enabled
 * rule). Each field of a packet has a class: the bitmap of the rules whose
 * functions on that field hold for it (negations folded in), plus at most one
 * extra rule bit (so the many classes "the field's rule-less bitmap and the
 * one rule naming this value" share one bitmap). A rule matches when its bit
 * is set in every field's class; domain() and must_rules are applied to the
 * candidates in rule order, as the walk applies them. */
#define CLS_WORDS 64              /* MAX_RULES / 64: words of a whole bitmap */
#define CLS_BLOCKS 2048           /* 64-word blocks of bitmaps per generation (1 MiB) */
#define CLS_STEPS 64              /* words read or candidates tried per run of route_match */
/* Runs of route_match before the walk takes over from the next untried rule: candidates turned down
 * (must_rules, domain()) cost a step each, and tail calls are limited (33 a packet). */
#define CLS_MAX_RUNS 8
#define CLS_PORTS 65536
#define CLS_MISC 256              /* l4proto (1 bit) x ipversion (1 bit) x dscp (6 bits) */
#define CLS_KEYED_ENTRIES 8192    /* MACs, interfaces and process names named by rules, both generations */
#define CLS_MAX_RULE_DOMAINS 32   /* domain() functions of one rule the classifier handles */
/* A class, as the class maps hold it: the bitmap's first word (in the generation's
 * blocks, a multiple of cls_gen.n_words) << CLS_EXTRA_BITS | (extra rule position + 1, 0: none). */
#define CLS_EXTRA_BITS 13
/* Fields, in route_state.cls */
#define CLS_F_DPORT 0
#define CLS_F_SPORT 1
#define CLS_F_DIP 2
#define CLS_F_SIP 3
#define CLS_F_MISC 4       /* also clears the rules that can never match */
#define CLS_F_MAC 5
#define CLS_F_IFACE 6      /* the pair (LAN interface, WAN interface): one interface() may name both sides */
#define CLS_F_PNAME 7
#define CLS_FIELDS 8
/* Kinds of cls_keyed entries: the class of a MAC or process name, the index (below CLS_IFACES, 0 for
 * one no rule names) of a LAN or WAN interface in cls_ifaces */
#define CLS_KEY_MAC 0
#define CLS_KEY_LAN 1
#define CLS_KEY_WAN 2
#define CLS_KEY_PNAME 3
#define CLS_IFACES 16      /* interfaces a side the classifier tells apart (15 named, and any other) */
/* cls_rule.flags */
#define CLS_RULE_MUST_RULES 1

/* Outbounds as the kernel sees them. Every id from OUTBOUND_FIRST_GROUP up is
 * a group: the flow goes to the control plane. */
#define OUTBOUND_DIRECT 0
#define OUTBOUND_BLOCK 1
#define OUTBOUND_FIRST_GROUP 2
/* A rule whose outbound is must_rules: when it matches, the flow is "must"
 * (its DNS is not hijacked) and matching goes on with the next rule. */
#define OUTBOUND_MUST_RULES 253
/* The decision depends on a name the kernel does not know (a domain function
 * on an address with no domain_routing entry): the control plane sniffs the
 * name and decides, from rule_index on. */
#define OUTBOUND_USERSPACE 254
/* DNS from the LAN (port 53, UDP or TCP) that no must_* rule claimed: the
 * control plane's DNS controller answers it, as dae hijacks DNS. */
#define OUTBOUND_DNS 252
#define MAX_GROUPS 250

/* rule_index of a decision taken by the fallback. */
#define RULE_FALLBACK 65535

/* Match set types: one function of a rule, or one value of it. */
#define MATCH_DIP 1
#define MATCH_SIP 2
#define MATCH_DPORT 3
#define MATCH_SPORT 4
#define MATCH_L4PROTO 5
#define MATCH_IPVERSION 6
#define MATCH_MAC 7
#define MATCH_DSCP 8
#define MATCH_IFACE_LAN 9   /* the LAN interface the flow came in on */
#define MATCH_IFACE_WAN 10  /* the interface the router would send it out of (FIB lookup) */
#define MATCH_DOMAIN 11     /* bit domain_bit of domain_routing[dip] */
#define MATCH_NEVER 12      /* a function no packet here can match */
#define MATCH_PNAME 13      /* the name (comm) of the process whose socket sent the router's own flow */

/* Length of a process name (the kernel's TASK_COMM_LEN). */
#define PNAME_LEN 16

/* match_set.flags */
#define MS_FUNC_END 1   /* last value of a function: the function's verdict is known */
#define MS_RULE_END 2   /* last function of a rule: outbound applies if it matched */

/* match_set.mask bits for l4proto and ipversion */
#define L4_TCP 1
#define L4_UDP 2
#define IPV_4 1
#define IPV_6 2

/* flow.flags */
#define FLOW_TCP_FIN 1
#define FLOW_TCP_RST 2
#define FLOW_ASSIGNED 4    /* handed to the control plane at least once */
#define FLOW_FAIL_OPEN 8   /* wanted the control plane while its heartbeat was stale: passed direct */
#define FLOW_MUST 16       /* a must_* outbound or must_rules matched: DNS is not hijacked */
#define FLOW_GROUP_DEAD 32 /* its group had no live node: dropped or passed direct, as configured */
#define FLOW_OWN 64        /* the router's own flow (a local socket, seen by wan_egress), not a LAN client's */
/* A direct flow whose 4-tuple a relay's socket here still held (TIME_WAIT) at its SYN: forwarded, every
 * packet would be dropped (early demux ties it to that socket, and ip_forward drops a packet that has
 * one), so the control plane relays it, direct. */
#define FLOW_HELD_TUPLE 128

/* group_health values (per generation and group): which families have no
 * live node, and what to do with a new flow then. Written by the control
 * plane from its health checks. */
#define GROUP_DEAD4 1
#define GROUP_DEAD6 2
#define GROUP_ACTION_MASK 0x30
#define GROUP_DEAD_REJECT 0x00   /* hand it over anyway: the control plane resets it, saying why */
#define GROUP_DEAD_DROP 0x10
#define GROUP_DEAD_DIRECT 0x20

/* Keys of the listeners sockmap. */
#define LISTENER_TCP4 0
#define LISTENER_TCP6 1
#define LISTENER_UDP4 2
#define LISTENER_UDP6 3
/* The DNS controller's own listeners: a flow handed to them is DNS. */
#define LISTENER_DNS_TCP4 4
#define LISTENER_DNS_TCP6 5
#define LISTENER_DNS_UDP4 6
#define LISTENER_DNS_UDP6 7
#define N_LISTENERS 8
/* Relay workers (global.relay_workers): worker w's TCP listeners sit at
 * WORKER_SLOT0 + 2*w (IPv4) and + 1 (IPv6). A new TCP flow goes to a live
 * worker picked by a hash of its tuple; a worker that dies closes its
 * sockets, which leaves the sockmap, and the next live one is taken; with
 * none, the main process's own listeners. */
#define MAX_WORKERS 8
#define WORKER_SLOT0 8
#define N_LISTENER_SLOTS 24

/* Indices of the global counters. */
#define CNT_PACKETS 0         /* seen by lan_ingress */
#define CNT_NOT_IP 1          /* unknown ethertype: passed */
#define CNT_FRAGMENT 2        /* IP fragment: passed */
#define CNT_UNPARSED 3        /* truncated, or an IPv6 header not followed: passed */
#define CNT_OTHER_L4 4        /* neither TCP nor UDP: passed */
#define CNT_NON_UNICAST 5     /* broadcast or multicast frame (own traffic: link-local too): passed */
#define CNT_UNTRACKED_TCP 6   /* mid-stream TCP with no decision, not relayed (older than daetui, or a direct flow the LRU forgot): passed */
#define CNT_NEW_FLOWS 7
#define CNT_DECIDED_DIRECT 8
#define CNT_DECIDED_BLOCK 9
#define CNT_DECIDED_GROUP 10
#define CNT_TO_CONTROL 11     /* packets handed to the control plane */
#define CNT_FAIL_OPEN 12      /* packets for the control plane passed: no listener */
#define CNT_ASSIGN_ERROR 13
#define CNT_CHUNK_LIMIT 14    /* ran out of tail calls: fallback used */
#define CNT_EGRESS_PACKETS 15
#define CNT_UNDECIDED 16      /* flows whose rules need a name the kernel does not know */
#define CNT_DNS_HIJACKED 17   /* new DNS flows (port 53) handed to the DNS controller */
#define CNT_GROUP_DEAD 18     /* new flows whose group had no live node */
/* Mid-stream TCP with no routing_tuples entry (the LRU forgot it, or it is older than daetui): */
#define CNT_ORPHAN_TO_SOCKET 19  /* its relay's socket found: handed to it */
#define CNT_ORPHAN_DROPPED 20    /* a relayed flow whose socket is gone: dropped, never forwarded raw */
#define CNT_RELAYED_FULL 21      /* relayed_tuples full: a relayed flow not remembered (guard lost for it) */
#define CNT_STALLED 22        /* new flows for the control plane while its heartbeat was stale */
#define CNT_V4_MAPPED_V6 23   /* IPv6 with a v4-mapped address (never valid on the wire): passed, never filed */
/* The router's own traffic (wan_egress, own_ingress): */
#define CNT_OWN_PACKETS 24    /* packets of local sockets seen by wan_egress */
#define CNT_OWN_BYPASS 25     /* daetui's own sockets (so_mark_from_dae, its pid), a listed mark, DHCP: passed */
#define CNT_OWN_SERVER 26     /* UDP to a peer the socket received from first (a server answering): passed */
#define CNT_OWN_TO_CONTROL 27 /* redirected into daetui0 for the control plane */
#define CNT_OWN_LOST 28       /* arrived on daetui0 with no flow to hand it to: dropped */
/* New direct TCP flows whose 4-tuple a relay's socket still held (FLOW_HELD_TUPLE): relayed direct by the control plane. */
#define CNT_DIRECT_HELD 29
#define N_COUNTERS 30

/* Cached DNS answered in the kernel (dns_answer). The controller fills dns_answers with the answers
 * that are every client's (daetui/dns/kernel_answers.py); a query they answer never reaches user space.
 * Anything unusual goes to the controller, counted by reason in dns_stats. */
#define DNS_QNAME_MAX 128        /* wire name, lower-cased: longer ones go to the controller */
#define DNS_REST_MAX 512         /* answer, authority and additional sections of an entry */
#define DNS_MAX_TTLS 16          /* records of an entry (each has a TTL to count down) */
#define DNS_REPLY_MAX 512        /* a whole reply, our OPT record included: never truncated */
/* dns_stats indices */
#define DNS_ST_ANSWERED 0
#define DNS_ST_NOT_PLAIN 1       /* no plain query: QR, opcode, TC, counts, an IPv4 option / IPv6 extension */
#define DNS_ST_EDNS 2            /* an OPT record we cannot echo: options (ECS, cookie), DO, version, or other records */
#define DNS_ST_NAME 3            /* a name longer than DNS_QNAME_MAX, compressed, or running past the end */
#define DNS_ST_TRAILING 4        /* bytes after the question (and OPT) */
#define DNS_ST_MISS 5            /* no entry */
#define DNS_ST_EXPIRED 6
#define DNS_ST_EPOCH 7           /* an entry from before the last reload or flush */
#define DNS_ST_TOO_BIG 8         /* the reply would not fit DNS_REPLY_MAX */
#define DNS_ST_ERROR 9           /* a helper failed: handed over before the packet changed, dropped after */
#define DNS_ST_TRUNCATED 10      /* shorter than its headers say */
#define N_DNS_STATS 11

/* The question of a cached answer: its name as on the wire, lower-cased, zero-padded. */
struct dns_key {
    __u8 name[DNS_QNAME_MAX];
    __u16 qtype;          /* host byte order */
    __u16 qclass;
};

/* A cached answer, as the controller would send it from its cache. */
struct dns_entry {
    __u64 expires_ns;     /* bpf_ktime_get_ns(): not used from then on (never served stale) */
    __u64 stored_ns;      /* when its TTLs were ttls[]: they are counted down by the whole seconds since */
    __u32 epoch;          /* dns_conf.epoch it was filled under: any other is never used */
    __u16 flags;          /* the reply's header flags, RD excepted (the query's is copied) */
    __u16 ancount;
    __u16 nscount;
    __u16 arcount;        /* without our OPT record */
    __u16 rest_len;       /* bytes of rest[] */
    __u16 n_ttls;
    __u16 ttl_off[DNS_MAX_TTLS];   /* offsets of the records' TTLs in rest[] */
    __u32 ttls[DNS_MAX_TTLS];
    __u8 rest[DNS_REST_MAX];       /* every section after the question */
};

struct dns_conf {
    __u32 epoch;          /* bumped on every reload and cache flush, and when a name leaves the NameBook early */
    __u8 enabled;         /* dns.kernel_answers */
    __u8 pad[3];
};

/* dns_answer's per-CPU room (too big for the stack): the key, and the reply's question and sections as
 * they go out, zero-padded, so each is checksummed by one bpf_csum_diff. */
struct dns_scratch {
    struct dns_key key;
    __u8 question[2 * DNS_QNAME_MAX];   /* DNS_QNAME_MAX + 4 used: a power of two to mask lengths with */
    __u8 rest[DNS_REST_MAX];
    __u32 nlen;           /* the name's length, read back as a plain number: the verifier's paths out of
                           * the label walk become one */
    __u32 pad;
};

/* A UDP socket on the router and a peer it received from: what it then sends that peer is an
 * answer (a server's: WireGuard in user space, a DNS server for the WAN), not a new flow. */
struct answered_key {
    __u64 cookie;
    __u8 addr[16];        /* the peer, IPv4 v4-mapped */
    __u16 port;           /* host byte order */
    __u16 pad[3];
};

/* A UDP decision older than this (idle) is taken again, with today's rules. */
#define UDP_REDECIDE_NS 120000000000ULL

/* The 5-tuple of a flow, from the LAN client's side. IPv4 addresses are
 * stored v4-mapped (::ffff:a.b.c.d) so one key serves both families. */
struct tuple_key {
    __u8 sip[16];
    __u8 dip[16];
    __u16 sport;      /* host byte order */
    __u16 dport;      /* host byte order */
    __u8 l4proto;
    __u8 pad[3];
};

/* The kernel's decision for a flow, and what it has seen of it. */
struct flow {
    __u64 first_seen_ns;  /* bpf_ktime_get_ns() */
    __u64 last_seen_ns;
    __u64 packets;        /* from the client (LAN ingress) */
    __u64 bytes;
    __u64 rx_packets;     /* to the client (LAN egress) */
    __u64 rx_bytes;
    __u32 ifindex;        /* LAN interface it came in on */
    __u32 mark;
    __u16 rule_index;
    __u8 outbound;
    __u8 flags;
    __u8 mac[6];          /* client MAC */
    __u8 generation;      /* rule generation that decided it */
    __u8 ipversion;
    __u32 pid;            /* FLOW_OWN: the process (tgid) whose socket opened it */
    char comm[PNAME_LEN]; /* FLOW_OWN: its name */
};

/* One value of one function of one rule. Rules are laid out as runs of match
 * sets: a function's values are OR-ed, a rule's functions AND-ed. */
struct match_set {
    __u8 type;
    __u8 negate;          /* on the function's MS_FUNC_END entry */
    __u8 flags;
    __u8 outbound;        /* on the rule's MS_RULE_END entry */
    __u16 rule_index;
    __u16 next;           /* first match set of the next rule */
    __u16 func_end;       /* last match set of this function */
    __u16 port_lo;
    __u16 port_hi;
    __u8 mask;            /* L4_* or IPV_* bits */
    __u8 must;            /* on the MS_RULE_END entry: a must_* outbound */
    __u8 mac[6];
    __u8 dscp;
    __u8 pad;
    __u32 ip_set;         /* ip_sets id of a DIP/SIP function */
    __u32 mark;           /* on the MS_RULE_END entry: mark to set */
    __u32 ifindex;        /* IFACE_LAN / IFACE_WAN */
    __u16 domain_bit;     /* DOMAIN */
    __u16 pad3;
    char pname[PNAME_LEN]; /* PNAME, NUL-padded */
};

/* An address and what its name matched: bit i of bits[generation] is set when
 * the address's name matches domain function i of that generation's rules.
 * Written by the control plane (the DNS controller) before it answers a client. */
struct ip_key {
    __u8 addr[16];        /* IPv4 v4-mapped */
};

struct domain_entry {
    /* [generation * DOMAIN_WORDS + word]: flat, because BCC's ctypes keep only
     * the first dimension of a two-dimensional array. */
    __u64 bits[GENERATIONS * DOMAIN_WORDS];
};

/* Key of the ip set trie: the first 32 bits of the prefix are the set id
 * times two, plus one for IPv6; IPv4 addresses are v4-mapped. */
struct ip_set_key {
    __u32 prefixlen;
    __u32 set_id;
    __u8 addr[16];
};

struct params {
    __u32 active_gen;
    __u32 tproxy_mark;    /* set on packets for the control plane: policy routing makes them local */
    __u8 fail_open;       /* no listener: 1 pass the packet, 0 drop it */
    __u8 walk;            /* 1: walk the rules even where the generation has a classifier (the reference) */
    __u8 own_mac[6];      /* daetui0's address: the destination of the own flows redirected into it */
    __u32 own_ifindex;    /* daetui0: the router's own flows for the control plane enter here (0: none) */
    __u32 so_mark;        /* so_mark_from_dae: packets carrying it are daetui's own, never caught */
    __u32 own_tgid;       /* daetui's process: its sockets are never caught, marked or not */
    __u8 domain_no_match; /* a domain() function of an address with no known name is false (dae's
                           * kernel), instead of handing the flow over to have its name sniffed */
    __u8 workers;         /* relay workers (0: the main process relays every TCP flow) */
    __u8 pad2[2];
    __u32 worker_seed;    /* random at start: which worker a tuple goes to cannot be chosen from the LAN */
};

/* The process behind a local socket, by socket cookie: written by the cgroup
 * socket hooks (sock_create, connect, sendmsg), read by wan_egress. */
struct sock_owner {
    __u32 pid;            /* tgid */
    char comm[PNAME_LEN];
};

/* The control plane's pulse. It writes beat_ns (CLOCK_MONOTONIC, which is what
 * bpf_ktime_get_ns() reads) from its event loop every timeout/4; a loop that
 * hangs, or a process stopped by SIGSTOP, stops writing. New flows that would
 * need the control plane while the beat is older than timeout_ns are failed
 * open (or dropped, without fail_open) as if the daemon were gone. Its own
 * map: params is rewritten whole from another thread. */
struct heartbeat {
    __u64 beat_ns;
    __u64 timeout_ns;     /* 0: not checked */
};

struct gen_params {
    __u32 n_match_sets;
    __u32 fallback_mark;
    __u8 fallback_outbound;
    __u8 pad[7];
};

/* A generation's classifier (cls_*): used when ok, else its rules are walked. */
struct cls_gen {
    __u8 ok;
    __u8 has_wan;         /* interface() of a WAN side: the FIB is asked */
    __u8 has_pname;
    __u8 pad;
    __u16 used;           /* bit CLS_F_*: some rule has a function on the field (else its class is every rule) */
    __u16 pad2;
    __u32 n_words;        /* words of a bitmap: a power of two, 1..CLS_WORDS */
    __u32 n_rules;        /* rule positions: a hand-over to the walk past the last one is the fallback */
    __u32 dflt[CLS_FIELDS]; /* the class of a value no entry names (dip, sip, mac, pname) */
};

/* A rule position's rule. */
struct cls_rule {
    __u16 rule_index;
    __u8 outbound;
    __u8 must;
    __u32 mark;
    __u8 flags;           /* CLS_RULE_* */
    __u8 dom_count;       /* its domain() functions: bits dom_first.. of domain_routing */
    __u16 dom_first;
    __u32 dom_negate;     /* bit i: domain function dom_first + i is negated */
    __u16 ms_first;       /* its first match set: where the walk starts when it takes over */
    __u16 pad;
};

/* cls_keyed: the class of a MAC (name[0..5]) or process name, the index of a LAN or WAN interface (ifindex). */
struct cls_key {
    __u8 gen;
    __u8 kind;            /* CLS_KEY_* */
    __u16 pad;
    __u32 ifindex;
    char name[PNAME_LEN];
};

struct cls_block {
    __u64 w[CLS_WORDS];
};

struct rule_stat {
    __u64 hits;
    __u64 last_hit_ns;
};

struct if_stat {
    __u64 rx_packets;     /* LAN ingress */
    __u64 rx_bytes;
    __u64 tx_packets;     /* LAN egress */
    __u64 tx_bytes;
};

/* Per-CPU scratch for one packet's routing; survives tail calls. */
struct route_state {
    struct tuple_key key;
    struct ip_set_key ipk;
    __u8 mac[6];
    __u8 ipversion;
    __u8 tcp_flags;
    __u32 ifindex;
    __u32 pkt_len;
    __u32 i;              /* next match set, relative to the generation */
    __u32 base;           /* first match set of the generation */
    __u32 n;              /* match sets in the generation */
    __u8 good;            /* the current function has matched */
    __u8 gen;
    __u8 dscp;
    __u8 must;            /* a must_rules rule matched on the way */
    __u8 undecided;       /* a domain function met an address with no known name */
    __u8 own;             /* the router's own flow (wan_egress): handed over by redirect, not sk_assign */
    __u8 l3;              /* the interface has no Ethernet header (WireGuard, tun) */
    __u8 domain_no_match; /* params.domain_no_match, for this decision */
    __u32 wan_ifindex;    /* the FIB's answer, once asked: 0 not yet, ~0 none; own flows: the WAN it leaves by */
    __u32 pid;            /* own flows: the socket's process, when the cgroup hooks saw it */
    char comm[PNAME_LEN];
    struct bpf_fib_lookup fib;
    /* The classifier's run (route_classify, route_match), and the decision for route_decide: */
    __u32 cls[CLS_FIELDS];  /* each field's class (see CLS_EXTRA_BITS) */
    __u32 cls_w;          /* the next word to read */
    __u64 cls_acc;        /* the candidates of word cls_w - 1 not tried yet */
    __u64 dbits[DOMAIN_WORDS]; /* domain_routing[dip]'s bits of this generation, when dom_state is 2 */
    __u8 dom_state;       /* 0: not looked up, 1: no name known, 2: known */
    __u8 d_outbound;
    __u8 d_must;
    __u8 cls_runs;        /* runs of route_match so far */
    __u32 cls_next;       /* the first rule position not yet turned down */
    __u16 d_rule;
    __u16 pad3;
    __u32 d_mark;
    struct cls_key ck;
};

BPF_TABLE("lru_hash", struct tuple_key, struct flow, routing_tuples, MAX_FLOWS);
BPF_ARRAY(match_sets, struct match_set, GENERATIONS * MAX_MATCH_SETS);
BPF_LPM_TRIE(ip_sets, struct ip_set_key, __u8, MAX_IP_SET_ENTRIES);
BPF_ARRAY(params, struct params, 1);
BPF_ARRAY(gen_params, struct gen_params, GENERATIONS);
BPF_ARRAY(heartbeat, struct heartbeat, 1);
BPF_PERCPU_ARRAY(rule_stats, struct rule_stat, GENERATIONS * (MAX_RULES + 1));
BPF_PERCPU_ARRAY(counters, __u64, N_COUNTERS);
/* By ifindex: an array below MAX_INTERFACES (a lookup per packet costs a few ns, a hash's ~20), a hash above. */
BPF_PERCPU_ARRAY(if_stats, struct if_stat, MAX_INTERFACES);
BPF_PERCPU_HASH(if_stats_far, __u32, struct if_stat, MAX_INTERFACES);
BPF_PERCPU_ARRAY(scratch, struct route_state, 1);
/* A plain hash, not an LRU: the control plane decides what leaves it (KernelSync), so what it
 * believes the kernel holds is what the kernel holds. */
BPF_TABLE("hash", struct ip_key, struct domain_entry, domain_routing, MAX_DOMAIN_IPS);
/* The TCP flows handed to the control plane, by tuple; value: when (bpf_ktime_get_ns). Not an LRU
 * either: routing_tuples may forget a relayed flow under churn, this must not, or the flow's next
 * mid-stream packet would be forwarded raw with the client's own address. The control plane
 * removes the entries of relays that ended (control/relayed.py). */
BPF_TABLE("hash", struct tuple_key, __u64, relayed_tuples, MAX_FLOWS);
/* Values: a socket (an fd when written; its cookie when read from user space, which needs 8 bytes). */
BPF_TABLE("sockmap", __u32, __u64, listeners, N_LISTENER_SLOTS);
/* The relay workers' processes (tgid -> 1): their sockets are daetui's own, like own_tgid's. */
BPF_HASH(own_tgids, __u32, __u8, MAX_WORKERS * 2);
BPF_ARRAY(group_health, __u8, GENERATIONS * MAX_GROUPS);
BPF_PROG_ARRAY(route_progs, N_ROUTE_PROGS);
BPF_ARRAY(cls_gens, struct cls_gen, GENERATIONS);
BPF_ARRAY(cls_blocks, struct cls_block, GENERATIONS * CLS_BLOCKS);
BPF_ARRAY(cls_rules, struct cls_rule, GENERATIONS * MAX_RULES);
BPF_ARRAY(cls_ports, __u32, GENERATIONS * 2 * CLS_PORTS);   /* [gen][dport, sport][port] */
BPF_ARRAY(cls_misc, __u32, GENERATIONS * CLS_MISC);
BPF_ARRAY(cls_ifaces, __u32, GENERATIONS * CLS_IFACES * CLS_IFACES);  /* [gen][lan index][wan index] */
/* Key as ip_sets' (struct ip_set_key), set_id = gen << 2 | sip << 1 | IPv6: the class of the longest prefix. */
BPF_LPM_TRIE(cls_ip, struct ip_set_key, __u32, MAX_IP_SET_ENTRIES);
BPF_HASH(cls_keyed, struct cls_key, __u32, CLS_KEYED_ENTRIES);
BPF_TABLE("lru_hash", __u64, struct sock_owner, sock_owner, MAX_FLOWS);
/* Marks whose packets wan_egress never catches (global.bypass_marks), besides so_mark. */
BPF_HASH(bypass_marks, __u32, __u8, 16);
BPF_TABLE("lru_hash", struct answered_key, __u8, answered, 16384);
BPF_TABLE("lru_hash", struct dns_key, struct dns_entry, dns_answers, 4096);
BPF_ARRAY(dns_conf, struct dns_conf, 1);
BPF_PERCPU_ARRAY(dns_stats, __u64, N_DNS_STATS);
BPF_PERCPU_ARRAY(dns_scratch, struct dns_scratch, 1);

#endif /* DAETUI_H */
