"""Read an annotation file with a library musseltools did not write, in the referee venv (.venv-referees,
made by `make dev`); print {image file name without suffix: [[label, x1, y1, x2, y2], ...]} as JSON.

    .venv-referees/bin/python tests/referees/read.py datumaro-coco FILE.json IMAGES WORKDIR
    .venv-referees/bin/python tests/referees/read.py datumaro-cvat FILE.xml IMAGES WORKDIR
    .venv-referees/bin/python tests/referees/read.py datumaro-yolo FOLDER IMAGES WORKDIR
    .venv-referees/bin/python tests/referees/read.py labelstudio-coco FILE.json CONFIG.xml WORKDIR

datumaro wants its own layout around a file (COCO under annotations/, CVAT's and YOLO's images beside
them): the file is copied into WORKDIR in that layout, with the image folder IMAGES linked in.
"""

import json
import os
import sys


def layout(fmt, path, images, workdir):
    """The file (or folder) in the layout datumaro reads, in workdir."""
    import shutil

    if fmt == "coco_instances":
        os.makedirs(os.path.join(workdir, "annotations"), exist_ok=True)
        shutil.copy(path, os.path.join(workdir, "annotations", "instances_default.json"))
        os.symlink(images, os.path.join(workdir, "images"))
        return workdir
    if fmt == "cvat":
        shutil.copy(path, os.path.join(workdir, "default.xml"))
        os.symlink(images, os.path.join(workdir, "images"))
        return os.path.join(workdir, "default.xml")
    root = os.path.join(workdir, "yolo")
    shutil.copytree(path, root)
    os.makedirs(os.path.join(root, "images"))
    os.rename(os.path.join(root, "labels"), os.path.join(root, "labels-flat"))
    os.makedirs(os.path.join(root, "labels"))
    os.rename(os.path.join(root, "labels-flat"), os.path.join(root, "labels", "train"))
    os.symlink(images, os.path.join(root, "images", "train"))
    return root


def datumaro(fmt, path, images, workdir):
    import datumaro as dm
    from datumaro.components.annotation import AnnotationType

    ds = dm.Dataset.import_from(layout(fmt, path, images, workdir), fmt)
    labels = ds.categories()[AnnotationType.label]
    out = {}
    for item in ds:
        boxes = out.setdefault(os.path.basename(item.id), [])
        seen = set()
        for ann in item.annotations:
            if not hasattr(ann, "get_bbox") or (ann.id and ann.id in seen):
                continue  # datumaro gives a COCO polygon's bbox as a second annotation of the same id
            seen.add(ann.id)
            x, y, w, h = ann.get_bbox()
            boxes.append([labels[ann.label].name, x, y, x + w, y + h])
    return out


def labelstudio_coco(path, config, workdir):
    from label_studio_sdk.converter import Converter

    with open(path) as f:
        tasks = json.load(f)
    for k, t in enumerate(tasks):  # what Label Studio does on import, and when an annotator accepts predictions
        t["id"] = k + 1
        t["annotations"] = t.pop("predictions")
    accepted = os.path.join(workdir, "accepted.json")
    with open(accepted, "w") as f:
        json.dump(tasks, f)
    Converter(config=config, project_dir=workdir, download_resources=False).convert_to_coco(
        accepted, os.path.join(workdir, "coco"), is_dir=False)
    with open(os.path.join(workdir, "coco", "result.json")) as f:
        doc = json.load(f)
    names = {c["id"]: c["name"] for c in doc["categories"]}
    # the converter names an image it could not download "<hash>__<name>"
    files = {im["id"]: os.path.splitext(os.path.basename(im["file_name"]))[0].split("__")[-1] for im in doc["images"]}
    out = {name: [] for name in files.values()}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        out[files[a["image_id"]]].append([names[a["category_id"]], x, y, x + w, y + h])
    return out


if __name__ == "__main__":
    tool, path = sys.argv[1], sys.argv[2]
    if tool.startswith("datumaro-"):
        fmt = {"coco": "coco_instances", "cvat": "cvat", "yolo": "yolo"}[tool.split("-", 1)[1]]
        result = datumaro(fmt, path, sys.argv[3], sys.argv[4])
    else:
        result = labelstudio_coco(path, sys.argv[3], sys.argv[4])
    print(json.dumps(result))
