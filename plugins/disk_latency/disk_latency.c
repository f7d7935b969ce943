// Block I/O latency per disk, from the first issue of a request to the
// device until its completion, kept in the kernel as per-bucket counts with
// exact sums. Compiled by bcc at exporter start-up.
//
// Four attach variants of the same three programs (issue, requeue,
// complete); the runtime attaches all three by one method, the first this
// kernel offers, and defines CME_WANT_<fn> only for the variants it compiles:
//   tp_btf (btf_*):     the tracepoints' raw arguments, typed by the kernel's
//     BTF: struct request fields are plain loads. Preferred: cheapest, and
//     the kernel skips it only when the same program is already running on
//     that CPU (counted in recursion_misses), never because another BPF
//     program is running.
//   raw tracepoint (raw_*): the same arguments untyped; fields are read
//     with bpf_probe_read_kernel. For kernels that refuse the tp_btf load.
//   tracepoint (tracepoint__block__*): the perf-event tracepoints, whose
//     records carry (dev, sector) but not the request; skipped whenever any
//     perf-event BPF program runs on the CPU. For kernels without BTF.
//   kprobe (kprobe_*): blk_mq_start_request / blk_mq_requeue_request /
//     blk_mq_end_request, for kernels without the block tracepoints.
//
// The request-based variants read struct request at offsets the loader
// takes from the running kernel's BTF (CME_RQ_*, CME_Q_DISK, CME_DISK_*);
// the kernel headers bcc compiles against may belong to another release.
//
// What is counted, so that the histogram's _count plus the untimed counter
// equals the read/write completions /proc/diskstats counts:
//   * bytes at every completion event of a read or write (partial ones and
//     the data phase of a flush sequence too), as diskstats counts sectors;
//   * one completion per request, at its final completion event: not the
//     data phase of a write with pre-flush/FUA (RQF_FLUSH_SEQ is still set
//     then; diskstats counts the request when the sequence ends), not a
//     partial completion (fewer bytes than the request still has);
//   * a final completion whose issue was never seen is "untimed": the empty
//     write an fsync sends as pre-flush is completed by the flush machinery
//     without ever being issued to the device, and diskstats counts it as a
//     write. The perf-event variant cannot tell these apart (its records
//     have no request flags): it counts only completions it saw issued.
//   * a requeued request keeps the time of its first issue: the requeue
//     marks its in-flight entry, and the next issue of a marked entry leaves
//     the start alone (an unmarked entry of the same request is stale and
//     restarts).
//
// Cost matters: these programs run twice per I/O on every disk. The hot path
// makes one helper call per event (the clock): in-flight requests live in a
// four-way set-associative table in an ARRAY map (lookups are inlined by the
// JIT; one set is one 64-byte line), per-disk statistics in ARRAY slots whose
// owner disk the exporter assigns. The in-flight table evicts like an LRU
// map: when a set is full the oldest request in it is dropped (its
// completion then counts as untimed), so lost completions never fill it.

#include <uapi/linux/ptrace.h>

#define OP_READ 0
#define OP_WRITE 1
// The request op is the low byte of cmd_flags (REQ_OP_MASK); /proc/diskstats
// groups ops by direction (odd: write, even: read) except discards (their own
// columns), flushes (theirs) and driver passthrough (not counted). The numbers
// are the same in every kernel since the ops were split from the flags (4.10).
#define REQ_OP_MASK_BITS 0xff
#define REQ_OP_FLUSH 2
#define REQ_OP_DISCARD 3
#define REQ_OP_DRV_IN 34

struct side_stats {
    u64 bytes;
    u64 latency_ns;
    u64 errors;
    u64 untimed;  // final completions whose issue was not seen
    u64 buckets[CME_NBUCKETS];  // finite bounds, then the overflow bucket
};

struct dev_stats {
    u32 dev;  // owner of an ARRAY slot (0: free); the exporter writes it
    u32 pad;
    struct side_stats side[2];  // OP_READ, OP_WRITE
};

