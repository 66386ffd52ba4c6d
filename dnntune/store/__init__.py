"""A profile store shared by runs: SQLite by default, PostgreSQL for a lab (issue 25).

``open(url)`` returns a :class:`Store` (a path, ``sqlite:///path`` or
``postgresql://USER:PASSWORD@HOST:PORT/DB``); records are deduplicated by the SHA-256 of
their canonical JSON. Recording from the CLI goes through :func:`record_quietly`, which
never raises: a run's files are written before the store is touched.
"""

from dnntune.store.backends import StoreError
from dnntune.store.database import KINDS, Store, default_url, open_store
from dnntune.store.records import import_path, record_quietly

open = open_store  # ``dnntune.store.open(url)`` is the notebook entry point

__all__ = ["KINDS", "Store", "StoreError", "default_url", "import_path", "open", "open_store",
           "record_quietly"]
