/* objstore: bytes, retransmits and connection-phase latency of TCP traffic to
 * object-store endpoints, per endpoint address.
 *
 * The plugin prepends a generated `latency_bucket()`, pastes the shared
 * _tcptrace headers in place of their #include lines and defines
 * TT_MAX_TARGETS, TT_SOCKETS, OBJ_CLAMP_NS and OBJ_BUCKETS (finite
 * bounds + 1 overflow slot); the eBPF runtime defines CME_WANT_<function>
 * for the variant it picked per hook.
 *
 * A phase is one request/response exchange as TCP sees it: it starts with
 * the first send after the previous phase received data (or on a fresh
 * connection) and lasts until the last receive before the next send. It is
 * recorded when the next phase starts or when the socket is released, so the
 * last exchange of a connection counts too. TLS handshakes and HTTP/2
 * control frames are phases as well: TCP cannot tell them from requests.
 */

struct tt_stats {
    u64 latency_ns;
    u64 retransmits;
    u64 bytes_sent;
    u64 bytes_recv;
    u64 hist[OBJ_BUCKETS];
};

/* Per connection (tt_sockets, see tcptrace.h): the current phase; freed
 * (after recording its last phase) when the socket is released. */
struct tt_sock_state {
    u64 start_ns;
    u64 last_recv_ns;
};

#include "tcptrace.h"

static __always_inline void record_phase(struct tt_stats *s, u64 start_ns, u64 end_ns)
{
    u64 d = end_ns - start_ns;
    if (d > OBJ_CLAMP_NS) {
        d = OBJ_CLAMP_NS;
        tt_clamped();
    }
    __sync_fetch_and_add(&s->latency_ns, d);
    u32 b = latency_bucket(d);
    if (b < OBJ_BUCKETS)
        __sync_fetch_and_add(&s->hist[b], 1);
}

static __always_inline void on_send(void *sk, u16 family, int bytes)
{
    struct tt_stats *s = tt_match_sock(sk, family);
    if (!s)
        return;
    __sync_fetch_and_add(&s->bytes_sent, (u64)bytes);
    struct tt_sock_state *cur = tt_socket_claim((u64)sk);
    if (!cur)
        return;
    if (cur->start_ns == 0) {
        /* A fresh connection (or one whose state was evicted). */
        cur->start_ns = bpf_ktime_get_ns();
        return;
    }
    u64 last = cur->last_recv_ns;
    if (last == 0)
        return; /* still sending this phase */
    u64 start = cur->start_ns;
    cur->start_ns = bpf_ktime_get_ns();
    cur->last_recv_ns = 0;
    record_phase(s, start, last);
}

static __always_inline void on_recv(void *sk, u16 family, int bytes)
{
    struct tt_stats *s = tt_match_sock(sk, family);
    if (!s)
        return;
    __sync_fetch_and_add(&s->bytes_recv, (u64)bytes);
    struct tt_sock_state *cur = tt_socket_state((u64)sk);
    if (cur && cur->start_ns)
        cur->last_recv_ns = bpf_ktime_get_ns();
}

/* `segments`: what the retransmission added to TcpRetransSegs. */
static __always_inline void on_retransmit(u16 dport, struct addr16 *a, u32 segments)
{
    struct tt_stats *s = tt_match_args(dport, a);
    if (s)
        __sync_fetch_and_add(&s->retransmits, segments);
}

/* The socket is released: record its last phase, forget it. */
static __always_inline void on_close(void *sk, u16 family)
{
    tt_forget_socket(sk);
    struct tt_sock_state *cur = tt_socket_state((u64)sk);
    if (!cur)
        return;
    struct tt_sock_state done = *cur;
    /* Released once: this is the only event that records its last phase. */
    tt_socket_forget((u64)sk);
    if (done.last_recv_ns == 0)
        return;
    /* Matched afresh (the socket is still intact here): the address may
     * have stopped being a target since the phase began. */
    struct tt_stats *s = tt_counters(tt_match_sock_uncached(sk, family));
    if (s)
        record_phase(s, done.start_ns, done.last_recv_ns);
}

#include "tcptrace_tracepoints.h"
#include "tcptrace_kprobes.h"