// 16 bytes: four ways of a set share a cache line. The key itself is not
// stored, only a 32-bit fingerprint of it (never 0); a false match needs two
// requests in flight in the same set with equal fingerprints.
struct inflight {
    u32 fp;
    u32 flags;     // INFLIGHT_REQUEUED
    u64 start_ns;  // 0: way free
};

#define INFLIGHT_WAYS 4
#define INFLIGHT_REQUEUED 1

// Slots for the disks the exporter reports, assigned by the exporter (two
// candidate slots per dev_t, see dev_slot()); any other disk lands in the
// hash map, which costs a helper call but loses nothing.
BPF_ARRAY(disk_slots, struct dev_stats, CME_DEVICE_SLOTS);
BPF_HASH(disk_other, u32, struct dev_stats, CME_MAX_DEVICES);
BPF_ARRAY(inflight, struct inflight, CME_INFLIGHT_SLOTS);

static __always_inline u32 dev_slot(u32 dev)
{
    return ((u32)(dev * 2654435761u) >> 16) & (CME_DEVICE_SLOTS - 1);
}

static __always_inline u64 inflight_hash(u64 id, u32 tag)
{
    return (id ^ ((u64)tag << 40) ^ ((u64)tag >> 24)) * 0x9E3779B97F4A7C15ULL;
}

/*@BUCKET_FUNCTION@*/

static __always_inline struct dev_stats *stats_for(u32 dev)
{
    u32 i0 = dev_slot(dev);
    u32 i1 = (i0 + 1) & (CME_DEVICE_SLOTS - 1);
    struct dev_stats *st = disk_slots.lookup(&i0);
    if (st && st->dev == dev)
        return st;
    st = disk_slots.lookup(&i1);
    if (st && st->dev == dev)
        return st;
    st = disk_other.lookup(&dev);
    if (st)
        return st;
    struct dev_stats zero = {};
    zero.dev = dev;
    // NOEXIST: when two CPUs race to create the entry, the loser's insert
    // fails and it adds to the winner's entry.
    disk_other.insert(&dev, &zero);
    return disk_other.lookup(&dev);
}

// A request was issued to the device. `id`/`tag` identify it: the request's
// address (tag 0), or for the perf-event variant its start sector and dev.
static __always_inline void on_issue(u64 id, u32 tag)
{
    u64 h = inflight_hash(id, tag);
    u32 base = (u32)(h >> 32) & (CME_INFLIGHT_SLOTS - INFLIGHT_WAYS);
    u32 fp = (u32)h | 1;
    struct inflight *same = 0, *free = 0, *oldest = 0;
    u64 oldest_ns = ~0ULL;
#pragma unroll
    for (u32 w = 0; w < INFLIGHT_WAYS; w++) {
        u32 i = base + w;
        struct inflight *e = inflight.lookup(&i);
        if (!e)
            return;
        if (e->start_ns == 0) {
            if (!free)
                free = e;
        } else if (e->fp == fp) {
            same = e;
        } else if (e->start_ns < oldest_ns) {
            oldest_ns = e->start_ns;
            oldest = e;
        }
    }
    if (same && (same->flags & INFLIGHT_REQUEUED)) {
        // Dispatched again after a requeue: keep timing from the first issue.
        same->flags = 0;
        return;
    }
    struct inflight *e = same ? same : (free ? free : oldest);
    if (!e)
        return;
    e->fp = fp;
    e->flags = 0;
    e->start_ns = bpf_ktime_get_ns();
}

static __always_inline struct inflight *inflight_find(u64 id, u32 tag)
{
    u64 h = inflight_hash(id, tag);
    u32 base = (u32)(h >> 32) & (CME_INFLIGHT_SLOTS - INFLIGHT_WAYS);
    u32 fp = (u32)h | 1;
#pragma unroll
    for (u32 w = 0; w < INFLIGHT_WAYS; w++) {
        u32 i = base + w;
        struct inflight *e = inflight.lookup(&i);
        if (!e)
            return 0;
        if (e->start_ns != 0 && e->fp == fp)
            return e;
    }
    return 0;
}

