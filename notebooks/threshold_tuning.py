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

# %% [markdown]
# # Threshold tuning
#
# Choose the confidence threshold of each class by eye. The sliders filter the detections the run has
# already stored (down to its confidence floor): moving one never runs the model. **Save thresholds**
# records them on the run, so `musseltools counts RUN_ID`, polygon exports and reports use them.
#
# Set the parameters, then *Run All*. With `run_id` set, an existing run is opened instead of run.
# The defaults are those of `make demo` (the demo weights' card: per-class thresholds, tiles for
# large photos, NMS IoU 0.4), and the default store is the project's `data/store` whether this notebook runs from `notebooks/` or from the project root (the nearest
# folder, upwards, holding `data/store` or `pyproject.toml`), so Run All opens the demo run that
# `make demo` made and `musseltools counts RUN_ID` from the project root finds it. The tuner's first
# line names the run, the store and the settings it shows.

# %% tags=["parameters"]
images = "../data/demo/images"  # folder of survey photographs
model = "../data/models/mussel-demo.pt"  # Ultralytics YOLO weights
threshold = None  # the run's threshold, or one per class (default: the weights' card's, else 0.5); the sliders start there
store = None  # results store (default: $MUSSELTOOLS_STORE, else data/store in the project root)
run_id = None  # open this existing run instead of running `images` with `model`
class_map = None
truth = None  # labels (YOLO folder, COCO JSON or counts CSV): precision, recall and count error live
tile = None  # tile large photos: "auto", a tile size in pixels or "none" (default: the weights' card's, else none)
tile_overlap = None  # (default: the card's, else 0.2)
tile_merge = None  # "edge", "ios" or "nmm" (default: the card's, else edge)
iou = None  # NMS IoU (default: the card's, else the family's own)
imgsz = None  # model input size (default: the size the model was trained at)
background = False  # run in a background thread and show a RunMonitor while it works
calibrate = True  # with `truth`: search the NMS IoU (tile size and merge) and thresholds, offer to write the card
calibrate_ious = None  # the NMS IoUs searched (default 0.3 to 0.7, step 0.05); fewer is faster

# %%
from IPython.display import display

import musseltools as mt
from musseltools.jupyter import CalibrationPanel, RunMonitor, ThresholdTuner

# %% [markdown]
# ## The run
#
# `mt.run` infers only the images without a stored result and shows a progress bar. To keep the
# notebook responsive during a long survey, run it in the background and watch it with a `RunMonitor`
# (which reads the run's `run.json`, so it also follows a run started in another process, e.g. with
# `musseltools run` in a terminal: `RunMonitor("RUN_ID", store=...)`). Its bar counts images as they are
# inferred, and until the first one it says what the run is doing ("loading model", "measuring batch
# size", "starting 2 worker processes"). Cancelling keeps every image already inferred; running the same
# cell again while the run works returns the same handle instead of a lock error:
#
# ```python
# handle = mt.run(images, model=model, background=True)
# display(RunMonitor(handle))   # status and a progress bar, polled every second
# handle.cancel()               # stops after the current batch; what is inferred is kept
# run = handle.wait()           # the Run, once it has ended
# ```

# %%
if run_id is not None:
    run = mt.open_run(run_id, store=store)
elif background:
    handle = mt.run(images, model=model, threshold=threshold, store=store, class_map=class_map, tile=tile,
                    tile_overlap=tile_overlap, tile_merge=tile_merge, iou=iou, imgsz=imgsz, background=True)
    monitor = RunMonitor(handle)
    display(monitor)
    run = handle.wait()
    monitor.refresh()
else:
    run = mt.run(images, model=model, threshold=threshold, store=store, class_map=class_map, tile=tile,
                 tile_overlap=tile_overlap, tile_merge=tile_merge, iou=iou, imgsz=imgsz, quiet=False)
run

# %% [markdown]
# ## Tune
#
# One slider per class. The image shows the detections kept at the current thresholds, live in blue and
# dead in orange (a colour-blind-safe palette, the same in every figure), with a legend of its counts.
# Step through the images with **◀ / ▶** (each button shows that image's counts), or jump with the list;
# **sort** orders them by count, by failures, or (with `truth`) by disagreement with the labels. **zoom**
# (2x-8x) and **pan** show a part of a large quadrat at full detail; **confidence per box** writes each
# kept box's confidence. The curve shows the survey total against the threshold; the dots follow the
# sliders.

# %%
tuner = ThresholdTuner(run, truth=truth)
tuner

# %% [markdown]
# After saving, the thresholds are part of the run:
#
# ```python
# run.thresholds                       # {'live': 0.55, 'dead': 0.4}
# run.counts()                         # counts at the saved thresholds
# ```
# and `musseltools counts RUN_ID`, `musseltools export-polygons RUN_ID OUT` and `musseltools report` use them.

# %% [markdown]
# ## Calibrate the detector
#
# With `truth` (labels of some of the run's images), `mt.calibrate` searches what the sliders cannot: the
# NMS IoU (0.3 to 0.7) and, for a tiled run, the tile size and merge, with per-class thresholds of least
# count error at each, chosen by cross-validation over the labelled images (see `docs/calibration.md`).
# Only the labelled images are inferred, once per setting (cached: running the cell again infers
# nothing); a tiled run searches 81 settings, so label a few images, or narrow the search with
# `calibrate_ious`. The table shows the count error of each setting, in-sample and cross-validated, the
# chosen one marked `*`. **Write the card** writes the chosen settings beside the weights
# (`WEIGHTS.yaml`), and later runs of those weights use them for every setting they are not given; an
# existing card is replaced only with *replace the existing card* ticked (the old one is kept as a backup).

# %%
if truth is not None and calibrate:
    calibration = mt.calibrate(run, truth, ious=calibrate_ious)
    display(CalibrationPanel(calibration))
else:
    print("no calibration: set `truth` to labels of some of the run's images (and `calibrate = True`) to choose "
          "the detector's NMS IoU, tile merge and thresholds from them")
