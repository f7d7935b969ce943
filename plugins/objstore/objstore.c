/* objstore: bytes, retransmits and connection-phase latency of TCP traffic to
 * object-store endpoints, per endpoint address.
 *
 * The loader prepends tcptrace.h and a generated `latency_bucket()` and
 * defines TT_MAX_TARGETS, OBJ_MAX_INFLIGHT, OBJ_MAX_STATS, OBJ_CLAMP_NS and
 * OBJ_BUCKETS (finite bounds + 1 overflow slot).
 *
 * A phase is one request/response exchange as TCP sees it: it starts with
 * the first send after the previous phase received data (or on a fresh
 * connection) and lasts until the last receive before the next send. It is
 * recorded when the next phase starts or when the connection closes, so the
 * last exchange of a connection is counted too. TLS handshakes and HTTP/2
 * control frames are phases as well: TCP cannot tell them from requests.
 */

struct phase {
    u64 start_ns;
    u64 last_recv_ns;
    struct addr16 addr;
};

struct obj_stats {
    u64 latency_ns;
    u64 retransmits;
    u64 bytes_sent;
    u64 bytes_recv;
    u64 hist[OBJ_BUCKETS];
};

BPF_TABLE("lru_hash", u64, struct phase, phases, OBJ_MAX_INFLIGHT);
BPF_HASH(stats, struct addr16, struct obj_stats, OBJ_MAX_STATS);

static __always_inline struct obj_stats *stats_for(struct addr16 *a)
{
    struct obj_stats *s = stats.lookup(a);
    if (s)
        return s;
    struct obj_stats zero = {};
    stats.insert(a, &zero);
    s = stats.lookup(a);
    if (!s)
        tt_problem(0);
    return s;
}

static __always_inline void record_phase(struct addr16 *a, u64 start_ns, u64 end_ns)
{
    u64 d = end_ns - start_ns;
    if (d > OBJ_CLAMP_NS) {
        d = OBJ_CLAMP_NS;
        tt_problem(1);
    }
    struct obj_stats *s = stats_for(a);
    if (!s)
        return;
    __sync_fetch_and_add(&s->latency_ns, d);
    u32 b = latency_bucket(d);
    if (b < OBJ_BUCKETS)
        __sync_fetch_and_add(&s->hist[b], 1);
}

static __always_inline void on_send(void *sk, u16 family, int bytes)
{
    struct phase fresh = {};
    if (!tt_match_sock(sk, family, &fresh.addr))
        return;
    struct obj_stats *s = stats_for(&fresh.addr);
    if (s)
        __sync_fetch_and_add(&s->bytes_sent, (u64)bytes);
    u64 key = (u64)sk;
    u64 now = bpf_ktime_get_ns();
    fresh.start_ns = now;
    struct phase *cur = phases.lookup(&key);
    if (!cur) {
        phases.insert(&key, &fresh);
        return;
    }
    if (cur->last_recv_ns == 0)
        return; /* still sending this phase */
    struct phase done = *cur;
    /* Whoever deletes the finished phase records it, exactly once. */
    if (phases.delete(&key) != 0)
        return;
    record_phase(&done.addr, done.start_ns, done.last_recv_ns);
    phases.insert(&key, &fresh);
}

static __always_inline void on_recv(void *sk, u16 family, int bytes)
{
    struct addr16 a = {};
    if (!tt_match_sock(sk, family, &a))
        return;
    struct obj_stats *s = stats_for(&a);
    if (s)
        __sync_fetch_and_add(&s->bytes_recv, (u64)bytes);
    u64 key = (u64)sk;
    struct phase *cur = phases.lookup(&key);
    if (cur)
        cur->last_recv_ns = bpf_ktime_get_ns();
}

static __always_inline void on_retransmit(u16 dport, struct addr16 *a)
{
    if (!tt_match_args(dport, a))
        return;
    struct obj_stats *s = stats_for(a);
    if (s)
        __sync_fetch_and_add(&s->retransmits, 1);
}

static __always_inline void on_close(void *sk)
{
    u64 key = (u64)sk;
    struct phase *cur = phases.lookup(&key);
    if (!cur)
        return;
    struct phase done = *cur;
    if (phases.delete(&key) != 0)
        return;
    if (done.last_recv_ns != 0)
        record_phase(&done.addr, done.start_ns, done.last_recv_ns);
}

#ifdef TT_TP_SEND
TRACEPOINT_PROBE(sock, sock_send_length)
{
    if (args->protocol != TT_IPPROTO_TCP || args->ret <= 0)
        return 0;
    on_send(args->sk, args->family, args->ret);
    return 0;
}
#endif

#ifdef TT_TP_RECV
TRACEPOINT_PROBE(sock, sock_recv_length)
{
    if (args->protocol != TT_IPPROTO_TCP || args->ret <= 0 || (args->flags & TT_MSG_PEEK))
        return 0;
    on_recv(args->sk, args->family, args->ret);
    return 0;
}
#endif

#ifdef TT_TP_RETRANSMIT
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
    struct addr16 a = {};
    /* A copy, not a pointer into the context: the verifier refuses reads
     * through a moved context pointer. */
    bpf_probe_read_kernel(&a, sizeof(a), args->daddr_v6);
    on_retransmit(args->dport, &a);
    return 0;
}
#endif

#ifdef TT_TP_CLOSE
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != TT_IPPROTO_TCP || args->newstate != TT_TCP_CLOSE)
        return 0;
    on_close((void *)args->skaddr);
    return 0;
}
#endif

/* The kprobe fallback (tcptrace_kprobes.h) is appended by the loader; each
 * role (TT_TP_SEND/RECV/RETRANSMIT/CLOSE) is compiled as a tracepoint only
 * where the kernel has it. */
