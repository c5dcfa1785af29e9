"""Model families: the registry, loading from the hashed bytes, model cards, the family in the inference key."""

from __future__ import annotations

import hashlib

import pytest
import torch
from conftest import IMGSZ, write_images

import musseltools as mt
from musseltools.models import (
    InferenceSettings,
    UltralyticsFamily,
    describe_model,
    detect_family,
    families,
    get_family,
    load_model,
)
from musseltools.models.base import LEGACY_FAMILY

KW = {"imgsz": IMGSZ, "quiet": True, "store": "store"}


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


def test_the_ultralytics_family_is_registered_and_detected(tiny_model, tmp_path):
    assert "ultralytics" in families()
    assert isinstance(get_family("ultralytics"), UltralyticsFamily)
    assert detect_family(tiny_model.read_bytes(), tiny_model.name) == "ultralytics"
    assert not UltralyticsFamily().claims(b"not a checkpoint", "x.pt")
    with pytest.raises(mt.ModelLoadError, match="unknown model family 'nope'.*ultralytics"):
        get_family("nope")
    with pytest.raises(mt.ModelLoadError, match="unknown model family"):
        load_model(tiny_model, family="nope")


def test_the_family_keys_results_but_the_ultralytics_key_is_unchanged():
    s = InferenceSettings(imgsz=320, tile="auto", iou=0.5)
    # the payload before families existed (RESULTS_FORMAT 1), so existing stores keep their results
    assert s.key("x") == s.key("x", LEGACY_FAMILY) == "a92cd6c781e566b8"
    assert InferenceSettings(imgsz=128).key("abc") == "e1e6f78b34229adb"
    assert s.key("x", "torchvision") != s.key("x")


def test_the_model_is_built_from_the_bytes_that_were_hashed(tmp_path, model_factory, monkeypatch):
    weights = tmp_path / "model.pt"
    weights.write_bytes(model_factory("detect", 0).read_bytes())
    original = hashlib.sha256(weights.read_bytes()).hexdigest()
    build = UltralyticsFamily.build

    def swap_then_build(self, data, filename, shown, **kw):  # the file is replaced between the read and the build
        weights.write_bytes(model_factory("detect", 1).read_bytes())
        return build(self, data, filename, shown, **kw)

    monkeypatch.setattr(UltralyticsFamily, "build", swap_then_build)
    loaded = load_model(weights)
    assert loaded.info.fingerprint == original != hashlib.sha256(weights.read_bytes()).hexdigest()
    monkeypatch.setattr(UltralyticsFamily, "build", build)
    same, other = load_model(model_factory("detect", 0)), load_model(weights)

    def params(m):
        return [p for p in m.model.model.state_dict().values() if p.is_floating_point()]

    assert all(torch.equal(a, b) for a, b in zip(params(loaded), params(same)))
    assert not all(torch.equal(a, b) for a, b in zip(params(loaded), params(other)))


def test_a_known_model_is_described_without_being_built(tiny_model, monkeypatch):
    cards: dict = {}
    first = describe_model(tiny_model, cards=cards)
    assert first.model is not None and list(cards) == [first.info.fingerprint]
    monkeypatch.setattr(UltralyticsFamily, "build", lambda *a, **k: pytest.fail("the model was built"))
    again = describe_model(tiny_model, cards=cards)
    assert again.model is None and again.info == first.info and again.train_imgsz == first.train_imgsz
    with pytest.raises(mt.ModelLoadError, match="not classes"):
        describe_model(tiny_model, class_map={"zebra": "live"}, cards=cards)


def test_a_resume_with_nothing_to_infer_does_not_load_the_model(images, tiny_model, monkeypatch):
    first = mt.run(images, model=tiny_model, **KW)
    built = []
    build = UltralyticsFamily.build

    def counting(self, *a, **k):
        built.append(1)
        return build(self, *a, **k)

    monkeypatch.setattr(UltralyticsFamily, "build", counting)
    again = mt.run(images, model=tiny_model, **KW)
    assert built == [] and again.meta["inferred_this_call"] == 0
    assert again.meta["counts"] == first.meta["counts"] and again.status == "completed"
    write_images(images, 1, seed=42, start=50)
    from musseltools.executors.task import PREDICTORS

    PREDICTORS.clear()  # as in a new process: no model kept from the first run
    more = mt.run(images, model=tiny_model, **KW)  # work to do: now the model is built, once
    assert built == [1] and more.meta["inferred_this_call"] == 1
    write_images(images, 1, seed=43, start=60)
    last = mt.run(images, model=tiny_model, **KW)  # the same process keeps its model for the next run
    assert built == [1] and last.meta["inferred_this_call"] == 1
