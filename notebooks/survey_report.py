# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (musseltools)
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
images = "../data/demo/images"  # folder of survey photographs (or one image)
model = "../data/models/mussel-demo.pt"  # weights: Ultralytics YOLO (.pt) or a torchvision Faster R-CNN checkpoint
model_family = None  # "ultralytics" or "torchvision" (detected from the file by default)
trust_pickle = False  # allow a fully pickled torchvision model (a pickle can run code: only files you trust)
threshold = None  # confidence threshold, or one per class {"live": 0.4, "dead": 0.3} (default: the weights' card's, else 0.5)
min_length_mm = None  # leave shells shorter than this (mm) out of counts, as protocols leave out recruits
store = None  # results store (default: $MUSSELTOOLS_STORE, else data/store in the project root)
title = None  # report title
class_map = None  # e.g. {"live_mussel": "live", "gaping": "dead"}
sheet = None  # sample sheet (CSV or .xlsx): one row per image with its site, date, treatment, area_m2...
truth = None  # labels to evaluate against: YOLO label folder, COCO JSON or counts CSV
n_samples = 6  # sample images drawn with their detections
compare_model = None  # a second model's weights: run on the same images and compared with the first
tile = None  # tile size in pixels, "auto" or "none" for large quadrat photos (default: the weights' card's, else none)
tile_overlap = None  # tile overlap fraction (default: the card's, else 0.2)
tile_merge = None  # "edge", "ios" or "nmm": how duplicates across tile seams merge (default: the card's, else edge)
backend = "torch"  # "torch", "onnx" (ONNX Runtime, checked against torch) or "auto" (onnx on a CPU)
imgsz = None  # model input size (default: the size the model was trained at)
conf_floor = 0.01
iou = None  # NMS IoU (default: the card's, else the family's own: 0.7 for YOLO, 0.5 for Faster R-CNN)
max_det = 10000
batch_size = None
commit_every = None
name = None
device = None
wait = False
workers = None  # worker processes (default: one per core when there are enough images)
scheduler = None  # a Dask scheduler address, to run on a cluster
scheduler_file = None  # or its scheduler file

# %%
import datetime as dt
import platform
from pathlib import Path

import pandas as pd
from IPython.display import HTML, Markdown, display

import musseltools as mt
from musseltools import plots
from musseltools.reports.report import survey_title

plots.show_alt_text()  # figures show as PNG images with a text alternative (alt) in the report
pd.set_option("display.max_rows", 500)
pd.set_option("display.max_colwidth", 120)
display(HTML("""<style>
.jp-RenderedHTMLCommon table { font-size: 0.85em; max-width: 100%; }
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { padding: 0.2em 0.5em; }
.jp-OutputArea-output img { max-width: 100%; height: auto; }
@media print { body { font-size: 10pt; } .jp-RenderedHTMLCommon table { font-size: 8pt; }
  .jp-Cell, img, table { break-inside: avoid; } h1, h2, h3 { break-after: avoid; } }
</style>"""))
display(Markdown(f"# {title or survey_title(images)}"))


def n_of(n: int, word: str, plural: str | None = None) -> str:
    """``1 image``, ``3 images``."""
    return f"{n} {word if n == 1 else plural or word + 's'}"


def shown(value) -> str:
    """A timestamp as a reader reads it: ``2025-05-14 09:31 UTC``."""
    if not value:
        return "not recorded"
    return pd.Timestamp(value).tz_convert("UTC").strftime("%Y-%m-%d %H:%M UTC")

# %% [markdown]
# ## Run