// The request goes back to the queue; its next issue keeps the first start.
static __always_inline void on_requeue(u64 id, u32 tag)
{
    struct inflight *e = inflight_find(id, tag);
    if (e)
        e->flags = INFLIGHT_REQUEUED;
}

// A completion event of a read or write: `bytes` finished now; `final` when
// it ends the request as /proc/diskstats counts it.
static __always_inline void on_complete(u64 id, u32 tag, u32 dev, u32 op, u64 bytes, int final, int failed)
{
    struct dev_stats *st = stats_for(dev);
    if (!st)
        return;
    struct side_stats *s = &st->side[op & 1];
    if (bytes)
        __sync_fetch_and_add(&s->bytes, bytes);
    if (!final)
        return;
    if (failed)
        __sync_fetch_and_add(&s->errors, 1);
    struct inflight *e = inflight_find(id, tag);
    u64 start = e ? e->start_ns : 0;
    if (e)
        e->start_ns = 0;
    u64 now = bpf_ktime_get_ns();
    if (start == 0 || now < start) {
        __sync_fetch_and_add(&s->untimed, 1);
        return;
    }
    u64 ns = now - start;
    __sync_fetch_and_add(&s->latency_ns, ns);
    u32 b = bucket_of(ns);
    if (b >= CME_NBUCKETS)
        b = CME_NBUCKETS - 1;
    __sync_fetch_and_add(&s->buckets[b], 1);
}

// --- request-based variants (tp_btf, raw tracepoint, kprobe) ---------------

#if defined(CME_WANT_btf_block_rq_issue) || defined(CME_WANT_btf_block_rq_requeue) || \
    defined(CME_WANT_btf_block_rq_complete)
#define CME_BTF_VARIANT 1
#endif
#if defined(CME_WANT_raw_block_rq_issue) || defined(CME_WANT_raw_block_rq_requeue) || \
    defined(CME_WANT_raw_block_rq_complete) || defined(CME_WANT_kprobe_blk_mq_start_request) || \
    defined(CME_WANT_kprobe_blk_mq_requeue_request) || defined(CME_WANT_kprobe_blk_mq_end_request)
#define CME_PROBE_VARIANT 1
#endif
#if defined(CME_BTF_VARIANT) || defined(CME_PROBE_VARIANT)
#define CME_REQUEST_VARIANTS 1
#endif

#ifndef CME_RQF_FLUSH_SEQ_BIT
// Kernels that define the request flags as macros (6.1 among them) have
// RQF_FLUSH_SEQ = 1 << 4; newer ones an enum (__RQF_FLUSH_SEQ, 1 on 6.18)
// that the loader reads from BTF.
#define CME_RQF_FLUSH_SEQ_BIT 4
#endif

#ifdef CME_REQUEST_VARIANTS
struct rq_view {
    u32 cmd_flags;
    u32 rq_flags;
    u32 data_len;  // bytes not yet completed
    u32 dev;       // whole-disk dev_t as the tracepoints report it (0: none)
};

static __always_inline u32 disk_dev(u32 major, u32 first_minor)
{
    return (major << 20) | first_minor;
}

// OP_READ / OP_WRITE as /proc/diskstats counts the request, or -1.
static __always_inline int rq_op(u32 cmd_flags)
{
    u32 op = cmd_flags & REQ_OP_MASK_BITS;
    if (op == REQ_OP_FLUSH || op == REQ_OP_DISCARD || op >= REQ_OP_DRV_IN)
        return -1;
    return op & 1;
}

// Final as /proc/diskstats counts a completion: not inside a flush sequence
// (the request is counted when the sequence ends) and no bytes left after it.
static __always_inline int rq_final(struct rq_view *v, u32 nr_bytes)
{
    return !(v->rq_flags & (1u << CME_RQF_FLUSH_SEQ_BIT)) && nr_bytes >= v->data_len;
}
#endif

