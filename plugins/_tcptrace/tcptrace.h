/* Shared by the nfs_latency and objstore programs: match a TCP socket against
 * a destination port set and address set, as cheaply as possible.
 *
 * Every socket send and receive on the host passes through these hooks, so the
 * checks run cheapest first: tracepoint arguments (no memory reads), then one
 * 16-byte read of the socket's address/port words and an inlined array lookup
 * in a port bitmap; for a watched port, an inlined lookup in a 65536-bit
 * address pre-filter (a fold of the address); only when that bit is set, the
 * exact hash lookup, whose value is the address's counters themselves.
 *
 * Addresses are kept as 16 bytes in IPv6 form; IPv4 becomes ::ffff:a.b.c.d,
 * the form an AF_INET6 socket uses for an IPv4-mapped peer, so one key covers
 * both.
 *
 * Offsets inside struct sock_common, struct sock, struct sk_buff and struct
 * tcp_skb_cb come from the running kernel's BTF (the loader passes them with
 * -D); the defaults are what every 64-bit kernel since 4.x has had. The
 * program including this file defines struct tt_stats (the per-address
 * counters) before including it.
 */
#include <uapi/linux/ptrace.h>

#ifndef SKC_DADDR_OFF
#define SKC_DADDR_OFF 0
#endif
#ifndef SKC_DPORT_OFF
#define SKC_DPORT_OFF 12
#endif
#ifndef SKC_FAMILY_OFF
#define SKC_FAMILY_OFF 16
#endif
#ifndef SKC_V6_DADDR_OFF
#define SKC_V6_DADDR_OFF 56
#endif
#ifndef SKB_CB_OFF
#define SKB_CB_OFF 40
#endif
#ifndef TCP_SKB_GSO_SEGS_OFF
#define TCP_SKB_GSO_SEGS_OFF 8
#endif

#define TT_AF_INET 2
#define TT_AF_INET6 10
#define TT_IPPROTO_TCP 6
#define TT_MSG_PEEK 2

struct addr16 {
    u64 hi;
    u64 lo;
};

/* One bit per TCP port: 65536 bits in 1024 words. */
BPF_ARRAY(port_bits, u64, 1024);
/* Address pre-filter: one bit per 16-bit fold of a watched address. */
BPF_ARRAY(addr_bits, u64, 1024);
/* Watched addresses -> their slot in `counters` (1..TT_MAX_TARGETS). Slots
 * are handed out, zeroed and taken back by userspace only, so the kernel
 * never creates or resets counters. */
BPF_HASH(targets, struct addr16, u32, TT_MAX_TARGETS);
BPF_ARRAY(counters, struct tt_stats, TT_MAX_TARGETS + 1);
/* Samples recorded at the clamp (counted so the exporter can log them). */
BPF_ARRAY(problems, u64, 1);

/* Per-socket verdicts, so a socket's later events skip the socket read,
 * the port/address checks and the hash lookup: one 8-byte word per entry,
 * written with one store, holding the socket address (bits 6-47; kernel
 * addresses are canonical, no two sockets share a 64-byte block), the filter
 * generation (bits 0-5) and the counters slot (bits 48-63, 0 = does not
 * match). Userspace bumps the generation after every filter change, which
 * invalidates every entry at once; a socket's entry is cleared when the
 * socket is released, before its memory can be reused. */
#define TT_VERDICTS 4096
#define TT_SK_BITS 0x0000ffffffffffc0ULL
#define TT_TAG_BITS 0x0000ffffffffffffULL
BPF_ARRAY(tt_generation, u64, 1);
BPF_ARRAY(tt_verdicts, u64, TT_VERDICTS);

static __always_inline u32 tt_verdict_index(void *sk)
{
    return (u32)((((u64)sk >> 6) * 0x9E3779B97F4A7C15ULL) >> 52);
}

static __always_inline u64 tt_socket_tag(void *sk)
{
    u32 zero = 0;
    u64 *gen = tt_generation.lookup(&zero);
    return ((u64)sk & TT_SK_BITS) | (gen ? (*gen & 63) : 0);
}

static __always_inline void tt_forget_socket(void *sk)
{
    u32 index = tt_verdict_index(sk);
    u64 *entry = tt_verdicts.lookup(&index);
    if (entry && (*entry & TT_SK_BITS) == ((u64)sk & TT_SK_BITS))
        *entry = 0;
}

/* Per-socket state of the including program (its struct tt_sock_state,
 * whose first member is `u64 start_ns`, 0 while the socket is idle), in a
 * set-associative table in an ARRAY map: TT_SOCKET_WAYS ways per set, the
 * set chosen by a multiplicative hash of the socket address. The lookups
 * are inlined by the JIT and one set is one or two cache lines; an LRU hash
 * map cost ~45 ns more per matching event here (its hashing and bucket
 * walk). A socket without state takes a free way of its set, else an idle
 * one, else the one whose state started longest ago (that socket loses its
 * outstanding exchange, as the LRU map evicted its least recent entry).
 * TT_SOCKETS, a power of two and at least one set, comes from userspace.
 * Ways are written with plain stores: two CPUs claiming the last free way of
 * a set at the same instant can lose one socket's state (one exchange). */
