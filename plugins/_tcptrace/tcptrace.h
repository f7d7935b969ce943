/* Shared by the nfs_latency and objstore programs: match a TCP socket against
 * a destination port set and address set, as cheaply as possible.
 *
 * Every socket send and receive on the host passes through these hooks, so the
 * order of the checks matters: tracepoint arguments first (no memory reads),
 * then one 2-byte read of the destination port and an inlined array lookup in
 * a port bitmap, and only for a configured port a read of the address and a
 * hash lookup.
 *
 * Addresses are kept as 16 bytes in IPv6 form; IPv4 becomes ::ffff:a.b.c.d,
 * the same form an AF_INET6 socket uses for an IPv4-mapped peer, so one key
 * covers both.
 *
 * Offsets inside struct sock_common come from the running kernel's BTF (the
 * loader passes them with -D); the defaults are the values every 64-bit
 * kernel since 4.x has had.
 */
#include <uapi/linux/ptrace.h>

#ifndef SKC_DADDR_OFF
#define SKC_DADDR_OFF 0
#endif
#ifndef SKC_DPORT_OFF
#define SKC_DPORT_OFF 12
#endif
#ifndef SKC_V6_DADDR_OFF
#define SKC_V6_DADDR_OFF 56
#endif

#define TT_AF_INET 2
#define TT_AF_INET6 10
#define TT_IPPROTO_TCP 6
#define TT_MSG_PEEK 2
#define TT_TCP_CLOSE 7

struct addr16 {
    u64 hi;
    u64 lo;
};

/* One bit per TCP port: 65536 bits in 1024 words. */
BPF_ARRAY(port_bits, u64, 1024);
/* Destination addresses to watch; the value is unused. */
BPF_HASH(targets, struct addr16, u8, TT_MAX_TARGETS);
/* Kernel-side problems userspace reports as collection errors:
 * 0 = a stats map was full, 1 = a latency sample was clamped. */
BPF_ARRAY(problems, u64, 2);

static __always_inline void tt_problem(u32 which)
{
    u64 *n = problems.lookup(&which);
    if (n)
        __sync_fetch_and_add(n, 1);
}

static __always_inline int tt_port_watched(u16 port)
{
    u32 word = port >> 6;
    u64 *bits = port_bits.lookup(&word);
    return bits && (*bits & (1ULL << (port & 63)));
}

static __always_inline int tt_addr_watched(struct addr16 *a)
{
    return targets.lookup(a) != NULL;
}

/* 16-byte form of an IPv4 address as stored in the socket (network order). */
static __always_inline void tt_v4_to_addr16(u32 daddr, struct addr16 *a)
{
    a->hi = 0;
    a->lo = 0xffff0000ULL | ((u64)daddr << 32);
}

/* Fill *a with the socket's peer address if its port and address are watched. */
static __always_inline int tt_match_sock(void *sk, u16 family, struct addr16 *a)
{
    if (family != TT_AF_INET && family != TT_AF_INET6)
        return 0;
    u16 dport_be = 0;
    bpf_probe_read_kernel(&dport_be, sizeof(dport_be), (char *)sk + SKC_DPORT_OFF);
    if (!tt_port_watched(bpf_ntohs(dport_be)))
        return 0;
    if (family == TT_AF_INET) {
        u32 daddr = 0;
        bpf_probe_read_kernel(&daddr, sizeof(daddr), (char *)sk + SKC_DADDR_OFF);
        tt_v4_to_addr16(daddr, a);
    } else {
        bpf_probe_read_kernel(a, sizeof(*a), (char *)sk + SKC_V6_DADDR_OFF);
    }
    return tt_addr_watched(a);
}

/* The same match from tracepoint arguments that already carry the peer
 * (tcp_retransmit_skb, inet_sock_set_state): port in host order, address in
 * IPv6 form (IPv4-mapped for AF_INET sockets). */
static __always_inline int tt_match_args(u16 dport, struct addr16 *a)
{
    if (!tt_port_watched(dport))
        return 0;
    return tt_addr_watched(a);
}
