"""The torchvision family: Faster R-CNN checkpoints load in every form, count as torchvision counts, and live beside YOLO.

Models are randomly initialised (``weights=None, weights_backbone=None``: no download), calibrated so that
their scores spread over (0, 1) (``tv_models.py``), and saved in each checkpoint form the family reads.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from conftest import write_images
from tv_models import SMALL, calibrated_net, save_checkpoint, write_sidecar

import musseltools as mt
from musseltools.cli import main
from musseltools.images.decode import decode_image
from musseltools.models import (
    InferenceSettings,
    TiledPredictor,
    TorchvisionFamily,
    detect_family,
    load_model,
    make_predictor,
)
from musseltools.models.base import Prepared
from musseltools.models.torchvision import parse_sidecar, recognise_architecture, transform_sizes

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

FLOOR = 0.05
THRESHOLDS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)
ARCH_YAML = f"architecture: {SMALL}\n"


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def net():
    return calibrated_net()


@pytest.fixture(scope="module")
def checkpoints(net, tmp_path_factory):
    """The net saved in each form: ``bare`` (+ a sidecar naming the 320 variant), ``model_state_dict``
    (naming it under ``arch``), ``state_dict`` (+ sidecar), ``pickle`` (a fully pickled model)."""
    root = tmp_path_factory.mktemp("frcnn")
    paths = {form: save_checkpoint(net, root / f"frcnn-{form}.pt", form) for form in ("bare", "state_dict", "pickle")}
    paths["model_state_dict"] = save_checkpoint(net, root / "frcnn-model_state_dict.pt", "model_state_dict", arch=SMALL)
    for form in ("bare", "state_dict"):
        write_sidecar(paths[form], ARCH_YAML)
    return paths


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    folder = tmp_path_factory.mktemp("survey") / "images"
    write_images(folder, 4, seed=3)
    return folder


def _tensor(path) -> torch.Tensor:
    """An image as torchvision's detection models take it (RGB float in [0, 1]), decoded as musseltools decodes."""
    from torchvision.transforms.functional import to_tensor

    return to_tensor(np.ascontiguousarray(decode_image(path.read_bytes())[:, :, ::-1]))


def _direct(net, min_size=320, max_size=640, floor=FLOOR, max_det=10000, iou=0.5):
    """The same weights in a model built by torchvision's own builder, with the same limits."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    direct = fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3, box_score_thresh=floor, box_detections_per_img=max_det,
        box_nms_thresh=iou, min_size=min_size, max_size=max_size)
    direct.load_state_dict(net.state_dict())
    return direct.eval()


def _direct_results(direct, paths) -> dict[str, dict]:
    """torchvision's own outputs, image by image."""
    with torch.inference_mode():
        return {p.name: direct([_tensor(p)])[0] for p in paths}


def _counts(results: dict[str, dict], t: float) -> dict[str, tuple[int, int]]:
    """(live, dead) per image name: labels 1 and 2 with a score of at least ``t``."""
    out = {}
    for name, r in results.items():
        keep = r["scores"] >= t
        out[name] = (int((r["labels"][keep] == 1).sum()), int((r["labels"][keep] == 2).sum()))
    return out


def _run_counts(run, t: float) -> dict[str, tuple[int, int]]:
    table = run.per_image(t)
    return {p.rsplit("/", 1)[-1]: (int(a), int(b)) for p, a, b in zip(table["path"], table["live"], table["dead"])}


# ---------------------------------------------------------------------------------------------- loading
def test_every_checkpoint_form_loads_as_the_same_model(checkpoints, net, caplog):
    weights = net.state_dict()
    for form in ("bare", "model_state_dict", "state_dict"):
        path = checkpoints[form]
        assert detect_family(path.read_bytes(), path.name) == "torchvision", form
        m = load_model(path)
        # labels 1 and 2 (0 is the background) are musseltools' classes 0 and 1, as YOLO numbers them
        assert (m.info.family, m.info.task, m.info.names) == ("torchvision", "detect", {0: "live", 1: "dead"})
        assert m.model.architecture == SMALL and m.model.num_classes == 3 and m.train_imgsz == 320, form
        loaded = m.model.net.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in weights.items()), form
    # a fully pickled model is code: refused without the flag, loaded (rebuilt from its state dict) with it
    with pytest.raises(mt.ModelLoadError, match=r"fully pickled model.*--trust-pickle \(trust_pickle=True\)"):
        load_model(checkpoints["pickle"])
    m = load_model(checkpoints["pickle"], trust_pickle=True)
    assert m.info.trust_pickle and m.model.architecture == SMALL  # its own 320/640 transform names the variant
    assert all(torch.equal(m.model.net.state_dict()[k], v) for k, v in weights.items())
    # without a sidecar or a checkpoint that names it, MobileNet weights are the full-size variant, with a warning
    bare = checkpoints["bare"].with_name("nameless.pt")
    shutil.copy(checkpoints["bare"], bare)
    with caplog.at_level(logging.WARNING, logger="musseltools.models.torchvision"):
        assert load_model(bare).model.architecture == "fasterrcnn_mobilenet_v3_large_fpn"
    assert "fit both" in caplog.text and "architecture:" in caplog.text