# %%
run = mt.run(
    images, model=model, model_family=model_family, trust_pickle=trust_pickle, threshold=threshold,
    min_length_mm=min_length_mm, store=store,
    class_map=class_map, sheet=sheet, tile=tile, tile_overlap=tile_overlap, tile_merge=tile_merge, backend=backend,
    imgsz=imgsz, conf_floor=conf_floor, iou=iou, max_det=max_det,
    batch_size=batch_size, commit_every=commit_every, name=name, device=device, wait=wait, workers=workers,
    scheduler=scheduler, scheduler_file=scheduler_file, quiet=False,
)
meta = run.meta
t = run.thresholds  # saved per-class thresholds, else the run's threshold
per_image = run.per_image(t)
detections = run.detections(t)
display(Markdown(
    f"Run `{run.run_id}`: **{meta['status']}**, {n_of(meta['total_images'], 'image')} "
    f"({meta['failed_count']} failed, {meta.get('inferred_this_call', 0)} inferred for this report), "
    f"threshold {plots.threshold_label(t)}."
))

# %% [markdown]
# ## Settings
#
# Each setting of the run and where it came from: given to the run, recommended by the card beside the
# weights (with how it was found), musseltools' default, or, for thresholds, saved by hand after the run.

# %%
settings = run.settings_table()
display(settings.assign(value=settings["value"].map(  # per class thresholds as a reader reads them
    lambda v: ", ".join(f"{k} {x:g}" for k, x in v.items()) if isinstance(v, dict) else v)))
if not settings["from"].str.startswith("card").any() and settings["from"].eq("default").any():
    display(Markdown(
        "These are default settings: the weights have no card, so every setting not given to the run is "
        "musseltools' default, not one chosen for this model. `musseltools calibrate RUN TRUTH --write-card` "
        "(`mt.calibrate`) can choose them from a few labelled images."
    ))

# %% [markdown]
# ## Totals

# %%
totals = run.counts(t)
rows = [{"category": c, "count": n} for c, n in totals.items()]
if "live" in totals and "dead" in totals:
    both = totals["live"] + totals["dead"]
    rows.append({"category": "live fraction", "count": f"{totals['live'] / both:.1%}" if both else "n/a"})
display(pd.DataFrame(rows).set_index("category"))

# %% [markdown]
# ## Counts per image

# %%
table = per_image.assign(image=per_image["path"].map(lambda p: Path(p).name), error=per_image["error"].fillna(""))
display(table[["image", *run.categories, "width", "height", "cap_hit", "error"]].set_index("image"))

# %%
plots.counts_per_image(per_image, run.categories, threshold=t)

# %% [markdown]
# ## Confidence of detections
#
# All stored detections (down to the confidence floor); the dashed line is the threshold in use.

# %%
plots.confidence_histograms(run.detections(run.conf_floor), run.class_names, threshold=t,
                            conf_floor=run.conf_floor)

# %% [markdown]
# ## Count versus threshold
#
# Survey totals at every threshold, from the run's count cube (`cube.zarr`); dots mark the threshold in use.

# %%
plots.count_vs_threshold(run.cube(), threshold=t, class_map=run.class_map)

# %% [markdown]
# ## Sample images

# %%
plots.sample_grid(per_image, detections, n=n_samples, categories=run.categories, threshold=t)

# %% [markdown]
# ## Images that could not be processed

# %%
errors = per_image[per_image["error"].notna()]
if errors.empty:
    display(Markdown("Every image was processed."))
else:
    display(errors.assign(image=errors["path"].map(lambda p: Path(p).name))[["image", "path", "error"]]
            .set_index("image"))

# %% [markdown]
# ## Evaluation against labels

# %%
if truth is None:
    display(Markdown("No labelled images were given (`truth`), so this report has no evaluation."))
else:
    ev = mt.evaluate(run, truth, threshold=t)
    display(Markdown(f"Labels: `{truth}`. Every metric per class is in the appendix."))
    metrics = ev.metrics.set_index("class")
    brief = ["threshold", "precision", "recall", "ap50", "count_mae", "count_bias", "predicted_total", "true_total"]
    display(metrics[brief].dropna(axis=1, how="all").astype(float).round(2))
    for fig in (plots.plot_pr(ev), plots.plot_count_error(ev, chosen=t), plots.plot_pred_vs_true(ev)):
        display(fig)  # figures outside pyplot: each is shown once
    if ev.unmatched_images:
        n = len(ev.unmatched_images)
        display(Markdown(f"{n_of(n, 'image')} {'has' if n == 1 else 'have'} no labels: "
                         f"{', '.join(map(str, ev.unmatched_images[:20]))}"))
    if ev.unmatched_labels:
        n = len(ev.unmatched_labels)
        display(Markdown(f"{n_of(n, 'label')} {'has' if n == 1 else 'have'} no image: "
                         f"{', '.join(map(str, ev.unmatched_labels[:20]))}"))