#define TT_SOCKET_WAYS 4
struct tt_sock {
    u64 sk; /* the socket's address; 0: the way is free */
    struct tt_sock_state state;
};
BPF_ARRAY(tt_sockets, struct tt_sock, TT_SOCKETS);

static __always_inline u32 tt_socket_set(u64 sk)
{
    return (u32)((((sk >> 6) * 0x9E3779B97F4A7C15ULL) >> 32) & (TT_SOCKETS - TT_SOCKET_WAYS));
}

/* The socket's way; with `claim`, a way taken for it (state zeroed) when it
 * had none. NULL: not found (or, claiming, no way to take). */
static __always_inline struct tt_sock *tt_socket_way(u64 sk, int claim)
{
    u32 base = tt_socket_set(sk);
    struct tt_sock *victim = NULL;
    u64 victim_rank = ~0ULL;
#pragma unroll
    for (u32 w = 0; w < TT_SOCKET_WAYS; w++) {
        u32 i = base + w;
        struct tt_sock *e = tt_sockets.lookup(&i);
        if (!e)
            return NULL;
        if (e->sk == sk)
            return e;
        /* Free first (0), then idle (1), then the oldest start. */
        u64 rank = e->sk == 0 ? 0 : (e->state.start_ns == 0 ? 1 : e->state.start_ns);
        if (rank < victim_rank) {
            victim_rank = rank;
            victim = e;
        }
    }
    if (!claim || !victim)
        return NULL;
    struct tt_sock_state fresh = {};
    victim->state = fresh;
    victim->sk = sk;
    return victim;
}

/* The socket's state, NULL when it has none. */
static __always_inline struct tt_sock_state *tt_socket_state(u64 sk)
{
    struct tt_sock *e = tt_socket_way(sk, 0);
    return e ? &e->state : NULL;
}

/* The socket's state; a zeroed one taken for it when it had none. */
static __always_inline struct tt_sock_state *tt_socket_claim(u64 sk)
{
    struct tt_sock *e = tt_socket_way(sk, 1);
    return e ? &e->state : NULL;
}

/* The socket is released: free its way. */
static __always_inline void tt_socket_forget(u64 sk)
{
    struct tt_sock *e = tt_socket_way(sk, 0);
    if (e)
        e->sk = 0;
}

/* The hooks take a socket as a plain number (its address): that is what the
 * perf-event tracepoints and kprobes give, and it keys the maps. A tp_btf
 * program gets a BTF-typed pointer instead, with which the verifier allows no
 * arithmetic except subtracting another pointer. So: the distance from a
 * map value, plus that map value's own address, which the program stores
 * into it once (a stored pointer reads back as a plain number). Costs one
 * inlined array lookup and a load. */
BPF_ARRAY(tt_self, u64, 1);

static __always_inline void *tt_btf_address(void *ptr)
{
    u32 zero = 0;
    u64 *self = tt_self.lookup(&zero);
    if (!self)
        return NULL;
    if (*self == 0)
        *self = (u64)self;
    u64 distance = (u64)ptr - (u64)self;
    /* Keeps clang from reassociating into pointer + unknown number, which
     * the verifier refuses. */
    asm volatile("" : "+r"(distance));
    return (void *)(distance + *self);
}

static __always_inline struct tt_stats *tt_counters(u32 slot)
{
    if (slot == 0)
        return NULL;
    return counters.lookup(&slot);
}

