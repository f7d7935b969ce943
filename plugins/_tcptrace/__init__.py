"""TCP tracing shared by the nfs_latency and objstore plugins (not a plugin itself).

Both plugins watch TCP traffic to a set of destinations with the same
filter (port bitmap + address set), the same address encoding and the same
kprobe fallback; this package holds those pieces once.
"""
