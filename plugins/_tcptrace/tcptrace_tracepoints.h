/* The hooks on stable tracepoints; each compiled only when the eBPF
 * runtime chose it on this kernel (CME_WANT_<function>). The including program
 * defines on_send, on_recv, on_retransmit and on_close. */

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
    struct addr16 a = {};
    /* A copy, not a pointer into the context: the verifier refuses reads
     * through a moved context pointer. */
    bpf_probe_read_kernel(&a, sizeof(a), args->daddr_v6);
    on_retransmit(args->dport, &a);
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