# %%
design = run.sheet()  # the sample sheet: with one, the answers by group (site, date, treatment)
comparison = None
if design is not None:
    import re

    from musseltools.plots import groups as group_plots

    by = [c for c in ("site", "date") if c in design and design[c].notna().any()]
    display(Markdown(
        "## Density and mortality by group\n\n"
        f"From the sample sheet `{run.meta['sheet']['file_name']}`: density per m² (count / area the images show) "
        "and live and dead fractions (mortality is the dead fraction) per group, each with its 95 % interval. "
        "The image is the sampling unit; \"no interval\" marks a group whose images cannot measure a variance "
        "(one image, or no variation between them)."
    ))
    if not by:
        display(Markdown("The sheet has no `site` or `date` column: there are no groups to show."))
    else:
        groups = run.by_group(by, threshold=t)
        display(group_plots.interval_table(groups, by))
        methods = dict.fromkeys(re.sub(r"\(df \d+\)", "(df: the group's images - 1)", m) for m in groups["method"])
        display(Markdown("Method: " + "; ".join(methods) + "."))
        display(group_plots.group_intervals(groups, by))
        if "date" in by and design["date"].nunique() > 1:
            display(Markdown("### Over time"))
            display(group_plots.density_over_time(groups, site="site" if "site" in by else None))
    if {"lat", "lon"} <= set(design) and design[["lat", "lon"]].notna().all(axis=1).any():
        display(Markdown("### Sites\n\nPositions from the sheet's `lat`/`lon` (no background map is fetched)."))
        display(group_plots.site_map(design, run.by_group("site", threshold=t) if "site" in design else None))
    if "treatment" in design and design["treatment"].nunique() > 1:
        comparison = run.compare_groups("treatment", threshold=t)
        display(Markdown(
            f"### Treatments compared with `{comparison.reference}`\n\n"
            "Differences per level (natural scale, Welch t intervals), then the GLMs: coefficients with 95 % "
            "intervals (`exp_*`: rate ratios for the counts, odds ratios for the dead fraction)."
        ))
        display(comparison.differences.drop(columns="method").round(3).set_index(["treatment", "quantity"]))
        display(Markdown("**Dispersion check** (Pearson chi-square / residual df; p < 0.05: overdispersed):"))
        display(comparison.dispersion.set_index("model")[["dispersion", "p_value", "decision"]].round(3))
        display(Markdown("**Count model** (mussels per image, `log(area)` offset):"))
        display(comparison.count_model.set_index("term").round(3))
        display(Markdown("**Dead model** (dead out of all mussels per image):"))
        display(comparison.dead_model.set_index("term").round(3))
        display(Markdown("To fit them in R on `musseltools export-table RUN images.csv` read as `images`:\n\n"
                         "```r\n" + "\n".join(comparison.formulas.values()) + "\n```"))
        for note in comparison.notes:
            display(Markdown(f"Note: {note}"))

