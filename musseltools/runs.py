"""Runs: a researcher's question (collection, model, threshold, settings) as a view over results.

A :class:`Run` reads everything from the store, so it shows the same numbers in any process, while
the run is going on or long after. Thresholds apply to stored detections: no view re-runs the model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from . import views
from .errors import CorruptStoreError, MusselToolsError
from .store import Store, atomic_write_bytes, temp_path, utcnow

__all__ = ["Run", "open_run", "list_runs"]

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "cancelled")


class Run:
    """A run in a store. Get one from :func:`musseltools.run` or :func:`open_run`.

    Every property re-reads the run's metadata, so a Run opened in one notebook follows a run
    executing in another process.

    Examples
    --------
    >>> import musseltools as mt                                         # doctest: +SKIP
    >>> r = mt.run("data/demo/images", model="data/models/mussel-demo.pt")  # doctest: +SKIP
    >>> r.status, r.totals                                                # doctest: +SKIP
    ('completed', {'live': 1234, 'dead': 210})
    >>> r.per_image(threshold=0.6).head()                                 # doctest: +SKIP
    """

    def __init__(self, store: Store | str | os.PathLike | None, run_id: str) -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        self.run_id = run_id
        self.meta  # noqa: B018 - fail early when the run does not exist

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"<Run {self.run_id} {m['status']}: {m.get('processed_count', 0)}/{m.get('total_images', 0)} images, "
            f"{m.get('failed_count', 0)} failed, counts {m.get('counts', {})} at {m['threshold']}>"
        )

    # ------------------------------------------------------------------ metadata
    @property
    def meta(self) -> dict[str, Any]:
        """The run's metadata, read fresh from ``run.json``."""
        return self.store.read_run(self.run_id)

    @property
    def status(self) -> str:
        """``pending``, ``running``, ``completed``, ``failed`` or ``cancelled``."""
        return self.meta["status"]

    @property
    def threshold(self) -> float:
        """The confidence threshold the run was asked with."""
        return float(self.meta["threshold"])

    @property
    def thresholds(self) -> views.Threshold:
        """Thresholds in effect: those saved with :meth:`save_thresholds`, else :attr:`threshold`."""
        m = self.meta
        return m.get("saved_thresholds") or float(m["threshold"])

    @property
    def conf_floor(self) -> float:
        return float(self.meta["settings"]["conf_floor"])

    @property
    def class_names(self) -> list[str]:
        """The model's class names, in class-id order."""
        names = self.meta["model"]["names"]
        return [names[k] for k in sorted(names, key=int)]

    @property
    def categories(self) -> list[str]:
        """What totals are counted in: the class map's categories, else the class names."""
        cmap = self.class_map
        return list(dict.fromkeys(cmap.get(n, n) for n in self.class_names)) if cmap else self.class_names

    @property
    def class_map(self) -> dict[str, str] | None:
        return self.meta["model"].get("class_map")

    @property
    def totals(self) -> dict[str, int]:
        """Survey totals per category at the run's thresholds."""
        return self.counts()

    @property
    def progress(self) -> dict[str, Any]:
        """``status, total_images, processed_count, failed_count`` and timestamps."""
        m = self.meta
        keys = ("status", "total_images", "processed_count", "failed_count", "started_at", "updated_at",
                "finished_at", "error")
        return {k: m.get(k) for k in keys}

    def save_thresholds(self, thresholds: views.Threshold) -> None:
        """Record chosen thresholds (one, or one per class) on the run; counts, exports and reports use them."""
        from .engine import update_run_meta

        t = self._threshold(thresholds)

        def counts_at_new_thresholds(meta: dict[str, Any]) -> dict[str, Any]:
            # the run's counts always match its thresholds (status shows them), even while it is running
            return {"counts": views.totals(self.per_image(t), self.categories)}

        update_run_meta(self.store, self.run_id, counts_at_new_thresholds,
                        saved_thresholds=t if isinstance(t, Mapping) else None,
                        **({} if isinstance(t, Mapping) else {"threshold": t}))
        log.info("[run %s] thresholds saved: %s", self.run_id, t)

    # ------------------------------------------------------------------ data
    def _threshold(self, threshold: Any | None) -> views.Threshold:
        if threshold is None:
            threshold = self.thresholds
        return views.check_threshold(threshold, self.conf_floor, self.class_names)

    def _results(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(per-image table, detections) of this run's images, paths as last scanned."""
        coll = self.store.read_collection(self.run_id)
        meta = self.meta
        images, dets = self.store.read_results(meta["inference_key"])
        coll = coll.drop_duplicates("image_id", keep="first")
        table = coll[["image_id", "path"]].merge(
            images.drop(columns=["path"]), on="image_id", how="left"
        )
        # a completed run had a result for every image: one missing now was in a damaged part that was
        # quarantined. Say so on the image rather than count it as 0 without a word.
        qdir = self.store.results_dir(meta["inference_key"]) / "quarantine"
        if meta.get("status") == "completed" and qdir.is_dir() and any(qdir.iterdir()):
            lost = table["processed_at"].isna() & table["error"].isna()
            if lost.any():
                table.loc[lost, "error"] = (
                    f"no stored result: it was in a damaged results part, moved to {str(qdir)!r} — run the "
                    "same run again to process this image again"
                )
                log.warning("[run %s] %d images lost their results to damaged parts (quarantined in %s); run "
                            "again to process them", self.run_id, int(lost.sum()), qdir)
        # files that could not be read at scan time carry their reason in the collection table
        if "error" in coll:
            scan_err = coll.set_index("image_id")["error"]
            missing = table["processed_at"].isna() & table["image_id"].map(scan_err).notna()
            table.loc[missing, "error"] = table.loc[missing, "image_id"].map(scan_err)
        for col in ("width", "height"):
            if col in coll:
                scanned = table["image_id"].map(coll.set_index("image_id")[col]).astype("Int64")
                table[col] = table[col].astype("Int64").fillna(scanned)
        dets = dets[dets["image_id"].isin(coll["image_id"])].drop(columns=["path"])
        dets = dets.merge(coll[["image_id", "path"]], on="image_id", how="left")
        dets = dets[["image_id", "path"] + [c for c in dets.columns if c not in ("image_id", "path")]]
        return table, dets

    def per_image(self, threshold: views.Threshold | None = None) -> pd.DataFrame:
        """One row per image: ``image_id, path, width, height, n_detections, cap_hit, error,
        processed_at`` and one count column per category at the threshold."""
        table, dets = self._results()
        return views.per_image_counts(table, dets, self._threshold(threshold), self.categories, self.class_map)

    def detections(self, threshold: views.Threshold | None = None) -> pd.DataFrame:
        """One row per detection at or above the threshold (``polygon`` as a list of [x, y])."""
        _, dets = self._results()
        out = views.above_threshold(dets, self._threshold(threshold)).reset_index(drop=True)
        if self.class_map:
            out["category"] = out["class_name"].map(lambda n: self.class_map.get(n, n))
        return out

    def counts(self, threshold: views.Threshold | None = None) -> dict[str, int]:
        """Totals per category at the threshold (the run's thresholds by default)."""
        return views.totals(self.per_image(threshold), self.categories)

    def cube(self, *, rebuild: bool = False):
        """The count-versus-threshold cube (``xarray.Dataset``), from ``cube.zarr`` when it is current.

        The cube is derived from the Parquet results and rebuilt whenever they have changed.
        """
        import xarray as xr

        path = self.store.run_dir(self.run_id) / "cube.zarr"
        signature = self._signature()
        if not rebuild and path.exists():
            try:
                ds = xr.open_zarr(path)
                if ds.attrs.get("signature") == signature:
                    return ds
            except Exception as exc:  # noqa: BLE001 - a damaged cube is rebuilt from Parquet
                log.warning("[run %s] cube at %s unreadable (%s); rebuilding", self.run_id, path, exc)
        self.write_cube()
        return xr.open_zarr(path)

    def _signature(self) -> str:
        import hashlib

        parts = self.store._part_files(self.meta["inference_key"])
        coll = self.store.run_dir(self.run_id) / "collection.parquet"
        items = [p.name + str(p.stat().st_mtime_ns) for p in parts if p.exists()]
        if coll.exists():
            items.append(str(coll.stat().st_mtime_ns))
        return hashlib.sha256("|".join(items).encode()).hexdigest()[:16]

    def write_cube(self) -> Path:
        """(Re)build ``cube.zarr`` from the Parquet results, atomically (write aside, then swap)."""
        import shutil

        from ._failpoints import failpoint

        m = self.meta
        table, dets = self._results()
        extra = [float(m["threshold"])]
        if m.get("saved_thresholds"):
            extra += [float(v) for v in m["saved_thresholds"].values()]
        ds = views.build_cube(
            table, dets, self.categories, float(m["settings"]["conf_floor"]), class_map=self.class_map,
            extra_thresholds=extra,
            attrs={"run_id": self.run_id, "threshold": float(m["threshold"]), "signature": self._signature(),
                   "model_sha256": m["model"]["fingerprint"], "inference_key": m["inference_key"],
                   "created_at": utcnow().isoformat()},
        )
        run_dir = self.store.run_dir(self.run_id)
        final = run_dir / "cube.zarr"
        tmp = temp_path(final)  # names a dead writer's leftovers recognisably (removed on the next run)
        shutil.rmtree(tmp, ignore_errors=True)
        with warnings.catch_warnings():  # consolidated metadata lets plain xr.open_zarr(path) open it quietly
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            ds.to_zarr(tmp, mode="w-", consolidated=True)
        failpoint("cube-writing")
        old = temp_path(final, ".old")
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):  # another process may be swapping its own cube in
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:  # another process put its cube (from the same Parquet parts) there first
            shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def export_polygons(self, out_dir: str | os.PathLike, threshold: views.Threshold | None = None) -> list[Path]:
        """Write one polygon JSON per image in the replaced system's format; returns the files.

        Files are named after the image's path (relative to the collection folder), with ``.json``;
        names never leave ``out_dir``.
        """
        import json

        t = self._threshold(threshold)
        table, dets = self._results()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        root = self.meta["collection"]["source"].get("root")
        by_image = dict(tuple(dets.groupby("image_id"))) if len(dets) else {}
        written, used = [], set()
        empty = dets.iloc[:0]
        base = out_dir.resolve()
        for row in table.itertuples(index=False):
            rel = _safe_relative(row.path, root)
            n = 0
            while rel in used:  # two images with one name (a.jpg and a.png): tell them apart by id
                n += 1
                rel = rel.with_name(f"{rel.stem}-{row.image_id[: 8 * n]}.json")
            used.add(rel)
            parent = (out_dir / rel).parent
            parent.mkdir(parents=True, exist_ok=True)
            if not parent.resolve().is_relative_to(base):  # e.g. a symlinked subfolder in out_dir
                raise MusselToolsError(
                    f"refusing to write {str(out_dir / rel)!r}: it resolves to {str(parent.resolve())!r}, outside "
                    f"the output folder {str(base)!r} — remove the symbolic link or choose another folder"
                )
            doc = views.polygon_document(by_image.get(row.image_id, empty), threshold=t, width=row.width,
                                         height=row.height, class_map=self.class_map)
            doc["image"] = row.path
            if isinstance(row.error, str):
                doc["error"] = row.error
            target = out_dir / rel
            atomic_write_bytes(target, json.dumps(doc).encode())
            written.append(target)
        return written


