/* Fallback for kernels without the sock:sock_send_length /
 * sock:sock_recv_length tracepoints (before 6.3) or the others: the same
 * hooks fed from kprobes, each compiled only when the eBPF runtime chose it
 * (CME_WANT_<function>). The including
 * program defines on_send, on_recv, on_retransmit and on_close.
 */

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
/* On entry: counts attempts (a failed one too) with the skb's segments
 * before the kernel may split it, so it approximates TcpRetransSegs where
 * the tracepoint counts it exactly. */
int kp_tcp_retransmit_skb(struct pt_regs *ctx)
{
    struct addr16 a = {};
    u16 dport = tt_sock_peer((void *)PT_REGS_PARM1(ctx), &a);
    if (dport)
        on_retransmit(dport, &a, tt_skb_segments((void *)PT_REGS_PARM2(ctx)));
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