#ifdef CME_BTF_VARIANT
// The verifier allows no arithmetic on a BTF-typed pointer (hashing it)
// except subtracting another pointer, which yields a plain number: the
// request's distance from a fixed map address identifies it as well as its
// address does.
static __always_inline u64 rq_id(void *rq)
{
    u32 zero = 0;
    struct inflight *base = inflight.lookup(&zero);
    return base ? (u64)rq - (u64)base : 0;
}

// tp_btf: the verifier knows `rq` is a struct request (BTF) and turns these
// loads into exception-handled direct reads; no helper calls.
static __always_inline void rq_read_direct(void *rq, struct rq_view *v, int with_dev)
{
    v->cmd_flags = *(u32 *)((char *)rq + CME_RQ_CMD_FLAGS);
    v->rq_flags = *(u32 *)((char *)rq + CME_RQ_RQ_FLAGS);
    v->data_len = *(u32 *)((char *)rq + CME_RQ_DATA_LEN);
    v->dev = 0;
    if (!with_dev)
        return;
    void *q = *(void **)((char *)rq + CME_RQ_Q);
    if (!q)
        return;
    void *disk = *(void **)((char *)q + CME_Q_DISK);
    if (!disk)
        return;
    v->dev = disk_dev(*(u32 *)((char *)disk + CME_DISK_MAJOR), *(u32 *)((char *)disk + CME_DISK_FIRST_MINOR));
}
#endif

