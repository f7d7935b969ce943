"""A second real kernel for the test suite: Debian 12's stock 6.1 kernel in a QEMU guest.

:mod:`.image` builds a small Debian guest image once and caches it outside the
work tree (keyed by a hash of its recipe); :mod:`.qemu` boots it with no
network device, shares the checkout read-only, runs one command inside and
returns its exit code and output; ``python -m tests.vm`` is the command line
(``build``, ``run``, ``test``). Guest-side pieces (the boot script, NFS
fixtures) live in :mod:`.guest_boot` and ``tests/helpers/guest*.py``.
"""
