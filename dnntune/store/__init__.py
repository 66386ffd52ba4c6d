"""A profile store shared by runs: SQLite with a versioned schema (issue 25).

``open(url)`` returns a :class:`Store`; profiles are deduplicated by the SHA-256 of their
canonical JSON. Recording from the CLI goes through :func:`record_quietly`, which never
raises: a run's files are written before the store is touched.
"""

from dnntune.store.sqlite import Store, StoreError, default_url, open_store, record_quietly

open = open_store  # ``dnntune.store.open(url)`` is the notebook entry point

__all__ = ["Store", "StoreError", "default_url", "open", "open_store", "record_quietly"]