def test_architectures_and_classes_are_recognised_from_keys_and_shapes():
    from torchvision.models import detection
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    def state(builder, **kw):
        with torch.device("meta"):  # shapes without memory or time
            return getattr(detection, builder)(weights=None, weights_backbone=None, **kw).state_dict()

    for arch in ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn"):
        sd = state(arch, num_classes=5)
        assert recognise_architecture(sd) == arch
        assert sd["roi_heads.box_predictor.cls_score.weight"].shape[0] == 5
    sd = state(SMALL, num_classes=3)
    assert recognise_architecture(sd, hint=SMALL) == SMALL
    with pytest.raises(mt.ModelLoadError, match="said to be a fasterrcnn_resnet50_fpn, but its weights are those of"):
        recognise_architecture(sd, hint="fasterrcnn_resnet50_fpn")
    with pytest.raises(mt.ModelLoadError, match="is a Mask R-CNN checkpoint — expected a Faster R-CNN"):
        recognise_architecture(state("maskrcnn_resnet50_fpn", num_classes=3))
    with pytest.raises(mt.ModelLoadError, match="no Faster R-CNN box predictor"):
        recognise_architecture(state("retinanet_resnet50_fpn", num_classes=3))
    with torch.device("meta"):
        r101 = detection.FasterRCNN(resnet_fpn_backbone(backbone_name="resnet101", weights=None), num_classes=3)
    with pytest.raises(mt.ModelLoadError, match=r"ResNet body with \[3, 4, 23, 3\] blocks"):
        recognise_architecture(r101.state_dict())


def test_class_names_come_from_the_documented_sidecar():
    assert parse_sidecar({}, 3) == ({1: "live", 2: "dead"}, None)  # the replaced system's convention
    assert parse_sidecar({"m.yaml": b"names: {1: alive, 2: gaping, 3: spat}\n"}, 4) == (
        {1: "alive", 2: "gaping", 3: "spat"}, None)
    assert parse_sidecar({"m.json": json.dumps({"names": {"2": "dead", "1": "live"}, "architecture": SMALL}).encode()},
                         3) == ({1: "live", 2: "dead"}, SMALL)
    assert parse_sidecar({"m.yaml": b"names: [a, b]\n"}, 3)[0] == {1: "a", 2: "b"}
    bad = {
        "label 0 is the background": b"names: {0: bg, 1: live, 2: dead}",
        r"labels \[1\] — expected one unique name for each of labels \[1, 2\]": b"names: {1: live}",
        "expected one unique name": b"names: [live, live]",
        r"holds \['name'\] — expected a mapping with the keys names": b"name: [live, dead]",
        "names architecture 'yolo'": b"architecture: yolo",
        "cannot read the sidecar": b"names: [live, dead",
    }
    for message, body in bad.items():
        with pytest.raises(mt.ModelLoadError, match=message):
            parse_sidecar({"m.yaml": body}, 3)
    with pytest.raises(mt.ModelLoadError, match=r"has two sidecars \(m.json, m.yaml\)"):
        parse_sidecar({"m.yaml": b"names: [a, b]", "m.json": b"{}"}, 3)
    with pytest.raises(mt.ModelLoadError, match="has 3 object classes and no sidecar naming them — expected m.yaml"):
        parse_sidecar({}, 4, "m.pt")


