"""Run metadata (``run.json``) updated without lost writes: a read-modify-write under the run's metadata
lock on a local store, a conditional PUT retried on a conflict in an object store."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .._failpoints import failpoint
from ..errors import RunNotFoundError
from .store import Store, utcnow

__all__ = ["update_run_meta"]


def update_run_meta(
    store: Store, run_id: str, compute: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None, /,
    **changes: Any,
) -> dict[str, Any]:
    """Read-modify-write run metadata under the run's metadata lock (no lost updates); returns it.

    ``compute(meta)``, when given, returns more changes computed from the metadata as it is under the
    lock (e.g. counts at the thresholds in effect, which another process may just have changed).
    """
    from filelock import FileLock

    if store.objects:
        return _update_remote_meta(store, run_id, compute, changes)
    d = store.run_dir(run_id)
    d.mkdir(parents=True, exist_ok=True)
    with FileLock(str(d / ".meta.lock")):
        try:
            meta = store.read_run(run_id)
        except RunNotFoundError:
            meta = {}
        meta["run_id"] = run_id
        meta.update(changes)
        if compute is not None:
            meta.update(compute(meta))
        meta["updated_at"] = utcnow().isoformat()
        store.write_run(meta)
    return meta


def _update_remote_meta(store: Store, run_id: str, compute: Callable[[dict[str, Any]], Mapping[str, Any]] | None,
                        changes: Mapping[str, Any]) -> dict[str, Any]:
    """Read-modify-write of ``run.json`` in an object store by a conditional PUT, retried on a conflict."""
    name = f"runs/{run_id}/run.json"
    out: dict[str, Any] = {}

    def modify(raw: bytes | None) -> bytes:
        meta = store.parse_run(run_id, raw, store.objects.full(name)) if raw is not None else {}
        meta.update(run_id=run_id, **changes)
        if compute is not None:
            meta.update(compute(meta))
        meta["updated_at"] = utcnow().isoformat()
        out.clear()
        out.update(meta)
        failpoint("meta-written")
        return json.dumps(meta, indent=2, sort_keys=True, default=str).encode()

    store.objects.update(name, modify)
    return out