_UNSAFE = re.compile(r"[\x00-\x1f]")


def _safe_relative(path: str, root: str | None) -> Path:
    """A relative ``.json`` name for an image that cannot escape the output folder."""
    p = Path(path)
    rel = None
    if root:
        with contextlib.suppress(ValueError):
            rel = p.relative_to(root)
    parts = [_UNSAFE.sub("_", s) for s in (rel.parts if rel else (p.name,)) if s not in ("", ".", "..", "/")]
    parts = [_short_name(s.replace("/", "_").replace("\\", "_")) for s in parts] or ["image"]
    return Path(*parts[:-1], _short_name(Path(parts[-1]).stem + ".json", keep=".json"))


def _short_name(name: str, keep: str = "") -> str:
    """``name`` cut to fit a file system's 255-byte limit (with a digest of the whole, so it stays unique)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 255:
        return name
    import hashlib

    digest = hashlib.sha256(raw).hexdigest()[:12]
    head = raw[: 255 - len(keep.encode()) - 13].decode("utf-8", "ignore")
    return f"{head}-{digest}{keep}"


def open_run(run_id: str, *, store: Store | str | os.PathLike | None = None) -> Run:
    """Open an existing run by id."""
    return Run(store, run_id)


def list_runs(*, store: Store | str | os.PathLike | None = None) -> pd.DataFrame:
    """A table of the runs in a store, oldest first."""
    s = store if isinstance(store, Store) else Store(store)
    rows = []
    for m in s.list_runs():
        try:
            rows.append({
                "run_id": m["run_id"], "collection": m["collection"]["name"], "model": Path(m["model"]["path"]).name,
                "threshold": m["threshold"], "status": m["status"], "total_images": m.get("total_images"),
                "processed_count": m.get("processed_count"), "failed_count": m.get("failed_count"),
                "counts": m.get("counts"), "created_at": m.get("created_at"), "updated_at": m.get("updated_at"),
            })
        except (KeyError, TypeError) as exc:
            raise CorruptStoreError(f"run metadata of {m.get('run_id', '?')} is incomplete ({exc})") from exc
    return pd.DataFrame(rows)
