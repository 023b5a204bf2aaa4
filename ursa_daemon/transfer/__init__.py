"""Moving bytes: the Context the operations take, uploads (cancellable streams, multipart,
resume), ingest and registration, downloads, readers and verification.

Rank 3 of the layout (see the README): imports the leaves, ``store``, ``catalog`` and
``session``; never ``daemon``, ``api`` or ``cli``. This file stays import-free so that
importing one transfer module does not pull in the others.
"""