def test_the_sidecar_is_part_of_the_model(checkpoints, survey, tmp_path):
    weights = tmp_path / "renamed.pt"
    shutil.copy(checkpoints["bare"], weights)
    side = write_sidecar(weights, ARCH_YAML + "names: {1: alive, 2: gaping}\n")
    first = load_model(weights)
    assert first.info.names == {0: "alive", 1: "gaping"}
    assert first.info.fingerprint != mt.models.fingerprint(weights)  # weights and sidecar hashed together
    run = mt.run(survey, model=weights, store="store", quiet=True, max_det=20)
    assert run.categories == ["alive", "gaping"] and run.meta["settings"]["max_det"] == 20
    assert (run.per_image(FLOOR)["cap_hit"]).any()  # the cap is the run's max_det, and flagged when reached
    side.write_text(ARCH_YAML + "names: {1: live, 2: dead}\n")  # new names: a new model for the same weights
    assert load_model(weights).info.fingerprint != first.info.fingerprint
    with pytest.raises(mt.ModelChangedError, match=r"changed since run .* was made"):
        mt.run(survey, model=weights, store="store", quiet=True, max_det=20)
    side.with_suffix(".json").write_text("{}")
    with pytest.raises(mt.ModelLoadError, match="has two sidecars"):
        load_model(weights)


def test_families_are_detected_overridden_and_a_stranger_is_named_once(checkpoints, tiny_model, tmp_path):
    assert not TorchvisionFamily().claims(tiny_model.read_bytes(), tiny_model.name)
    assert detect_family(tiny_model.read_bytes(), tiny_model.name) == "ultralytics"
    with pytest.raises(mt.ModelLoadError, match="is not a torchvision Faster R-CNN checkpoint.*leave out --model-family"):
        load_model(tiny_model, family="torchvision")
    with pytest.raises(mt.ModelLoadError, match="cannot load weights file .*frcnn-bare.pt.*Ultralytics"):
        load_model(checkpoints["bare"], family="ultralytics")
    stranger = tmp_path / "stranger.pt"
    torch.save({"weights": [1, 2, 3]}, stranger)
    with pytest.raises(mt.ModelLoadError) as info:
        mt.run(tmp_path, model=stranger, store="store", quiet=True)
    message = str(info.value)
    assert message.startswith(f"cannot load weights file '{stranger}': no model family recognises it — expected an "
                              "Ultralytics YOLO .pt file (ultralytics) or a torchvision Faster R-CNN checkpoint")
    assert "--model-family" in message
    code = main(["run", str(tmp_path), "--model", str(checkpoints["bare"]), "--model-family", "nope", "--json"])
    assert code == 1


def test_loading_never_runs_code_from_the_file_without_the_trust_flag(net, tmp_path):
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    hostile = tmp_path / "hostile.pt"
    torch.save({"model_state_dict": net.state_dict(), "note": Payload()}, hostile)
    assert detect_family(hostile.read_bytes(), hostile.name) == "torchvision"
    with pytest.raises(mt.ModelLoadError, match=r"holds Python objects, not only tensors \(it names \w+\.open\)"):
        load_model(hostile)
    assert not marker.exists(), "a state-dict checkpoint was unpickled with more than weights_only"
    load_model(hostile, trust_pickle=True)  # the user's call: the pickle runs
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("imgsz", [None, 256])
def test_counts_equal_torchvision_called_directly_at_every_threshold(checkpoints, net, survey, imgsz):
    run = mt.run(survey, model=checkpoints["model_state_dict"], store="store", quiet=True, conf_floor=FLOOR,
                 imgsz=imgsz, threshold=0.5)
    settings = run.meta["settings"]
    min_size, max_size = transform_sizes(SMALL, imgsz or 320)
    assert (settings["imgsz"], settings["iou"], settings["conf_floor"]) == (imgsz or 320, 0.5, FLOOR)
    paths = sorted(survey.glob("*.jpg"))
    theirs = _direct_results(_direct(net, min_size, max_size), paths)
    for t in THRESHOLDS:
        ours = _run_counts(run, t)
        assert ours == _counts(theirs, t), t
        assert sum(a + b for a, b in ours.values()) > 0 or t >= 0.75
    # the floor is stored, not the threshold: the model itself at a threshold gives the view at that threshold
    at_half = _direct_results(_direct(net, min_size, max_size, floor=0.5), paths)
    assert _counts(at_half, 0.5) == _run_counts(run, 0.5) == _counts(at_half, FLOOR)
    boxes = run.detections(FLOOR).sort_values(["path", "confidence"], ascending=[True, False])
    r = theirs[paths[0].name]
    mine = boxes[boxes["path"].str.endswith(paths[0].name)]
    assert len(mine) == len(r["scores"])
    np.testing.assert_allclose(mine[["x1", "y1", "x2", "y2"]].to_numpy(), r["boxes"].numpy(), atol=1e-3)


