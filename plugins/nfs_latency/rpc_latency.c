/* nfs_latency, RPC layer: per NFS RPC client and procedure, the kernel's own
 * per-RPC figures, the ones /proc/self/mountstats adds up.
 *
 * sunrpc:rpc_stats_latency fires once per completed RPC, from
 * rpc_count_iostats_metrics(), right after the kernel has added the same
 * task to the client's per-procedure totals (cl_metrics[] - the per-op lines
 * of mountstats). Its backlog/rtt/execute are the same values, truncated to
 * microseconds by the tracepoint. So per (client, procedure) the counts here
 * are mountstats' op counts and the sums are its queue/rtt/execute sums.
 *
 * The plugin prepends three generated bucket functions (rpc_bucket,
 * seed_bucket: the bounds live once, in Python) and defines RPC_SLOTS,
 * SEED_SLOTS (finite bounds + 1 overflow slot each), RPC_MAX_ENTRIES and
 * RPC_MAX_CLIENTS; the eBPF runtime defines CME_WANT_<function> for each
 * program it attaches (the optional ones only exist on some kernels).
 *
 * Keys carry the client id and a generation: the kernel hands a freed
 * client's id (cl_clid) to the next client it creates, so
 * sunrpc:rpc_clnt_free bumps the id's generation and a new client's RPCs go
 * to a new entry. Userspace folds a dead generation's final values and
 * deletes its entries; the kernel never resets or deletes a counter.
 */

#define RPC_OP_LEN 24

struct rpc_key {
    u32 clid;
    u32 gen;
    char op[RPC_OP_LEN];
};

struct rpc_stats {
    u64 count;
    u64 errors;
    u64 retransmits;
    u64 queue_ns;
    u64 rtt_ns;
    u64 execute_ns;
    u64 queue[RPC_SLOTS];
    u64 rtt[RPC_SLOTS];
    u64 execute[RPC_SLOTS];
    /* RTT again, in the Go exporter's bounds (its histogram family). */
    u64 seed_rtt[SEED_SLOTS];
};

/* The discovery probe: userspace writes the thread id of a process that is
 * about to call fstatfs() on one NFS mount; the STATFS/FSSTAT RPC that call
 * makes completes on that thread (a synchronous task runs its state machine
 * in its caller) and names the mount's own RPC client. */
struct rpc_probe {
    u32 tid;
    u32 hits;
    u32 clid;
    u32 gen;
    /* Set when a second, different client was seen on the thread. */
    u32 mixed;
    u32 pad;
};

/* A task that ended with a negative status: rpc_task_end fires for it in
 * rpc_exit_task(), then (a few instructions later, on the same thread,
 * without a scheduling point in between on non-preemptible kernels)
 * rpc_stats_latency counts it. The slot is per CPU, so the common case (no
 * error) costs one inlined array read; a thread moved to another CPU between
 * the two (possible only with full preemption) loses that error, never
 * miscounts another task's. */
struct rpc_failed {
    u32 tid;
    u32 task_id;
    u32 clid;
    u32 valid;
};

#define RPC_PROBLEM_FULL 0

BPF_HASH(rpc_stats, struct rpc_key, struct rpc_stats, RPC_MAX_ENTRIES);
/* Indexed by client id (the kernel hands out the lowest free id, so ids stay
 * small); ids beyond the array are counted as generation 0. */
BPF_ARRAY(client_gen, u32, RPC_MAX_CLIENTS);
BPF_ARRAY(probe, struct rpc_probe, 1);
BPF_PERCPU_ARRAY(failed, struct rpc_failed, 1);
/* [RPC_PROBLEM_FULL]: events not counted because rpc_stats was full. */
BPF_ARRAY(problems, u64, 2);
/* All zeros, never written: the initial value of a new rpc_stats entry (too
 * large for the 512-byte BPF stack). */
BPF_ARRAY(rpc_zero, struct rpc_stats, 1);

