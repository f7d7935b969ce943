"""eBPF runtime shared by the eBPF plugins (bcc compiles in a short-lived helper process)."""
