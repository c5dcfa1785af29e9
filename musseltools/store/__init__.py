"""Where results live: storage backends (local disk, fsspec object stores), Parquet parts committed atomically,
run metadata, compaction, and the append-only log of hand corrections.

Nothing here knows about models or runs' questions; every layer above reads and writes through :class:`Store`.
"""

from __future__ import annotations

from .store import Store

__all__ = ["Store"]