def test_batches_give_the_results_of_single_images(checkpoints, survey):
    model = load_model(checkpoints["bare"])
    p = make_predictor(model, InferenceSettings(imgsz=320, conf_floor=FLOOR, iou=0.5))
    assert (p.net.transform.min_size, p.net.transform.max_size) == ((320,), 640)
    assert (p.net.roi_heads.score_thresh, p.net.roi_heads.detections_per_img) == (FLOOR, 10000)
    images = [decode_image(f.read_bytes()) for f in sorted(survey.glob("*.jpg"))[:3]]
    images.append(np.ascontiguousarray(images[0][:80, :100]))  # another size: runs in a batch of its own
    prepared = [p.prepare(im) for im in images]
    together = p.predict(prepared)
    p.batch_size = 1
    alone = [p.predict([x])[0] for x in prepared]
    for a, b in zip(together, alone):
        assert len(a) == len(b) and a.image_size == b.image_size
        np.testing.assert_allclose(a.confidence, b.confidence, atol=1e-5)
        np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
    assert together[3].image_size == (100, 80)


class _Reference:
    """A predictor that calls torchvision's own model directly (the reference that tiles must agree with)."""

    def __init__(self, direct, names):
        self.direct, self.names, self.device, self.task, self.batch_size = direct, names, "cpu", "detect", None

    def prepare(self, image):
        from torchvision.transforms.functional import to_tensor

        return Prepared(image=image, tensor=to_tensor(np.ascontiguousarray(image[:, :, ::-1])))

    def predict(self, batch):
        with torch.inference_mode():
            out = [self.direct([b.tensor])[0] for b in batch]
        return [mt.Detections(r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy() - 1, names=self.names,
                              image_size=(b.image.shape[1], b.image.shape[0])) for r, b in zip(out, batch)]


def test_tiles_wrap_faster_rcnn_like_any_predictor(checkpoints, net, tmp_path):
    folder = tmp_path / "quadrats"
    write_images(folder, 1, seed=11, size=(360, 270))
    run = mt.run(folder, model=checkpoints["bare"], store="store", quiet=True, tile=160, conf_floor=FLOOR)
    assert run.meta["settings"]["tile"] == 160
    dets = run.detections(FLOOR)
    assert set(dets["class_id"]) <= {0, 1} and set(dets["class_name"]) == {"live", "dead"}
    assert len(dets) and dets["x2"].max() > 160 and dets["y2"].max() > 160  # tiles mapped back into the image
    assert dets["x2"].max() <= 360 + 1e-3 and dets["y2"].max() <= 270 + 1e-3
    settings = InferenceSettings(imgsz=320, conf_floor=FLOOR, iou=0.5, tile=160)
    reference = TiledPredictor(_Reference(_direct(net), {0: "live", 1: "dead"}), settings)
    image = decode_image(next(folder.glob("*.jpg")).read_bytes())
    [want] = reference.predict([reference.prepare(image)])
    assert len(want) == len(dets)
    np.testing.assert_allclose(np.sort(want.confidence), np.sort(dets["confidence"].to_numpy()), atol=1e-5)


def test_yolo_and_faster_rcnn_results_sit_side_by_side_in_one_store(checkpoints, tiny_model, survey, monkeypatch):
    yolo = mt.run(survey, model=tiny_model, store="store", quiet=True, imgsz=128, threshold=0.3)
    frcnn = mt.run(survey, model=checkpoints["state_dict"], store="store", quiet=True, threshold=0.3)
    assert yolo.meta["inference_key"] != frcnn.meta["inference_key"]
    assert (yolo.meta["model"]["family"], frcnn.meta["model"]["family"]) == ("ultralytics", "torchvision")
    assert (yolo.meta["settings"]["iou"], frcnn.meta["settings"]["iou"]) == (0.7, 0.5)  # each family's own NMS IoU
    store = mt.Store("store")
    for r in (yolo, frcnn):
        images, dets = store.read_results(r.meta["inference_key"])
        assert len(images) == 4 and images["error"].isna().all() and len(dets)
    yolo_counts = yolo.per_image()
    assert set(mt.list_runs(store="store")["run_id"]) >= {yolo.run_id, frcnn.run_id}
    # resuming either infers nothing and never builds the Faster R-CNN again
    monkeypatch.setattr(TorchvisionFamily, "build", lambda *a, **k: pytest.fail("the model was built"))
    again = mt.run(survey, model=checkpoints["state_dict"], store="store", quiet=True, threshold=0.3)
    assert again.meta["inferred_this_call"] == 0 and again.totals == frcnn.totals
    assert yolo.per_image().equals(yolo_counts)


