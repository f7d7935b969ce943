"""Third-party plugins in worker processes of their own.

A plugin that is not built in (and not listed in ``[exporter] in_process``)
is imported, checked, started and collected in a child process the exporter
supervises (:mod:`.supervisor`), which runs :mod:`.worker`. Whatever the
plugin does there - exit, hang, hold the GIL, leak, spawn threads, yield a
million series - costs only that plugin: the exporter keeps serving, fails
the plugin with the reason and restarts its worker after a back-off.
Messages between the two are :mod:`.protocol` frames; the exporter validates
the samples a worker sends exactly as it validates an in-process plugin's.
"""
