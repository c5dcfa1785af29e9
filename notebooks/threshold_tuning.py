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

# %% tags=["parameters"]
images = "../data/demo/images"  # folder of survey photographs
model = "../data/models/mussel-demo.pt"  # Ultralytics YOLO weights
threshold = 0.5  # the run's threshold (the sliders start at the saved thresholds, else this)
store = None  # results store (default: $MUSSELTOOLS_STORE or ./data/store)
run_id = None  # open this existing run instead of running `images` with `model`
class_map = None
truth = None  # labels (YOLO folder, COCO JSON or counts CSV): precision, recall and count error live
tile = None
tile_overlap = 0.2
imgsz = None  # model input size (default: the size the model was trained at)
background = False  # run in a background thread and show a RunMonitor while it works

# %%
from IPython.display import display

import musseltools as mt
from musseltools.widgets import RunMonitor, ThresholdTuner

# %% [markdown]
# ## The run
#
# `mt.run` infers only the images without a stored result and shows a progress bar. To keep the
# notebook responsive during a long survey, run it in the background and watch it with a `RunMonitor`
# (which reads the run's `run.json`, so it also follows a run started in another process, e.g. with
# `musseltools run` in a terminal: `RunMonitor("RUN_ID", store=...)`):
#
# ```python
# handle = mt.run(images, model=model, background=True)
# display(RunMonitor(handle))   # status and a progress bar, polled every second
# handle.cancel()               # stops after the current batch; committed work is kept
# run = handle.wait()           # the Run, once it has ended
# ```

# %%
if run_id is not None:
    run = mt.open_run(run_id, store=store)
elif background:
    handle = mt.run(images, model=model, threshold=threshold, store=store, class_map=class_map, tile=tile,
                    tile_overlap=tile_overlap, imgsz=imgsz, background=True)
    monitor = RunMonitor(handle)
    display(monitor)
    run = handle.wait()
    monitor.refresh()
else:
    run = mt.run(images, model=model, threshold=threshold, store=store, class_map=class_map, tile=tile,
                 tile_overlap=tile_overlap, imgsz=imgsz, quiet=False)
run

# %% [markdown]
# ## Tune
#
# One slider per class; pick an image to see the detections kept at the current thresholds (colour by
# class). The curve shows the survey total against the threshold; the dots follow the sliders.

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