def test_corrections_and_datasets_number_faster_rcnn_classes_as_yolo(checkpoints, survey, tmp_path):
    import yaml

    from musseltools.corrections.dataset import export_dataset

    run = mt.run(survey, model=checkpoints["bare"], store="store", quiet=True, threshold=0.5)
    live = run.detections().query("class_name == 'live'").iloc[0]
    before = run.counts()
    run.reclassify(live.detection_id, "dead")
    assert run.counts() == {"live": before["live"] - 1, "dead": before["dead"] + 1}
    dets = run.detections()
    assert (dets.groupby("class_name")["class_id"].unique().map(list).to_dict()) == {"live": [0], "dead": [1]}
    run.verify(live.path)
    data = export_dataset(run, tmp_path / "dataset")  # its data.yaml
    assert yaml.safe_load(data.read_text())["names"] == {0: "live", 1: "dead"}
    out = data.parent
    [labels] = list(out.glob("labels/*/*.txt"))
    classes = [int(line.split()[0]) for line in labels.read_text().splitlines()]
    mine = dets[dets["image_id"] == live.image_id]
    assert sorted(classes) == sorted(mine["class_id"].tolist())


def test_cli_runs_faster_rcnn_with_family_and_trust_flags(checkpoints, survey, capsys):
    code = main(["run", str(survey), "--model", str(checkpoints["model_state_dict"]), "--model-family", "torchvision",
                 "--store", "store", "--json", "--imgsz", "160"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["status"] == "completed" and set(out["counts"]) == {"live", "dead"}
    assert main(["run", str(survey), "--model", str(checkpoints["pickle"]), "--store", "store", "--json"]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    code = main(["run", str(survey), "--model", str(checkpoints["pickle"]), "--trust-pickle", "--store", "store",
                 "--json", "--imgsz", "160"])
    assert code == 0 and json.loads(capsys.readouterr().out)["counts"] == out["counts"]  # the same weights


def test_worker_processes_load_the_trusted_pickle_too(checkpoints, survey):
    """The trust given to a run travels with its task: each worker process loads the same bytes with it."""
    here = mt.run(survey, model=checkpoints["bare"], store="store", quiet=True, imgsz=160, workers=1)
    there = mt.run(survey, model=checkpoints["pickle"], trust_pickle=True, store="store", quiet=True, imgsz=160,
                   workers=2, commit_every=2)
    assert there.meta["model"]["trust_pickle"] and "ProcessExecutor" in there.meta["executor"]
    assert there.status == "completed" and there.meta["failed_count"] == 0
    assert _run_counts(there, 0.3) == _run_counts(here, 0.3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_counts_equal_cpu_counts(checkpoints, survey):
    model = load_model(checkpoints["bare"])
    settings = InferenceSettings(imgsz=320, conf_floor=FLOOR, iou=0.5)
    cpu, gpu = make_predictor(model, settings, device="cpu"), make_predictor(model, settings, device="cuda:0")
    images = [decode_image(f.read_bytes()) for f in sorted(survey.glob("*.jpg"))]
    on_cpu, on_gpu = cpu.predict([cpu.prepare(i) for i in images]), gpu.predict([gpu.prepare(i) for i in images])
    for a, b in zip(on_cpu, on_gpu):
        for t in THRESHOLDS:
            if np.abs(a.confidence - t).min(initial=1) > 1e-3:  # no CPU score at the threshold's edge
                assert np.bincount(a.class_id[a.confidence >= t], minlength=2).tolist() == \
                    np.bincount(b.class_id[b.confidence >= t], minlength=2).tolist()


@pytest.mark.slow
def test_resnet50_fpn_the_replaced_systems_model(tmp_path):
    """The replaced system's model: ``fasterrcnn_resnet50_fpn(num_classes=3)``, saved as a training checkpoint."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(1)
    net = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3).eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.roi_heads.box_predictor.cls_score.weight, 0, 0.5)
    weights = save_checkpoint(net, tmp_path / "replaced.pt", "model_state_dict")
    folder = tmp_path / "images"
    write_images(folder, 2, seed=5)
    run = mt.run(folder, model=weights, store="store", quiet=True, imgsz=256, conf_floor=FLOOR)
    assert run.meta["model"]["names"] == {"0": "live", "1": "dead"}
    assert load_model(weights).model.architecture == "fasterrcnn_resnet50_fpn"
    direct = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, box_score_thresh=FLOOR,
                                     box_detections_per_img=10000, min_size=256, max_size=round(256 * 1333 / 800))
    direct.load_state_dict(net.state_dict())
    direct.eval()
    theirs = _direct_results(direct, sorted(folder.glob("*.jpg")))
    for t in (FLOOR, 0.3, 0.6):
        assert _run_counts(run, t) == _counts(theirs, t), t