# %%
scales = run.scales()  # each image's mm per pixel and where it came from: with any, the size section
if scales["source"].notna().any():
    from musseltools.plots import sizes as size_plots

    scaled = int(scales["source"].notna().sum())
    display(Markdown(
        "## Shell sizes\n\n"
        "Shell length per detection that counts: the long side of the minimum-area rectangle of its outline "
        "(oriented boxes, masks, boxes drawn by hand), or the long side of its box for a box detector (`length_method` "
        "\"box\", which under-states a tilted shell: docs/survey.md gives the measured error). Millimetres come "
        f"from each image's scale: {n_of(scaled, 'image')} of {len(scales)} have one."
    ))
    from musseltools.reports.report import scale_tables

    by_source, flagged = scale_tables(scales)
    display(by_source)
    if len(flagged):
        display(Markdown(f"**{n_of(len(flagged), 'drawn scale')} disagree{'s' if len(flagged) == 1 else ''} "
                         "with the sheet by more than 10 %** (the sheet's applies; check the sheet or redraw):"))
        display(flagged.round(4))
    size_by = [c for c in ("site",) if design is not None and c in design and design[c].nunique() > 1]
    sf = run.sizes(threshold=t)  # every image together
    if sf.note:
        display(Markdown(f"Note: {sf.note}."))
    display(Markdown(f"**Shell length ({sf.unit})**: median, 10th and 90th percentiles, each with its "
                     f"{sf.level:.0%} interval (images resampled), per category"
                     f"{' and ' + ', '.join(size_by) if size_by else ''}:"))
    sf_groups = run.sizes(by=size_by, threshold=t) if size_by else sf
    q = sf_groups.quantiles
    table = q[[*size_by, "category", "images", "n"]].assign(**{
        name: [f"{v:.1f} ({lo:.1f}–{hi:.1f})" for v, lo, hi in zip(q[name], q[f"{name}_low"], q[f"{name}_high"])]
        for name in ("p10", "median", "p90")})
    display(table.set_index([*size_by, "category"]))
    display(size_plots.size_histogram(sf, run.categories))
    if size_by:
        for category in run.categories:
            display(size_plots.size_ridgeline(sf_groups, category))
    if {"live", "dead"} <= set(run.categories):
        display(size_plots.live_dead_sizes(sf, ("live", "dead")))

# %%
if compare_model is not None:
    from musseltools.models import detect_family
    from musseltools.models.card import read_card, settings_after
    from musseltools.plots import compare as compare_plots

    display(Markdown(
        "## Comparison with a second model\n\n"
        f"The second model (`{Path(compare_model).name}`) ran on the same images with this run's settings, except "
        "those its own card recommends; its thresholds are its card's, else this run's. Run A is this report's, "
        "run B the second model's, and every difference is B − A. Settings that differ between the two runs "
        "change the counts too: they are listed first."
    ))
    same_family = detect_family(Path(compare_model).read_bytes(), Path(compare_model).name) == \
        meta["model"].get("family", "ultralytics")
    other = mt.run(
        images, model=compare_model, trust_pickle=trust_pickle, store=store, class_map=class_map,
        **settings_after(meta["settings"], t, read_card(compare_model), same_family=same_family),
        batch_size=batch_size, commit_every=commit_every, name=name, device=device, wait=wait, workers=workers,
        scheduler=scheduler, scheduler_file=scheduler_file, quiet=False,
    )
    cmp = mt.compare(run, other)
    a, b = cmp.run_a, cmp.run_b
    display(Markdown(
        f"Run A `{a['run_id']}` ({Path(a['model']).name}, {a['family']}) against run B `{b['run_id']}` "
        f"({Path(b['model']).name}, {b['family']}): {n_of(len(cmp.images), 'image')} with results in both."
    ))
    if cmp.differences.empty:
        display(Markdown("**Settings**: both runs used the same weights, settings and thresholds."))
    else:
        display(Markdown("**What differs between the two runs** besides their counts:"))
        display(cmp.differences.rename(columns={"a": f"A {a['run_id']}", "b": f"B {b['run_id']}"}))
    display(Markdown("**Agreement per image** (B − A; limits of agreement at 95 %):"))
    display(cmp.agreement.round(2))
    display(compare_plots.bland_altman(cmp))
    display(Markdown("**Survey totals** (95 % bootstrap intervals over images):"))
    display(cmp.totals.round(1))
    top = cmp.disagreements(10)
    if top.empty:
        display(Markdown("The two runs count every image alike."))
    else:
        display(Markdown("**Images where the two disagree most** (the head of the review queue given run B, "
                         "`run.review_queue(other=other)`):"))
        cols = [f"{c}_{s}" for c in cmp.categories for s in ("a", "b")]
        display(top.assign(image=top["path"].map(lambda p: Path(p).name))[["image", *cols, "disagreement"]]
                .set_index("image"))

