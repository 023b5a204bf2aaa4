"""``ursa.register``: the write side of the seeds' API (see :mod:`ursa.register.orchestrator`)."""
