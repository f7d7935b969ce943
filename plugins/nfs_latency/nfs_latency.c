/* nfs_latency: time from a request on an NFS server's TCP connection to its
 * first answering bytes, per server address.
 *
 * The loader prepends tcptrace.h and a generated `latency_bucket()` (the
 * histogram bounds live once, in Python), appends the kprobe fallback when
 * some role needs it, and defines TT_MAX_TARGETS,
 * NFS_MAX_INFLIGHT, NFS_MAX_STATS, NFS_CLAMP_NS and NFS_BUCKETS (finite
 * bounds + 1 overflow slot).
 *
 * What is timed: on each watched socket, the first send after the socket was
 * idle starts a request; later sends before the answer (the rest of a record,
 * pipelined RPCs) leave the start alone; the first receive that returns data
 * ends it. With several RPCs in flight on one connection this measures "oldest
 * unanswered send -> next data received", one sample per alternation.
 */

struct inflight_req {
    u64 start_ns;
    struct addr16 addr;
};

struct nfs_stats {
    u64 latency_ns;
    u64 retransmits;
    u64 hist[NFS_BUCKETS];
};

BPF_TABLE("lru_hash", u64, struct inflight_req, inflight, NFS_MAX_INFLIGHT);
BPF_HASH(stats, struct addr16, struct nfs_stats, NFS_MAX_STATS);

static __always_inline struct nfs_stats *stats_for(struct addr16 *a)
{
    struct nfs_stats *s = stats.lookup(a);
    if (s)
        return s;
    struct nfs_stats zero = {};
    /* NOEXIST: a concurrent creator wins and we use its entry; counts are
     * never reset by a racing insert. */
    stats.insert(a, &zero);
    s = stats.lookup(a);
    if (!s)
        tt_problem(0);
    return s;
}

static __always_inline void on_send(void *sk, u16 family, int bytes)
{
    struct inflight_req req = {};
    if (!tt_match_sock(sk, family, &req.addr))
        return;
    u64 key = (u64)sk;
    req.start_ns = bpf_ktime_get_ns();
    inflight.insert(&key, &req);
}

static __always_inline void on_recv(void *sk, u16 family, int bytes)
{
    struct addr16 a = {};
    if (!tt_match_sock(sk, family, &a))
        return;
    u64 key = (u64)sk;
    struct inflight_req *req = inflight.lookup(&key);
    if (!req)
        return;
    u64 start = req->start_ns;
    /* Only the caller whose delete succeeds records: two readers on one
     * socket cannot both count the same request. */
    if (inflight.delete(&key) != 0)
        return;
    u64 d = bpf_ktime_get_ns() - start;
    if (d > NFS_CLAMP_NS) {
        d = NFS_CLAMP_NS;
        tt_problem(1);
    }
    struct nfs_stats *s = stats_for(&a);
    if (!s)
        return;
    __sync_fetch_and_add(&s->latency_ns, d);
    u32 b = latency_bucket(d);
    if (b < NFS_BUCKETS)
        __sync_fetch_and_add(&s->hist[b], 1);
}

static __always_inline void on_retransmit(u16 dport, struct addr16 *a)
{
    if (!tt_match_args(dport, a))
        return;
    struct nfs_stats *s = stats_for(a);
    if (s)
        __sync_fetch_and_add(&s->retransmits, 1);
}

static __always_inline void on_close(void *sk)
{
    u64 key = (u64)sk;
    inflight.delete(&key);
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
