/* nfs_latency: time from a request on an NFS server's TCP connection to the
 * first answering bytes, per server address.
 *
 * The plugin prepends a generated `latency_bucket()` (the histogram bounds
 * live once, in Python), pastes the shared _tcptrace headers in place of
 * their #include lines and defines TT_MAX_TARGETS, TT_SOCKETS,
 * NFS_CLAMP_NS and NFS_BUCKETS (finite bounds + 1 overflow slot); the eBPF
 * runtime defines CME_WANT_<function> for the variant it picked per hook.
 *
 * What is timed: on each watched socket, the first send while no request is
 * outstanding starts one; later sends before the answer (the rest of an RPC
 * record, pipelined RPCs) leave the start alone; the first receive that
 * returns data ends it. With several RPCs in flight on one connection this
 * is "oldest unanswered send -> next data received", one sample per
 * alternation.
 */

struct tt_stats {
    u64 latency_ns;
    u64 retransmits;
    u64 hist[NFS_BUCKETS];
};

/* Per socket (tt_sockets, see tcptrace.h): when the outstanding request
 * started (0 = none outstanding). Freed when the socket is released. */
struct tt_sock_state {
    u64 start_ns;
};

#include "tcptrace.h"
/* Set to 1 by userspace once the RPC-layer source (rpc_latency.c) measures
 * NFS latency per RPC: then sends and receives are not timed here at all
 * (retransmissions still are). */
BPF_ARRAY(tcp_latency_off, u32, 1);

static __always_inline int latency_off(void)
{
    u32 zero = 0;
    u32 *off = tcp_latency_off.lookup(&zero);
    return off && *off;
}

/* Sends and receives check latency_off() only once the socket matched: the
 * unrelated traffic of the host, nearly every event, pays no lookup for it. */
static __always_inline void on_send(void *sk, u16 family, int bytes)
{
    if (!tt_match_sock(sk, family) || latency_off())
        return;
    struct tt_sock_state *state = tt_socket_claim((u64)sk);
    if (state && state->start_ns == 0)
        state->start_ns = bpf_ktime_get_ns();
}

static __always_inline void on_recv(void *sk, u16 family, int bytes)
{
    struct tt_stats *s = tt_match_sock(sk, family);
    if (!s || latency_off())
        return;
    struct tt_sock_state *state = tt_socket_state((u64)sk);
    if (!state || state->start_ns == 0)
        return;
    u64 began = state->start_ns;
    /* The entry stays for the socket's next request and goes when the socket
     * is released. A plain store, not an atomic claim: two threads reading
     * one socket at the same instant could both record this request (the
     * kernel NFS client reads each connection from one worker). */
    state->start_ns = 0;
    u64 d = bpf_ktime_get_ns() - began;
    if (d > NFS_CLAMP_NS) {
        d = NFS_CLAMP_NS;
        tt_clamped();
    }
    __sync_fetch_and_add(&s->latency_ns, d);
    u32 b = latency_bucket(d);
    if (b < NFS_BUCKETS)
        __sync_fetch_and_add(&s->hist[b], 1);
}

/* `segments`: what the retransmission added to TcpRetransSegs. */
static __always_inline void on_retransmit(u16 dport, struct addr16 *a, u32 segments)
{
    struct tt_stats *s = tt_match_args(dport, a);
    if (s)
        __sync_fetch_and_add(&s->retransmits, segments);
}

/* The socket is released: forget it, and anything outstanding on it. */
static __always_inline void on_close(void *sk, u16 family)
{
    tt_forget_socket(sk);
    tt_socket_forget((u64)sk);
}

#include "tcptrace_tracepoints.h"
#include "tcptrace_kprobes.h"
