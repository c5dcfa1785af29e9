"""Runs: a researcher's question (collection, model, threshold, settings) as a view over results.

A :class:`Run` reads everything from the store, so it shows the same numbers in any process, while
the run is going on or long after. Thresholds, and a minimum shell length (``min_length_mm``), apply to
stored detections: no view re-runs the model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.thresholds import ClassMap, Thresholds, parse_min_length
from ..corrections import annotations as corrections_annotations
from ..corrections import api as corrections_api
from ..corrections import scales as corrections_scales
from ..corrections.review import review_queue
from ..errors import CorruptStoreError, MusselToolsError
from ..results import sizes, views
from ..results.view import (
    RunResults,
    at_length,
    class_map_of,
    count_index,
    load_counting,
    load_results,
    results_signature,
    scales_signature,
    thresholds_of,
)
from ..store.store import Store, atomic_write_bytes, temp_path, utcnow
from .survey import SurveyMethods

__all__ = ["Run", "open_run", "list_runs"]

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "cancelled")


class Run(SurveyMethods):
    """A run in a store. Get one from :func:`musseltools.run` or :func:`open_run`.

    Every property re-reads the run's metadata, so a Run opened in one notebook follows a run
    executing in another process. Every view shows the results with hand corrections applied
    (:mod:`musseltools.store.corrections_log`); ``corrected=False`` shows the model alone.

    Examples
    --------
    >>> import musseltools as mt                                         # doctest: +SKIP
    >>> r = mt.run("data/demo/images", model="data/models/mussel-demo.pt")  # doctest: +SKIP
    >>> r.status, r.totals                                                # doctest: +SKIP
    ('completed', {'live': 1234, 'dead': 210})
    >>> r.per_image(threshold=0.6).head()                                 # doctest: +SKIP

    The sample sheet and answers by group (``attach_sheet``, ``sheet``, ``by_group``, ``compare_groups``...) come
    from :class:`~musseltools.runs.survey.SurveyMethods`.
    """

    # Hand corrections: functions of musseltools.corrections that receive the run, as its methods.
    correct = corrections_api.correct
    reclassify = corrections_api.reclassify
    toggle_class = corrections_api.toggle_class
    delete_detection = corrections_api.delete_detection
    add_detection = corrections_api.add_detection
    set_length = corrections_api.set_length
    verify = corrections_api.verify
    unverify = corrections_api.unverify
    undo = corrections_api.undo
    corrections = corrections_api.corrections
    corrections_report = corrections_api.corrections_report
    corrections_applied = property(corrections_api.corrections_applied)
    verified_images = corrections_api.verified_images
    review_queue = review_queue
    export = corrections_annotations.export_predictions
    import_annotations = corrections_annotations.import_annotations
    # Scales: drawn by hand (stored like corrections), listed with the sheet's.
    scales = corrections_scales.scales

    def __init__(self, store: Store | str | os.PathLike | None, run_id: str) -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        self.run_id = run_id
        self.meta  # noqa: B018 - fail early when the run does not exist

    def __repr__(self) -> str:
        m = self.meta
        return (
            f"<Run {self.run_id} {m['status']}: {m.get('processed_count', 0)}/{m.get('total_images', 0)} images, "
            f"{m.get('failed_count', 0)} failed, counts {m.get('counts', {})} at {self.rule().label(self.class_names)}>"
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
    def thresholds(self) -> float | dict[str, float]:
        """Thresholds in effect: those saved with :meth:`save_thresholds`, else :attr:`threshold`.

        One number when every class has the same threshold, else one per model class name."""
        return self.rule().to_json(self.class_names)

    def rule(self, threshold: Any | None = None) -> Thresholds:
        """The :class:`~musseltools.core.thresholds.Thresholds` that a view of this run applies.

        ``threshold`` (a number, ``"live=0.45,dead=0.6"`` or a mapping by class or category) is validated
        against the run's floor and classes; a class it leaves out keeps the run's threshold. None gives
        the thresholds in effect.
        """
        return thresholds_of(self.meta, threshold)

    @property
    def min_length_mm(self) -> float | None:
        """The minimum shell length in mm in effect (asked with the run, or saved with :meth:`save_min_length_mm`):
        shorter shells are left out of every count; None: every length counts."""
        return self.length_rule() or None

    def length_rule(self, min_length_mm: Any = None) -> float:
        """A minimum shell length validated (:func:`~musseltools.core.thresholds.parse_min_length`), else the
        run's; 0.0 when none applies. Its rule is :func:`~musseltools.core.thresholds.keep_length`: a detection
        without a length in mm (no scale on its image, or outside it) is counted."""
        return parse_min_length(self.meta.get("min_length_mm") if min_length_mm is None else min_length_mm)

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
        return self.classes.categories

    @property
    def classes(self) -> ClassMap:
        """The model's classes and the run's class map."""
        return class_map_of(self.meta)

    @property
    def class_map(self) -> dict[str, str] | None:
        return self.meta["model"].get("class_map")

    @property
    def totals(self) -> dict[str, int]:
        """Survey totals per category at the run's thresholds."""
        return self.counts()

    def settings_table(self) -> pd.DataFrame:
        """Each setting of the run, its value, and where it came from: ``given`` (a keyword or flag),
        ``card`` (recommended by the card beside the weights, :mod:`musseltools.models.card`, with how it
        was found) or ``default`` (musseltools'). Thresholds saved later show as ``saved by hand, DATE``,
        without the card's ``how`` (it no longer applies)."""
        meta = self.meta
        recorded = meta.get("settings_from") or {}
        rows = []
        length = {"min_length_mm": meta.get("min_length_mm")} if "min_length_mm" in recorded or \
            meta.get("min_length_mm") is not None else {}
        for name, value in {"threshold": self.thresholds, **length, **meta["settings"]}.items():
            origin = recorded.get(name, {"from": "not recorded (a run made before runs recorded it)"})
            where = origin["from"]
            saved = {"threshold": "thresholds_saved_at", "min_length_mm": "min_length_saved_at"}.get(name)
            if saved and recorded and value != origin.get("value"):
                when = str(meta.get(saved) or "")[:10]
                where, origin = f"saved by hand{', ' + when if when else ''}", {}  # the card's how no longer applies
            elif where == "card":
                where = f"card ({origin.get('source')})"
            rows.append({"setting": name, "value": value, "from": where, "how": origin.get("how", "")})
        return pd.DataFrame(rows).set_index("setting")

    @property
    def progress(self) -> dict[str, Any]:
        """``status, total_images, processed_count, failed_count``, ``processed_before_call`` (images done
        before the last call of ``run()``), ``counts`` (at the thresholds in effect), timestamps; while running, also
        ``inferred_count`` (images inferred, committed or not) and ``phase`` (what the run is doing)."""
        m = self.meta
        keys = ("status", "total_images", "processed_count", "failed_count", "started_at", "updated_at",
                "finished_at", "error", "processed_before_call", "counts")
        out = {k: m.get(k) for k in keys}
        live = self.store.read_json_cache(f"progress-{self.run_id}.json") if m.get("status") == "running" else {}
        out["inferred_count"] = max(live.get("inferred_count") or 0, m.get("processed_count") or 0) if live else None
        out["phase"] = live.get("phase")
        return out

    def save_thresholds(self, thresholds: Any) -> None:
        """Record chosen thresholds (one, or one per class) on the run; counts, exports and reports use them.

        A class that a mapping leaves out keeps the run's threshold; the saved thresholds name every class.
        """
        from ..store.runmeta import update_run_meta

        t = self.rule(thresholds)
        plain = t.to_json(self.class_names)
        self.store.check_writable(f"save thresholds on run {self.run_id}")

        def counts_at_new_thresholds(meta: dict[str, Any]) -> dict[str, Any]:
            # the run's counts always match its thresholds (status shows them), even while it is running
            return {"counts": views.totals(self.per_image(t), self.categories)}

        update_run_meta(self.store, self.run_id, counts_at_new_thresholds,
                        saved_thresholds=plain if isinstance(plain, Mapping) else None,
                        thresholds_saved_at=utcnow().isoformat(),
                        **({} if isinstance(plain, Mapping) else {"threshold": plain}))
        log.info("[run %s] thresholds saved: %s", self.run_id, t.label(self.class_names))

    def save_min_length_mm(self, min_length_mm: Any) -> None:
        """Record a minimum shell length in mm on the run (0 or None: none), as :meth:`save_thresholds` records
        thresholds: every count (per image, totals, the cube, by group, ``run.json``) leaves shorter shells out
        from then on. Nothing is inferred and no stored result changes; the counts are recounted from the store.
        Refused (``ThresholdError``) when not a number >= 0."""

        mm = parse_min_length(min_length_mm)
        self.store.check_writable(f"save a minimum length on run {self.run_id}")
        self.refresh_counts(mm, min_length_mm=mm or None, min_length_saved_at=utcnow().isoformat())
        log.info("[run %s] minimum shell length saved: %s", self.run_id, f"{mm:g} mm" if mm else "none")

    def refresh_counts(self, min_length_mm: Any = None, /, **fields: Any) -> None:
        """Recount ``run.json``'s counts from the store at the minimum length (the run's by default) and write them
        with ``fields``: after the minimum changes (:meth:`save_min_length_mm`), and, on a run with a minimum,
        after a scale is drawn (:meth:`set_scale`) or a sheet attached (:meth:`attach_sheet`), since a new scale
        changes which shells count. Nothing is inferred."""
        from ..store.runmeta import update_run_meta

        def recounted(meta: dict[str, Any]) -> dict[str, Any]:
            return {"counts": self.counts(min_length_mm=min_length_mm)}

        update_run_meta(self.store, self.run_id, recounted, **fields)

    @functools.wraps(corrections_scales.set_scale)
    def set_scale(self, image: Any, **kwargs: Any) -> pd.DataFrame:
        table = corrections_scales.set_scale(self, image, **kwargs)
        if self.length_rule():  # a new scale changes which shells count at the minimum length
            self.refresh_counts()
        return table

    # ------------------------------------------------------------------ data
    def results(self, *, corrected: bool = True, image_ids: Any = None) -> RunResults:
        """Every stored result of the run's images (see :mod:`musseltools.results.view`): the source of all views.

        ``corrected=False``: the model alone, without hand corrections; ``image_ids``: only those images.
        """
        return load_results(self.store, self.run_id, self.meta, corrected=corrected, image_ids=image_ids)

    def per_image(self, threshold: Any | None = None, *, corrected: bool = True,
                  min_length_mm: Any = None) -> pd.DataFrame:
        """One row per image: ``image_id, path, width, height, n_detections, cap_hit, error,
        processed_at, verified`` and one count column per category at the threshold.

        ``corrected=False`` counts the model's detections alone (no hand corrections). ``min_length_mm`` (the
        run's by default, 0: none) leaves shorter shells out of the counts (:meth:`length_rule`);
        ``n_detections`` stays the stored number."""
        res = self._counting(corrected, min_length_mm)
        return views.per_image_counts(res.images, res.detections, self.rule(threshold), res.classes)

    def detections(self, threshold: Any | None = None, *, corrected: bool = True,
                   min_length_mm: Any = None) -> pd.DataFrame:
        """One row per detection that counts at the threshold (``polygon`` as a list of [x, y]), with its
        stable ``detection_id`` and its ``source`` (``model``, ``reclassified``, ``added``); with a class
        map, a ``category`` column. ``corrected=False``: the model's detections alone.

        Sizes (:mod:`musseltools.results.sizes`): ``length_px, width_px, length_method`` always;
        ``mm_per_px, length_mm, width_mm`` from the image's scale (:meth:`scales`), NaN for an image without
        one (lengths in pixels only: the table's ``attrs["lengths"]`` says so) and for a detection outside its
        image. ``min_length_mm`` (the run's by default, 0: none): only the detections that count at it."""
        res = self.results(corrected=corrected)
        scales = self.scales(res.images)
        res = self.at_length(res, min_length_mm, scales)
        out = views.above_threshold(res.detections, self.rule(threshold)).reset_index(drop=True)
        out = sizes.lengths_mm(out, res.images, scales)
        unscaled = int(out["mm_per_px"].isna().sum())
        out.attrs["lengths"] = ("in mm" if not unscaled else
                                f"in pixels only for {unscaled} of {len(out)} detections (no scale on their image, "
                                "or outside it: run.scales())")
        if res.classes.mapping:
            out["category"] = res.classes.categories_of(out["class_name"])
        return out

    def counts(self, threshold: Any | None = None, *, corrected: bool = True,
               min_length_mm: Any = None) -> dict[str, int]:
        """Totals per category at the threshold (the run's thresholds by default); ``corrected=False``:
        the model alone; ``min_length_mm``: as :meth:`per_image`."""
        res = self._counting(corrected, min_length_mm)
        return views.totals_at(count_index(res), self.rule(threshold), res.classes)

    def _counting(self, corrected: bool, min_length_mm: Any = None) -> RunResults:
        """The results counting needs: without corrections in the store and without a minimum length, three
        columns of the detections; with a minimum length, the detections that count at it."""
        if not self.length_rule(min_length_mm):
            return load_counting(self.store, self.run_id, self.meta) if corrected else self.results(corrected=False)
        return self.at_length(self.results(corrected=corrected), min_length_mm)

    def at_length(self, res: RunResults, min_length_mm: Any = None, scales: pd.DataFrame | None = None
                  ) -> RunResults:
        """``res`` (:meth:`results`, or a part of it) with the detections that count at the minimum length (the
        run's by default): :func:`musseltools.results.view.at_length`, the one filter of every count (views, the
        editor, the review queue, the polygon export); says once how many images with detections have no scale.
        ``scales``: :meth:`scales` of ``res.images`` when the caller has them."""
        mm = self.length_rule(min_length_mm)
        if not mm:
            return res
        res, unscaled = at_length(res, self.scales(res.images) if scales is None else scales, mm)
        said = (str(self.store.root), self.run_id, mm, unscaled)
        if unscaled and said not in _UNSCALED_SAID:
            _UNSCALED_SAID.add(said)
            log.warning("[run %s] min_length_mm=%g applies only to images with a scale: %d images with detections have "
                        "none, and all their detections are counted (lengths in pixels only) — give them a scale "
                        "(the sheet's mm_per_px or quadrat_side_m, or run.set_scale) — run.scales() lists them",
                        self.run_id, mm, unscaled)
        return res

    def cube_signature(self) -> str:
        """What the stored cube must have been built from to be current: the results and corrections
        (:func:`~musseltools.results.view.results_signature`) and, with a minimum length, it and the scales."""
        meta = self.meta
        signature = results_signature(self.store, self.run_id, meta)
        mm = self.length_rule()
        if not mm:
            return signature
        scales = scales_signature(self.scales(self.results().images))
        return f"{signature}-min{mm:g}-{scales}"

    def cube(self, *, rebuild: bool = False, corrected: bool = True):
        """The count-versus-threshold cube (``xarray.Dataset``), from ``cube.zarr`` when it is current.

        The cube is derived from the Parquet results and the corrections, and rebuilt whenever they
        have changed. ``corrected=False`` builds the model's cube in memory (it is not stored). The sample
        sheet's columns are coordinates along ``image`` (``cube.groupby("site")``); they are not stored in
        ``cube.zarr``, so attaching a sheet rebuilds nothing.
        """
        return self.with_design(self._cube(rebuild=rebuild, corrected=corrected))

    def _cube(self, *, rebuild: bool, corrected: bool):
        """The cube without the sheet's coordinates (see :meth:`cube`)."""
        import xarray as xr

        if not corrected:
            m = self.meta
            res = self._counting(False)
            extra = sorted(set(self.rule().by_class(res.classes).values()) | {float(m["threshold"])})
            return views.build_cube(res.images, res.detections, res.classes, res.conf_floor, extra_thresholds=extra,
                                    attrs={"run_id": self.run_id, "threshold": float(m["threshold"]),
                                           "corrected": 0, "min_length_mm": self.length_rule(), "model_sha256": m["model"]["fingerprint"],
                                           "inference_key": m["inference_key"]})
        path = f"{self.store.run_dir(self.run_id)}/cube.zarr"
        signature = self.cube_signature()
        if not rebuild and self.store.exists(path):
            try:
                ds = xr.open_zarr(path)
                if ds.attrs.get("signature") == signature:
                    return ds
            except Exception as exc:  # noqa: BLE001 - a damaged cube is rebuilt from Parquet
                log.warning("[run %s] cube at %s unreadable (%s); rebuilding", self.run_id, path, exc)
        if self.store.read_only:  # reading needs no write: the cube is built in memory, not stored
            log.info("[run %s] store %s is read-only: cube built in memory", self.run_id, self.store.location)
            return self._built_cube()
        self.write_cube()
        return xr.open_zarr(path)

    def cube_is_current(self) -> bool:
        """Whether ``cube.zarr`` was built from the results as they are now (read from its metadata file,
        without opening the cube: a resume with nothing to do stays quick)."""
        import json

        if self.store.remote:
            try:
                return self.cube().attrs.get("signature") == self.cube_signature()
            except Exception:  # noqa: BLE001 - unreadable: not current
                return False
        try:
            doc = json.loads((self.store.run_dir(self.run_id) / "cube.zarr" / "zarr.json").read_text())
        except (OSError, ValueError):
            return False
        return doc.get("attributes", {}).get("signature") == self.cube_signature()

    def _built_cube(self):
        """The corrected count-versus-threshold cube built from the Parquet results, in memory."""
        m = self.meta
        res = self._counting(True)  # without corrections nor a minimum length: three columns of detections
        images, detections, applied = res.images, res.detections, len(res.applied)
        classes = self.classes
        extra = sorted(set(self.rule().by_class(classes).values()) | {float(m["threshold"])})
        return views.build_cube(
            images, detections, classes, self.conf_floor, extra_thresholds=extra,
            attrs={"run_id": self.run_id, "threshold": float(m["threshold"]),
                   "signature": self.cube_signature(), "min_length_mm": self.length_rule(),
                   "model_sha256": m["model"]["fingerprint"], "inference_key": m["inference_key"],
                   "corrected": 1, "corrections_applied": applied, "created_at": utcnow().isoformat()},
        )

    def write_cube(self) -> Path:
        """(Re)build ``cube.zarr`` from the Parquet results, atomically (write aside, then swap)."""
        import shutil

        from .._failpoints import failpoint

        self.store.check_writable(f"write the cube of run {self.run_id}")
        ds = self._built_cube()
        if self.store.remote:  # no rename in an object store: written in place, its signature tells if it is current
            final = f"{self.store.run_dir(self.run_id)}/cube.zarr"
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                ds.to_zarr(final, mode="w", consolidated=True)
            return final
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

    def export_polygons(self, out_dir: str | os.PathLike, threshold: Any | None = None, *,
                        corrected: bool = True) -> list[Path]:
        """Write one polygon JSON per image in the replaced system's format; returns the files.

        Files are named after the image's path (relative to the collection folder), with ``.json``;
        names never leave ``out_dir``. ``corrected=False`` exports the model's detections alone. Shells shorter
        than the run's minimum length (:attr:`min_length_mm`) are left out, as from every count.
        """
        import json

        t = self.rule(threshold)
        res = self.at_length(self.results(corrected=corrected))
        table, dets = res.images, res.detections
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
            doc = views.polygon_document(by_image.get(row.image_id, empty), thresholds=t, classes=res.classes,
                                         width=row.width, height=row.height)
            doc["image"] = row.path
            if isinstance(row.error, str):
                doc["error"] = row.error
            target = out_dir / rel
            atomic_write_bytes(target, json.dumps(doc).encode())
            written.append(target)
        return written


#: (store, run, minimum length, images without a scale) already said in this process
_UNSCALED_SAID: set[tuple[str, str, float, int]] = set()

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
    """A table of the runs in a store, oldest first.

    ``threshold`` is the thresholds in effect, those its ``counts`` are at (as :attr:`Run.thresholds`):
    the saved ones (:meth:`Run.save_thresholds`, or the model card's per-class thresholds), else the
    threshold the run was asked with; one number, or one per class.
    """
    s = store if isinstance(store, Store) else Store(store)
    rows = []
    for m in s.list_runs():
        try:
            rows.append({
                "run_id": m["run_id"], "collection": m["collection"]["name"], "model": Path(m["model"]["path"]).name,
                "threshold": thresholds_of(m).to_json(class_map_of(m).names), "status": m["status"],
                "total_images": m.get("total_images"),
                "processed_count": m.get("processed_count"), "failed_count": m.get("failed_count"),
                "counts": m.get("counts"), "created_at": m.get("created_at"), "updated_at": m.get("updated_at"),
            })
        except (KeyError, TypeError) as exc:
            raise CorruptStoreError(f"run metadata of {m.get('run_id', '?')} is incomplete ({exc})") from exc
    return pd.DataFrame(rows)
