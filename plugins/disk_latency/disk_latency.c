// Block I/O latency per disk, issue to completion, kept in the kernel as
// per-bucket counts with exact sums. Compiled by bcc at exporter start-up.
//
// Two attach variants; the runtime defines CME_WANT_<fn> for the ones it
// compiles:
//   tracepoints block:block_rq_issue / block:block_rq_complete (preferred:
//     a stable ABI whose argument layout bcc reads from tracefs), keyed by
//     (dev, sector) because the tracepoints do not expose the request;
//   kprobes on blk_mq_start_request / blk_mq_end_request (fallback for
//     kernels without the tracepoints), keyed by the request pointer.
//
// Cost matters: these programs run twice per I/O on every disk. On the
// reference VM each helper call (hash-map lookup/update/delete, ktime) costs
// 60-130 ns, and a first version built on hash maps cost 6x an empty program.
// So the hot path makes exactly one helper call per event (the clock):
// in-flight requests live in a small four-way set-associative table in an
// ARRAY map (lookups are inlined by the JIT; one set is one 64-byte line),
// and per-disk statistics in ARRAY slots whose owner disk the exporter
// assigns. The in-flight table evicts like an LRU map: when a set is full
// the oldest request in it is dropped, so a request whose completion is
// never seen (requeue, a batched completion path) can never fill the table.

#include <uapi/linux/ptrace.h>
#if defined(CME_WANT_kprobe_blk_mq_start_request) || defined(CME_WANT_kprobe_blk_mq_end_request)
#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#endif

#define OP_READ 0
#define OP_WRITE 1

struct side_stats {
    u64 bytes;
    u64 latency_ns;
    u64 errors;
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
    u32 aux;       // kprobes: request bytes (the tracepoints report them at completion)
    u64 start_ns;  // 0: way free
};

#define INFLIGHT_WAYS 4

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

static __always_inline void record(u32 dev, u32 op, u64 bytes, u64 ns, int failed)
{
    struct dev_stats *st = stats_for(dev);
    if (!st)
        return;
    struct side_stats *s = &st->side[op & 1];
    __sync_fetch_and_add(&s->bytes, bytes);
    __sync_fetch_and_add(&s->latency_ns, ns);
    if (failed)
        __sync_fetch_and_add(&s->errors, 1);
    u32 b = bucket_of(ns);
    if (b >= CME_NBUCKETS)
        b = CME_NBUCKETS - 1;
    __sync_fetch_and_add(&s->buckets[b], 1);
}

static __always_inline void io_start(u64 id, u32 tag, u32 aux)
{
    u64 h = inflight_hash(id, tag);
    u32 base = (u32)(h >> 32) & (CME_INFLIGHT_SLOTS - INFLIGHT_WAYS);
    u32 fp = (u32)h | 1;
    struct inflight *victim = 0;
    u64 oldest = ~0ULL;
#pragma unroll
    for (u32 w = 0; w < INFLIGHT_WAYS; w++) {
        u32 i = base + w;
        struct inflight *e = inflight.lookup(&i);
        if (!e)
            return;
        if (e->start_ns == 0 || e->fp == fp) {
            victim = e;
            break;
        }
        if (e->start_ns < oldest) {
            oldest = e->start_ns;
            victim = e;
        }
    }
    if (!victim)
        return;
    victim->fp = fp;
    victim->aux = aux;
    victim->start_ns = bpf_ktime_get_ns();
}

// Finds and frees the request's way; returns its start time (0: not found).
static __always_inline u64 io_take(u64 id, u32 tag, u32 *aux)
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
        if (e->start_ns != 0 && e->fp == fp) {
            u64 start = e->start_ns;
            *aux = e->aux;
            e->start_ns = 0;
            return start;
        }
    }
    return 0;
}

static __always_inline void io_done(u32 dev, u32 op, u64 bytes, u64 start, int failed)
{
    u64 now = bpf_ktime_get_ns();
    if (start == 0 || now < start)
        return;
    record(dev, op, bytes, now - start, failed);
}

#if defined(CME_WANT_tracepoint__block__block_rq_issue) || defined(CME_WANT_tracepoint__block__block_rq_complete)
// rwbs is "[F]<op>[F][A][S][M]": a leading F is a pre-flush flag only when
// another op letter follows it. Only plain reads and writes are timed,
// like the read/write columns of /proc/diskstats.
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
    io_start(args->sector, args->dev, 0);
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__block__block_rq_complete
TRACEPOINT_PROBE(block, block_rq_complete)
{
    u32 aux;
    u64 start = io_take(args->sector, args->dev, &aux);
    if (start == 0)
        return 0;
    int op = op_from_rwbs(args->rwbs[0], args->rwbs[1]);
    if (op < 0)
        return 0;
    // nr_sector is what this completion finished, as /proc/diskstats counts it.
    io_done(args->dev, op, (u64)args->nr_sector << 9, start, args->error != 0);
    return 0;
}
#endif

#if defined(CME_WANT_kprobe_blk_mq_start_request) || defined(CME_WANT_kprobe_blk_mq_end_request)
// Whole-disk dev_t in the kernel's encoding, as the tracepoints report it,
// so partition I/O counts for its disk on both paths; 0 for passthrough.
static __always_inline u32 rq_disk_dev(struct request *rq)
{
    struct block_device *part = rq->part;
    if (!part)
        return 0;
    struct gendisk *disk = part->bd_disk;
    return ((u32)disk->major << 20) | (u32)disk->first_minor;
}

static __always_inline int rq_op(struct request *rq)
{
    u32 op = rq->cmd_flags & REQ_OP_MASK;
    if (op == REQ_OP_READ)
        return OP_READ;
    if (op == REQ_OP_WRITE)
        return OP_WRITE;
    return -1;
}
#endif

#ifdef CME_WANT_kprobe_blk_mq_start_request
int kprobe_blk_mq_start_request(struct pt_regs *ctx, struct request *rq)
{
    if (rq_op(rq) < 0 || rq_disk_dev(rq) == 0)
        return 0;
    io_start((u64)rq, 0, rq->__data_len);
    return 0;
}
#endif

#ifdef CME_WANT_kprobe_blk_mq_end_request
int kprobe_blk_mq_end_request(struct pt_regs *ctx, struct request *rq, blk_status_t error)
{
    u32 bytes;
    u64 start = io_take((u64)rq, 0, &bytes);
    if (start == 0)
        return 0;
    int op = rq_op(rq);
    u32 dev = rq_disk_dev(rq);
    if (op < 0 || dev == 0)
        return 0;
    io_done(dev, op, bytes, start, error != 0);
    return 0;
}
#endif