#ifdef CME_PROBE_VARIANT
// Raw tracepoints and kprobes see the request as a plain number: every
// field is a bpf_probe_read_kernel.
static __always_inline u32 probe_u32(u64 base, u32 off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

static __always_inline u64 probe_u64(u64 base, u32 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

static __always_inline void rq_read_probe(u64 rq, struct rq_view *v, int with_dev)
{
    v->cmd_flags = probe_u32(rq, CME_RQ_CMD_FLAGS);
    v->rq_flags = probe_u32(rq, CME_RQ_RQ_FLAGS);
    v->data_len = probe_u32(rq, CME_RQ_DATA_LEN);
    v->dev = 0;
    if (!with_dev)
        return;
    u64 q = probe_u64(rq, CME_RQ_Q);
    u64 disk = q ? probe_u64(q, CME_Q_DISK) : 0;
    if (disk)
        v->dev = disk_dev(probe_u32(disk, CME_DISK_MAJOR), probe_u32(disk, CME_DISK_FIRST_MINOR));
}
#endif

#ifdef CME_REQUEST_VARIANTS
static __always_inline void rq_issue(u64 rq, struct rq_view *v)
{
    if (rq_op(v->cmd_flags) >= 0)
        on_issue(rq, 0);
}

static __always_inline void rq_complete(u64 rq, struct rq_view *v, u32 nr_bytes, int failed)
{
    int op = rq_op(v->cmd_flags);
    if (op < 0 || v->dev == 0)
        return;
    on_complete(rq, 0, v->dev, op, nr_bytes, rq_final(v, nr_bytes), failed);
}
#endif

// block_rq_issue(struct request *rq)
#ifdef CME_WANT_btf_block_rq_issue
int btf_block_rq_issue(u64 *ctx)
{
    void *rq = (void *)ctx[0];
    struct rq_view v;
    rq_read_direct(rq, &v, 0);
    rq_issue(rq_id(rq), &v);
    return 0;
}
#endif

// block_rq_requeue(struct request *rq)
#ifdef CME_WANT_btf_block_rq_requeue
int btf_block_rq_requeue(u64 *ctx)
{
    on_requeue(rq_id((void *)ctx[0]), 0);
    return 0;
}
#endif

// block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)
#ifdef CME_WANT_btf_block_rq_complete
int btf_block_rq_complete(u64 *ctx)
{
    void *rq = (void *)ctx[0];
    struct rq_view v;
    rq_read_direct(rq, &v, 1);
    rq_complete(rq_id(rq), &v, (u32)ctx[2], (u8)ctx[1] != 0);
    return 0;
}
#endif

#ifdef CME_WANT_raw_block_rq_issue
int raw_block_rq_issue(u64 *ctx)
{
    struct rq_view v;
    rq_read_probe(ctx[0], &v, 0);
    rq_issue(ctx[0], &v);
    return 0;
}
#endif

#ifdef CME_WANT_raw_block_rq_requeue
int raw_block_rq_requeue(u64 *ctx)
{
    on_requeue(ctx[0], 0);
    return 0;
}
#endif

#ifdef CME_WANT_raw_block_rq_complete
int raw_block_rq_complete(u64 *ctx)
{
    struct rq_view v;
    rq_read_probe(ctx[0], &v, 1);
    rq_complete(ctx[0], &v, (u32)ctx[2], (u8)ctx[1] != 0);
    return 0;
}
#endif

#ifdef CME_WANT_kprobe_blk_mq_start_request
int kprobe_blk_mq_start_request(struct pt_regs *ctx)
{
    u64 rq = PT_REGS_PARM1(ctx);
    struct rq_view v;
    rq_read_probe(rq, &v, 0);
    rq_issue(rq, &v);
    return 0;
}
#endif

#ifdef CME_WANT_kprobe_blk_mq_requeue_request
int kprobe_blk_mq_requeue_request(struct pt_regs *ctx)
{
    on_requeue(PT_REGS_PARM1(ctx), 0);
    return 0;
}
#endif

#ifdef CME_WANT_kprobe_blk_mq_end_request
// Entered before the request is updated: it completes all its bytes.
int kprobe_blk_mq_end_request(struct pt_regs *ctx)
{
    u64 rq = PT_REGS_PARM1(ctx);
    struct rq_view v;
    rq_read_probe(rq, &v, 1);
    rq_complete(rq, &v, v.data_len, (u8)PT_REGS_PARM2(ctx) != 0);
    return 0;
}
#endif

// --- perf-event tracepoints, keyed by (dev, sector) ------------------------

#if defined(CME_WANT_tracepoint__block__block_rq_issue) || defined(CME_WANT_tracepoint__block__block_rq_complete)
// rwbs is "[F]<op>[F][A][S][M]": a leading F is a pre-flush flag only when
// another op letter follows it. Only R and W are counted: the rarer ops
// diskstats also counts as writes (write-zeroes, zone ops: "N"; secure
// erase: "DE") cannot be told from those it does not count.
static __always_inline int op_from_rwbs(char c0, char c1)
{
    char op = c0;
    if (c0 == 'F' && (c1 == 'W' || c1 == 'R'))
        op = c1;
    if (op == 'R')
        return OP_READ;
    if (op == 'W')
        return OP_WRITE;
    return -1;
}
#endif

#ifdef CME_WANT_tracepoint__block__block_rq_issue
TRACEPOINT_PROBE(block, block_rq_issue)
{
    if (args->dev == 0 || op_from_rwbs(args->rwbs[0], args->rwbs[1]) < 0)
        return 0;
    on_issue(args->sector, args->dev);
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__block__block_rq_requeue
TRACEPOINT_PROBE(block, block_rq_requeue)
{
    on_requeue(args->sector, args->dev);
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__block__block_rq_complete
TRACEPOINT_PROBE(block, block_rq_complete)
{
    int op = op_from_rwbs(args->rwbs[0], args->rwbs[1]);
    if (op < 0 || args->dev == 0)
        return 0;
    // Without the request's flags a completion is only counted when its
    // issue was seen (see the top of this file).
    if (!inflight_find(args->sector, args->dev))
        return 0;
    // nr_sector is what this completion finished, as /proc/diskstats counts it.
    on_complete(args->sector, args->dev, args->dev, op, (u64)args->nr_sector << 9, 1, args->error != 0);
    return 0;
}
#endif
