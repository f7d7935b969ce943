/* The hooks on stable tracepoints; each compiled only when the eBPF runtime
 * chose it on this kernel (CME_WANT_<function>). The including program
 * defines on_send, on_recv, on_retransmit and on_close.
 *
 * Two kinds per tracepoint: tp_btf (btf_<event>, preferred: the kernel
 * skips it only when the same program is already running on that CPU, and
 * it reads the socket with plain loads) and the perf-event tracepoint
 * (tracepoint__<category>__<event>, for kernels without BTF).
 *
 * tcp_retransmit_skb: counted in segments (the skb's tcp_skb_pcount, what
 * the kernel adds to TcpRetransSegs), and only for attempts that went out:
 * where the tracepoint has an `err` argument (TT_RETRANSMIT_ERR) it also
 * fires for failed attempts, which TcpRetransSegs does not count either
 * (or counts in TCPRetransFail too).
 */

#ifdef CME_WANT_btf_sock_send_length
/* sock_send_length(struct sock *sk, int ret, int flags) */
int btf_sock_send_length(u64 *ctx)
{
    void *sk = (void *)ctx[0];
    int ret = (int)ctx[1];
    if (ret <= 0 || *(u16 *)((char *)sk + SK_PROTOCOL_OFF) != TT_IPPROTO_TCP)
        return 0;
    on_send(tt_btf_address(sk), *(u16 *)((char *)sk + SKC_FAMILY_OFF), ret);
    return 0;
}
#endif

#ifdef CME_WANT_btf_sock_recv_length
/* sock_recv_length(struct sock *sk, int ret, int flags) */
int btf_sock_recv_length(u64 *ctx)
{
    void *sk = (void *)ctx[0];
    int ret = (int)ctx[1];
    if (ret <= 0 || ((int)ctx[2] & TT_MSG_PEEK) || *(u16 *)((char *)sk + SK_PROTOCOL_OFF) != TT_IPPROTO_TCP)
        return 0;
    on_recv(tt_btf_address(sk), *(u16 *)((char *)sk + SKC_FAMILY_OFF), ret);
    return 0;
}
#endif

#ifdef CME_WANT_btf_tcp_retransmit_skb
/* tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb[, int err]) */
int btf_tcp_retransmit_skb(u64 *ctx)
{
#ifdef TT_RETRANSMIT_ERR
    if ((int)ctx[2] != 0)
        return 0;
#endif
    struct addr16 a = {};
    u16 dport = tt_sock_peer((void *)ctx[0], &a);
    if (dport)
        on_retransmit(dport, &a, tt_skb_segments((void *)ctx[1]));
    return 0;
}
#endif

#ifdef CME_WANT_btf_tcp_destroy_sock
/* tcp_destroy_sock(struct sock *sk) */
int btf_tcp_destroy_sock(u64 *ctx)
{
    void *sk = (void *)ctx[0];
    on_close(tt_btf_address(sk), *(u16 *)((char *)sk + SKC_FAMILY_OFF));
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__sock__sock_send_length
TRACEPOINT_PROBE(sock, sock_send_length)
{
    if (args->protocol != TT_IPPROTO_TCP || args->ret <= 0)
        return 0;
    on_send(args->sk, args->family, args->ret);
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__sock__sock_recv_length
TRACEPOINT_PROBE(sock, sock_recv_length)
{
    if (args->protocol != TT_IPPROTO_TCP || args->ret <= 0 || (args->flags & TT_MSG_PEEK))
        return 0;
    on_recv(args->sk, args->family, args->ret);
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__tcp__tcp_retransmit_skb
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
#ifdef TT_RETRANSMIT_ERR
    if (args->err != 0)
        return 0;
#endif
    struct addr16 a = {};
    /* A copy, not a pointer into the context: the verifier refuses reads
     * through a moved context pointer. */
    bpf_probe_read_kernel(&a, sizeof(a), args->daddr_v6);
    on_retransmit(args->dport, &a, tt_skb_segments((void *)args->skbaddr));
    return 0;
}
#endif

#ifdef CME_WANT_tracepoint__tcp__tcp_destroy_sock
/* The socket is released: nothing can run on it afterwards. (The TCP_CLOSE
 * state change is too early: the last receive of a connection the peer
 * closed can still be traced after it.) */
TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
    on_close((void *)args->skaddr, args->family);
    return 0;
}
#endif