static __always_inline void tt_clamped(void)
{
    u32 zero = 0;
    u64 *n = problems.lookup(&zero);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline int tt_port_watched(u16 port)
{
    u32 w = port >> 6;
    /* bcc rewrites map calls only in plain assignments, not as arguments. */
    u64 *word = port_bits.lookup(&w);
    return word && (*word & (1ULL << (port & 63)));
}

static __always_inline u32 tt_fold(struct addr16 *a)
{
    u64 x = a->hi ^ a->lo;
    x ^= x >> 32;
    x ^= x >> 16;
    return (u32)(x & 0xffff);
}

/* The counters slot of a watched address, 0 if it is not watched. */
static __always_inline u32 tt_lookup_slot(struct addr16 *a)
{
    u32 fold = tt_fold(a);
    u32 w = fold >> 6;
    u64 *word = addr_bits.lookup(&w);
    if (!word || !(*word & (1ULL << (fold & 63))))
        return 0;
    u32 *slot = targets.lookup(a);
    return slot ? *slot : 0;
}

/* 16-byte form of an IPv4 address as stored in the socket (network order). */
static __always_inline void tt_v4_to_addr16(u32 daddr, struct addr16 *a)
{
    a->hi = 0;
    a->lo = 0xffff0000ULL | ((u64)daddr << 32);
}

#if SKC_DPORT_OFF >= SKC_DADDR_OFF && SKC_DPORT_OFF - SKC_DADDR_OFF <= 14
/* The usual layout: daddr and dport within 16 bytes (skc_addrpair and
 * skc_portpair), so one read serves both. */
#define TT_ONE_READ 1
#endif

/* The counters slot of the socket's peer (0 = port or address not watched),
 * read from the socket itself. */
static __always_inline u32 tt_match_sock_uncached(void *sk, u16 family)
{
    if (family != TT_AF_INET && family != TT_AF_INET6)
        return 0;
    u16 dport_be = 0;
    u32 daddr = 0;
#ifdef TT_ONE_READ
    /* Little-endian hosts (x86-64, arm64): byte k of the read is bits 8k.. */
    u64 words[2] = {};
    bpf_probe_read_kernel(words, sizeof(words), (char *)sk + SKC_DADDR_OFF);
    const int k = SKC_DPORT_OFF - SKC_DADDR_OFF;
    dport_be = (u16)((k < 8 ? words[0] >> (8 * k) : words[1] >> (8 * (k - 8))) & 0xffff);
    daddr = (u32)words[0];
#else
    bpf_probe_read_kernel(&dport_be, sizeof(dport_be), (char *)sk + SKC_DPORT_OFF);
    if (family == TT_AF_INET)
        bpf_probe_read_kernel(&daddr, sizeof(daddr), (char *)sk + SKC_DADDR_OFF);
#endif
    if (!tt_port_watched(bpf_ntohs(dport_be)))
        return 0;
    struct addr16 a = {};
    if (family == TT_AF_INET)
        tt_v4_to_addr16(daddr, &a);
    else
        bpf_probe_read_kernel(&a, sizeof(a), (char *)sk + SKC_V6_DADDR_OFF);
    return tt_lookup_slot(&a);
}

/* The counters of the socket's peer if its port and address are watched,
 * from the socket's verdict when it is current. */
static __always_inline struct tt_stats *tt_match_sock(void *sk, u16 family)
{
    if (family != TT_AF_INET && family != TT_AF_INET6)
        return NULL;
    u32 index = tt_verdict_index(sk);
    u64 *entry = tt_verdicts.lookup(&index);
    u64 tag = tt_socket_tag(sk);
    u32 slot;
    if (entry && (*entry & TT_TAG_BITS) == tag) {
        slot = (u32)(*entry >> 48);
    } else {
        slot = tt_match_sock_uncached(sk, family);
        if (entry)
            *entry = tag | ((u64)slot << 48);
    }
    return tt_counters(slot);
}

/* The same match from tracepoint arguments that already carry the peer
 * (tcp_retransmit_skb): port in host order, address in IPv6 form
 * (IPv4-mapped for AF_INET sockets). */
static __always_inline struct tt_stats *tt_match_args(u16 dport, struct addr16 *a)
{
    if (!tt_port_watched(dport))
        return NULL;
    return tt_counters(tt_lookup_slot(a));
}

static __always_inline u16 tt_sock_family(void *sk)
{
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), (char *)sk + SKC_FAMILY_OFF);
    return family;
}

/* The peer of a socket, read from it: port in host order, address in the
 * 16-byte form; 0 for a socket that is neither IPv4 nor IPv6. */
static __always_inline u16 tt_sock_peer(void *sk, struct addr16 *a)
{
    u16 family = tt_sock_family(sk);
    if (family == TT_AF_INET) {
        u32 daddr = 0;
        bpf_probe_read_kernel(&daddr, sizeof(daddr), (char *)sk + SKC_DADDR_OFF);
        tt_v4_to_addr16(daddr, a);
    } else if (family == TT_AF_INET6) {
        bpf_probe_read_kernel(a, sizeof(*a), (char *)sk + SKC_V6_DADDR_OFF);
    } else {
        return 0;
    }
    u16 dport_be = 0;
    bpf_probe_read_kernel(&dport_be, sizeof(dport_be), (char *)sk + SKC_DPORT_OFF);
    return bpf_ntohs(dport_be);
}

/* Segments in a TCP skb (tcp_skb_pcount: TCP_SKB_CB(skb)->tcp_gso_segs): what
 * the kernel adds to TcpRetransSegs when it retransmits the skb. A TSO/GSO
 * skb carries several. At least 1. */
static __always_inline u32 tt_skb_segments(void *skb)
{
    u16 segs = 0;
    bpf_probe_read_kernel(&segs, sizeof(segs), (char *)skb + SKB_CB_OFF + TCP_SKB_GSO_SEGS_OFF);
    return segs ? segs : 1;
}
