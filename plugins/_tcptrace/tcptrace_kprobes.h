/* Fallback for kernels without the sock:sock_send_length /
 * sock:sock_recv_length tracepoints (before 6.3) or the others: the same
 * hooks fed from kprobes, each compiled only when the eBPF runtime chose it
 * (CME_WANT_<function>). The including
 * program defines on_send, on_recv, on_retransmit and on_close.
 */

static __always_inline u16 tt_sock_family(void *sk)
{
    u16 family = 0;
    bpf_probe_read_kernel(&family, sizeof(family), (char *)sk + SKC_FAMILY_OFF);
    return family;
}

static __always_inline u16 tt_sock_dport(void *sk)
{
    u16 dport_be = 0;
    bpf_probe_read_kernel(&dport_be, sizeof(dport_be), (char *)sk + SKC_DPORT_OFF);
    return bpf_ntohs(dport_be);
}

#if defined(CME_WANT_kp_tcp_sendmsg) || defined(CME_WANT_kr_tcp_sendmsg)
/* tcp_sendmsg's result is only known at return; the entry remembers the
 * socket of a matching call (only of a matching call, so unrelated sends
 * cost one failed lookup at return). */
BPF_HASH(tt_pending_send, u64, u64, 4096);

int kp_tcp_sendmsg(struct pt_regs *ctx)
{
    void *sk = (void *)PT_REGS_PARM1(ctx);
    if (!tt_match_sock(sk, tt_sock_family(sk)))
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u64 skv = (u64)sk;
    tt_pending_send.update(&id, &skv);
    return 0;
}

int kr_tcp_sendmsg(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 *skp = tt_pending_send.lookup(&id);
    if (!skp)
        return 0;
    void *sk = (void *)*skp;
    tt_pending_send.delete(&id);
    int ret = PT_REGS_RC(ctx);
    if (ret > 0)
        on_send(sk, tt_sock_family(sk), ret);
    return 0;
}
#endif

#ifdef CME_WANT_kp_tcp_cleanup_rbuf
int kp_tcp_cleanup_rbuf(struct pt_regs *ctx)
{
    void *sk = (void *)PT_REGS_PARM1(ctx);
    int copied = (int)PT_REGS_PARM2(ctx);
    if (copied > 0)
        on_recv(sk, tt_sock_family(sk), copied);
    return 0;
}
#endif

#ifdef CME_WANT_kp_tcp_retransmit_skb
int kp_tcp_retransmit_skb(struct pt_regs *ctx)
{
    void *sk = (void *)PT_REGS_PARM1(ctx);
    u16 family = tt_sock_family(sk);
    struct addr16 a = {};
    if (family == TT_AF_INET) {
        u32 daddr = 0;
        bpf_probe_read_kernel(&daddr, sizeof(daddr), (char *)sk + SKC_DADDR_OFF);
        tt_v4_to_addr16(daddr, &a);
    } else if (family == TT_AF_INET6) {
        bpf_probe_read_kernel(&a, sizeof(a), (char *)sk + SKC_V6_DADDR_OFF);
    } else {
        return 0;
    }
    on_retransmit(tt_sock_dport(sk), &a);
    return 0;
}
#endif

#ifdef CME_WANT_kp_tcp_v4_destroy_sock
/* tcp_v6_destroy_sock calls tcp_v4_destroy_sock, so this sees both families. */
int kp_tcp_v4_destroy_sock(struct pt_regs *ctx)
{
    void *sk = (void *)PT_REGS_PARM1(ctx);
    on_close(sk, tt_sock_family(sk));
    return 0;
}
#endif