static __always_inline void rpc_problem(u32 which)
{
    u64 *n = problems.lookup(&which);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* Every RPC program is counted (lockd's, rpcbind's too): telling them apart
 * would cost a string read per event, and userspace reports only the
 * clients it has mapped to an NFS mount. */
static __always_inline void rpc_make_key(struct rpc_key *key, void *args, u32 clid, u32 procname_loc)
{
    key->clid = clid;
    if (clid < RPC_MAX_CLIENTS) {
        u32 *gen = client_gen.lookup(&clid);
        if (gen)
            key->gen = *gen;
    }
    bpf_probe_read_kernel_str(&key->op, sizeof(key->op), (char *)args + (procname_loc & 0xFFFF));
}

static __always_inline struct rpc_stats *rpc_entry(struct rpc_key *key)
{
    struct rpc_stats *s = rpc_stats.lookup(key);
    if (s)
        return s;
    u32 index = 0;
    struct rpc_stats *zero = rpc_zero.lookup(&index);
    if (!zero)
        return 0;
    /* NOEXIST: a concurrent creator's entry is kept, never overwritten. */
    rpc_stats.insert(key, zero);
    s = rpc_stats.lookup(key);
    if (!s)
        rpc_problem(RPC_PROBLEM_FULL);
    return s;
}

#ifdef CME_WANT_tracepoint__sunrpc__rpc_stats_latency
TRACEPOINT_PROBE(sunrpc, rpc_stats_latency)
{
    struct rpc_key key = {};
    rpc_make_key(&key, args, args->client_id, args->data_loc_procname);

    u32 zero = 0;
    struct rpc_probe *p = probe.lookup(&zero);
    if (p && p->tid != 0 && p->tid == (u32)bpf_get_current_pid_tgid()) {
        if (p->hits == 0) {
            p->clid = key.clid;
            p->gen = key.gen;
        } else if (p->clid != key.clid || p->gen != key.gen) {
            p->mixed = 1;
        }
        p->hits += 1;
    }

    u64 error = 0;
    struct rpc_failed *f = failed.lookup(&zero);
    if (f && f->valid) {
        f->valid = 0;
        error = f->task_id == args->task_id && f->clid == args->client_id &&
                f->tid == (u32)bpf_get_current_pid_tgid();
    }

    struct rpc_stats *s = rpc_entry(&key);
    if (!s)
        return 0;
    u64 queue = (u64)args->backlog * 1000;
    u64 rtt = (u64)args->rtt * 1000;
    u64 execute = (u64)args->execute * 1000;
    __sync_fetch_and_add(&s->count, 1);
    if (error)
        __sync_fetch_and_add(&s->errors, 1);
    __sync_fetch_and_add(&s->queue_ns, queue);
    __sync_fetch_and_add(&s->rtt_ns, rtt);
    __sync_fetch_and_add(&s->execute_ns, execute);
    u32 b = rpc_bucket(queue);
    if (b < RPC_SLOTS)
        __sync_fetch_and_add(&s->queue[b], 1);
    b = rpc_bucket(rtt);
    if (b < RPC_SLOTS)
        __sync_fetch_and_add(&s->rtt[b], 1);
    b = rpc_bucket(execute);
    if (b < RPC_SLOTS)
        __sync_fetch_and_add(&s->execute[b], 1);
    b = seed_bucket(rtt);
    if (b < SEED_SLOTS)
        __sync_fetch_and_add(&s->seed_rtt[b], 1);
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__sunrpc__rpc_task_end
/* Errors as mountstats counts them (tk_status < 0 when the task is counted). */
TRACEPOINT_PROBE(sunrpc, rpc_task_end)
{
    if (args->status >= 0)
        return 0;
    u32 zero = 0;
    struct rpc_failed *f = failed.lookup(&zero);
    if (f) {
        f->tid = (u32)bpf_get_current_pid_tgid();
        f->task_id = args->task_id;
        f->clid = args->client_id;
        f->valid = 1;
    }
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__sunrpc__xprt_retransmit
/* One per retransmission of a request (mountstats: ntrans - ops). */
TRACEPOINT_PROBE(sunrpc, xprt_retransmit)
{
    struct rpc_key key = {};
    rpc_make_key(&key, args, args->client_id, args->data_loc_procname);
    struct rpc_stats *s = rpc_entry(&key);
    if (s)
        __sync_fetch_and_add(&s->retransmits, 1);
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__sunrpc__rpc_clnt_free
/* The client is gone and its id may be handed out again: later RPCs under
 * this id belong to another client. */
TRACEPOINT_PROBE(sunrpc, rpc_clnt_free)
{
    u32 clid = args->client_id;
    u32 *gen = client_gen.lookup(&clid);
    if (gen)
        __sync_fetch_and_add(gen, 1);
    return 0;
}
#endif