# %% [markdown]
# ## Hand corrections and review
#
# Corrections made by hand (the correction editor, `run.reclassify(...)`, `musseltools corrections import`)
# are applied to every count above. Here: how many of each kind, the counts of the model alone and
# corrected, the images verified by hand, and the head of the review queue: the images whose counts are
# least certain (detections near the threshold), to check next.

# %%
saved = run.corrections()
in_effect = run.corrections(active=True)
kinds = ["reclassify", "delete", "add", "verify", "unverify"]
display(pd.DataFrame({"in effect": [int((in_effect["kind"] == k).sum()) for k in kinds],
                      "saved (undone included)": [int((saved["kind"] == k).sum()) for k in kinds]},
                     index=pd.Index(kinds, name="correction")))
display(pd.DataFrame({"model alone": run.counts(t, corrected=False), "corrected": totals}).rename_axis("category"))
verified_images = run.verified_images()
if verified_images.empty:
    display(Markdown("No image has been verified by hand yet."))
else:
    display(Markdown(f"**{n_of(len(verified_images), 'image')} verified by hand** (their corrected counts):"))
    display(verified_images.assign(image=verified_images["path"].map(lambda p: Path(p).name))
            [["image", *run.categories]].set_index("image"))
not_applied = run.corrections_report()
if len(not_applied):
    display(Markdown(f"{n_of(len(not_applied), 'correction')} of these images "
                     f"{'does' if len(not_applied) == 1 else 'do'} not apply to this run (made on other results):"))
    display(not_applied[["kind", "path", "detection_id", "reason"]])
queue = run.review_queue(n=10, threshold=t)
if queue.empty:
    display(Markdown("**Review queue**: no image is left to check."))
else:
    display(Markdown("**Review queue** (least certain first; score = how much the count moves within ±0.05 of "
                     "the threshold; a column that is the same for every image is left out):"))
    varying = [c for c in ("score", "near_threshold", "count_swing", *run.categories) if queue[c].nunique() > 1]
    display(queue.assign(image=queue["path"].map(lambda p: Path(p).name))[["image", *varying]].set_index("image"))

# %% [markdown]
# ## Methods
#
# A paragraph for a paper's methods section, written from what the run recorded: paste it and edit it there.

# %%
from musseltools.reports.methods import methods_paragraph

display(Markdown("> " + methods_paragraph(run, ev if truth is not None else None, comparison=comparison)))

# %% [markdown]
# ## Provenance

# %%
versions = meta.get("versions") or {}
settings = meta["settings"]
provenance = {
    "run id": run.run_id,
    "store": str(run.store.root.resolve()),
    "collection": f"{meta['collection']['name']} ({meta['total_images']} images)",
    "model": meta["model"]["path"],
    "model SHA-256": meta["model"]["fingerprint"],
    "model classes": ", ".join(run.class_names),
    "class map": meta["model"].get("class_map") or "none",
    "threshold": plots.threshold_label(t),
    "inference settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
    "inference key": meta["inference_key"],
    "musseltools": versions.get("musseltools", mt.__version__),
    "ultralytics": versions.get("ultralytics", "?"),
    "torch": versions.get("torch", "?"),
    "torchvision": versions.get("torchvision", "?"),
    "python": platform.python_version(),
    "run created": shown(meta.get("created_at")),
    "inference finished": shown(meta.get("inference_finished_at") or meta.get("finished_at")),
    "thresholds saved": shown(meta["thresholds_saved_at"]) if meta.get("thresholds_saved_at") else "never",
    "report date": shown(dt.datetime.now(dt.timezone.utc).isoformat()),
}
display(pd.DataFrame({"value": [str(v) for v in provenance.values()]}, index=pd.Index(provenance, name="")))

# %%
if truth is not None:
    display(Markdown("## Appendix: every evaluation metric\n\nOne column per class; counts are per image "
                     "(`count_mae`, `count_rmse`, `count_bias`) or over the survey (`*_total`)."))
    display(metrics.T.map(lambda v: round(v, 3) if isinstance(v, float) else v))
