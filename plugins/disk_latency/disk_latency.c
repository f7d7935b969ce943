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
// Either way in-flight requests live in an LRU map: a request whose
// completion we never see (requeue, batched completion path) is evicted
// instead of filling the map and silently stopping the measurement.

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
    struct side_stats side[2];  // OP_READ, OP_WRITE
};

struct inflight {
    u64 start_ns;
    u32 bytes;
    u32 op;
    u32 dev;
    u32 pad;
};

BPF_HASH(disk_stats, u32, struct dev_stats, CME_MAX_DEVICES);

/*@BUCKET_FUNCTION@*/

static __always_inline void record(u32 dev, u32 op, u64 bytes, u64 ns, int failed)
{
    struct dev_stats *st = disk_stats.lookup(&dev);
    if (!st) {
        struct dev_stats zero = {};
        // NOEXIST: when two CPUs race to create the entry, the loser's
        // insert fails and it adds to the winner's entry below.
        disk_stats.insert(&dev, &zero);
        st = disk_stats.lookup(&dev);
        if (!st)
            return;
    }
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

#if defined(CME_WANT_tracepoint__block__block_rq_issue) || defined(CME_WANT_tracepoint__block__block_rq_complete)
struct tp_key {
    u32 dev;
    u32 pad;
    u64 sector;
};

BPF_TABLE("lru_hash", struct tp_key, struct inflight, inflight_tp, CME_MAX_INFLIGHT);

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
    int op = op_from_rwbs(args->rwbs[0], args->rwbs[1]);
    if (op < 0 || args->dev == 0)
        return 0;
    struct tp_key key = {};
    key.dev = args->dev;
    key.sector = args->sector;
    struct inflight v = {};
    v.start_ns = bpf_ktime_get_ns();
    v.bytes = args->bytes;
    v.op = op;
    v.dev = args->dev;
    inflight_tp.update(&key, &v);
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__block__block_rq_complete
TRACEPOINT_PROBE(block, block_rq_complete)
{
    struct tp_key key = {};
    key.dev = args->dev;
    key.sector = args->sector;
    struct inflight *v = inflight_tp.lookup(&key);
    if (!v)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct inflight seen = *v;
    inflight_tp.delete(&key);
    if (now < seen.start_ns)
        return 0;
    record(seen.dev, seen.op, seen.bytes, now - seen.start_ns, args->error != 0);
    return 0;
}
#endif

#if defined(CME_WANT_kprobe_blk_mq_start_request) || defined(CME_WANT_kprobe_blk_mq_end_request)
BPF_TABLE("lru_hash", u64, struct inflight, inflight_kp, CME_MAX_INFLIGHT);
#endif

#ifdef CME_WANT_kprobe_blk_mq_start_request
int kprobe_blk_mq_start_request(struct pt_regs *ctx, struct request *rq)
{
    u32 op = rq->cmd_flags & REQ_OP_MASK;
    if (op != REQ_OP_READ && op != REQ_OP_WRITE)
        return 0;
    struct block_device *part = rq->part;
    if (!part)
        return 0;
    // Whole-disk dev_t in the kernel's encoding, as the tracepoints report
    // it, so partition I/O counts for its disk on both paths.
    struct gendisk *disk = part->bd_disk;
    u32 dev = ((u32)disk->major << 20) | (u32)disk->first_minor;
    if (dev == 0)
        return 0;
    u64 key = (u64)rq;
    struct inflight v = {};
    v.start_ns = bpf_ktime_get_ns();
    v.bytes = rq->__data_len;
    v.op = op == REQ_OP_WRITE ? OP_WRITE : OP_READ;
    v.dev = dev;
    inflight_kp.update(&key, &v);
    return 0;
}
#endif

#ifdef CME_WANT_kprobe_blk_mq_end_request
int kprobe_blk_mq_end_request(struct pt_regs *ctx, struct request *rq, blk_status_t error)
{
    u64 key = (u64)rq;
    struct inflight *v = inflight_kp.lookup(&key);
    if (!v)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct inflight seen = *v;
    inflight_kp.delete(&key);
    if (now < seen.start_ns)
        return 0;
    record(seen.dev, seen.op, seen.bytes, now - seen.start_ns, error != 0);
    return 0;
}
#endif
