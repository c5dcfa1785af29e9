"""Bad inputs: a corpus of awkward files generated here, run in one go.

Every file gets either a correct result (the detections Ultralytics' own ``YOLO.predict`` gives for
that file, in the orientation the user sees) or a per-image error with a clear reason; the run
completes, and the good images' results are the same as in a run without the bad files.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import IMGSZ, make_image
from PIL import Image

import musseltools as mt
from musseltools.executors.task import RunTask
from musseltools.images.decode import decode_image

#: starts processes, kernels or models: left out of `make test-fast`
pytestmark = pytest.mark.slow

THRESHOLD = 0.3
KW = {"imgsz": IMGSZ, "quiet": True, "store": "store", "threshold": THRESHOLD}


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    monkeypatch.setenv("MUSSELTOOLS_TORCH_THREADS", "1")


def _jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 1 kB PNG whose header claims ``width x height`` RGB pixels (30 GB decoded at 100000 x 100000)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + _png_chunk(b"IEND", b""))


# name -> ("ok", None) or ("error", regex of the reason)
EXPECTED: dict[str, tuple[str, str | None]] = {
    "zero-bytes.jpg": ("error", r"empty file \(0 bytes\)"),
    "truncated.jpg": ("error", r"cannot decode .*truncated"),
    "truncated.png": ("error", r"cannot decode .*(truncated|corrupt)"),
    "random-bytes.jpg": ("error", r"cannot decode .*not a readable image"),
    "huge.png": ("error", r"image too large: 10000 megapixels.*decompression-bomb guard.*MUSSELTOOLS_MAX_PIXELS"),
    "broken-link.jpg": ("error", r"broken symlink: .*broken-link\.jpg"),
    "loop.jpg": ("error", r"cannot read .*loop\.jpg: Too many levels of symbolic links"),
    "pipe.jpg": ("error", r"pipe\.jpg is not a regular file \(a FIFO"),
    "deleted.jpg": ("error", r"file not found: .*deleted\.jpg \(removed after it was scanned"),
    "changed.jpg": ("error", r"file changed after it was scanned: .*changed\.jpg .*run again to process it"),
    "alpha.png": ("ok", None),
    "deep-16bit.png": ("ok", None),
    "gray.jpg": ("ok", None),
    "cmyk.jpg": ("ok", None),
    "pages.tif": ("ok", None),
    "one-pixel.png": ("ok", None),
    "rotated-exif.jpg": ("ok", None),
    "png-named.jpg": ("ok", None),
    "with space ünïcødé 貝.jpg": ("ok", None),
    "bad-\\xff\\xfe-bytes.jpg": ("ok", None),  # a name that is not UTF-8 (bytes ff fe), as shown
    "folder.jpg/inside.jpg": ("ok", None),  # a folder named like an image is a folder: its images count
    "good-1.jpg": ("ok", None),
    "good-2.jpg": ("ok", None),
    "good-3.png": ("ok", None),
}
GOOD = ["good-1.jpg", "good-2.jpg", "good-3.png"]


def build_corpus(folder: Path) -> None:
    rng = np.random.default_rng(2026)
    folder.mkdir()

    def img(size=(128, 96)) -> np.ndarray:
        return make_image(rng, size)

    (folder / "zero-bytes.jpg").write_bytes(b"")
    whole = _jpeg(img())
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    ok, png = cv2.imencode(".png", img())
    (folder / "truncated.png").write_bytes(png.tobytes()[: len(png) // 2])
    (folder / "random-bytes.jpg").write_bytes(rng.bytes(6000))
    (folder / "huge.png").write_bytes(bomb_png())
    os.symlink(folder / "nowhere.jpg", folder / "broken-link.jpg")
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")
    os.mkfifo(folder / "pipe.jpg")  # reading it would block for ever: must be refused, not opened
    (folder / "deleted.jpg").write_bytes(_jpeg(img()))
    (folder / "changed.jpg").write_bytes(_jpeg(img()))
    bgra = cv2.cvtColor(img(), cv2.COLOR_BGR2BGRA)
    bgra[:, : bgra.shape[1] // 2, 3] = 40  # half transparent
    cv2.imwrite(str(folder / "alpha.png"), bgra)
    cv2.imwrite(str(folder / "deep-16bit.png"), img().astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "gray.jpg"), cv2.cvtColor(img(), cv2.COLOR_BGR2GRAY))
    Image.fromarray(img()[:, :, ::-1]).convert("CMYK").save(folder / "cmyk.jpg", quality=92)
    first, second = Image.fromarray(img()[:, :, ::-1]), Image.fromarray(img((96, 128))[:, :, ::-1])
    first.save(folder / "pages.tif", save_all=True, append_images=[second])
    cv2.imwrite(str(folder / "one-pixel.png"), np.full((1, 1, 3), 200, np.uint8))
    upright = Image.fromarray(img((96, 128))[:, :, ::-1])  # stored 96 wide x 128 high ...
    exif = upright.getexif()
    exif[0x0112] = 6  # ... shown rotated 90 degrees clockwise: 128 wide x 96 high
    upright.save(folder / "rotated-exif.jpg", exif=exif, quality=92)
    (folder / "png-named.jpg").write_bytes(cv2.imencode(".png", img())[1].tobytes())
    (folder / "with space ünïcødé 貝.jpg").write_bytes(_jpeg(img()))
    with open(os.path.join(os.fsencode(folder), b"bad-\xff\xfe-bytes.jpg"), "wb") as f:
        f.write(_jpeg(img()))
    (folder / "folder.jpg").mkdir()
    (folder / "folder.jpg" / "inside.jpg").write_bytes(_jpeg(img()))
    (folder / "good-1.jpg").write_bytes(_jpeg(img()))
    (folder / "good-2.jpg").write_bytes(_jpeg(img((160, 90))))
    cv2.imwrite(str(folder / "good-3.png"), img())


def _yolo_detections(yolo, path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Ultralytics' own prediction for a file: rows of x1 y1 x2 y2 class, and (width, height)."""
    res = yolo.predict(str(path), conf=THRESHOLD, imgsz=IMGSZ, verbose=False)[0]
    h, w = res.orig_shape
    return np.c_[res.boxes.xyxy.numpy(), res.boxes.cls.numpy()], (w, h)


def _assert_same_boxes(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert len(ours) == len(theirs), what
    a = ours[np.lexsort(np.round(ours.T[::-1], 0))]
    b = theirs[np.lexsort(np.round(theirs.T[::-1], 0))]
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1.0, err_msg=what)
    np.testing.assert_array_equal(a[:, 4], b[:, 4], err_msg=what)


def test_every_bad_input_gets_a_result_or_a_clear_error(tmp_path, tiny_model, monkeypatch):
    from ultralytics import YOLO

    folder = tmp_path / "corpus"
    build_corpus(folder)
    changed_bytes = _jpeg(make_image(np.random.default_rng(7)))

    # between the scan and the decode: one file disappears, one is rewritten with other pixels
    orig_load = RunTask.load

    def load_after_meddling(self, ref):
        if ref.path.endswith("deleted.jpg"):
            (folder / "deleted.jpg").unlink()
        if ref.path.endswith("changed.jpg"):
            (folder / "changed.jpg").write_bytes(changed_bytes)
        return orig_load(self, ref)

    monkeypatch.setattr(RunTask, "load", load_after_meddling)
    # the decompression bomb is refused from its header: its pixels never reach a decoder (the memory a
    # run over it takes is a figure, printed by benchmarks/widgets.py in a fresh process)
    bomb, decoded = bomb_png(), []
    orig_imdecode = cv2.imdecode

    def imdecode(buf, flags):
        decoded.append(bytes(buf) == bomb)
        return orig_imdecode(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
    run = mt.run(folder, model=tiny_model, **KW)
    monkeypatch.setattr(RunTask, "load", orig_load)
    monkeypatch.setattr(cv2, "imdecode", orig_imdecode)
    assert len(decoded) >= 5, "the spy saw no decoding: it would not see the bomb's either"
    assert not any(decoded), "the decompression bomb was decoded"

    assert run.status == "completed"
    table = run.per_image(THRESHOLD)
    table.index = [os.path.relpath(p, folder) for p in table["path"]]
    assert sorted(table.index) == sorted(EXPECTED), "every file (and only files) has a row"
    errors = {k: v for k, v in EXPECTED.items() if v[0] == "error"}
    assert run.meta["failed_count"] == len(errors)
    assert run.meta["inferred_this_call"] == len(EXPECTED) - len(errors)
    for name, (_, pattern) in errors.items():
        row = table.loc[name]
        assert isinstance(row["error"], str) and re.search(pattern, row["error"]), (name, row["error"])
        assert row["live"] == 0 and row["dead"] == 0 and row["n_detections"] == 0

    yolo = YOLO(str(tiny_model))
    dets = run.detections(THRESHOLD)
    for name, (kind, _) in EXPECTED.items():
        if kind != "ok":
            continue
        row = table.loc[name]
        assert pd.isna(row["error"]), (name, row["error"])
        source = folder / name
        if "\\xff" in name:  # Ultralytics wants printable names: give it the same bytes under another
            source = tmp_path / "plain-copy.jpg"
            with open(os.path.join(os.fsencode(folder), b"bad-\xff\xfe-bytes.jpg"), "rb") as f:
                source.write_bytes(f.read())
        theirs, (w, h) = _yolo_detections(yolo, source)
        assert (row["width"], row["height"]) == (w, h), name
        mine = dets[dets["image_id"] == row["image_id"]][["x1", "y1", "x2", "y2", "class_id"]].to_numpy(float)
        _assert_same_boxes(mine, theirs, name)

    # the EXIF-rotated photo is counted as the user sees it: like the same pixels stored upright
    assert (table.loc["rotated-exif.jpg", "width"], table.loc["rotated-exif.jpg", "height"]) == (128, 96)
    upright = tmp_path / "upright.png"
    from PIL import ImageOps

    ImageOps.exif_transpose(Image.open(folder / "rotated-exif.jpg")).save(upright)
    theirs, _ = _yolo_detections(yolo, upright)
    row = table.loc["rotated-exif.jpg"]
    mine = dets[dets["image_id"] == row["image_id"]][["x1", "y1", "x2", "y2", "class_id"]].to_numpy(float)
    _assert_same_boxes(mine, theirs, "rotated-exif.jpg vs upright copy")

    # nothing else is lost: the good images have exactly the results of a run without the bad files
    clean = mt.run([folder / g for g in GOOD], model=tiny_model, **{**KW, "store": "clean-store"})
    ours = table.loc[GOOD].reset_index(drop=True).drop(columns=["processed_at"])
    ref = clean.per_image(THRESHOLD).drop(columns=["processed_at"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, ref)

    # the next run retries the errors: the changed file is now a new image with a result
    again = mt.run(folder, model=tiny_model, **KW)
    t2 = again.per_image(THRESHOLD)
    changed = t2[t2["path"].str.endswith("changed.jpg")].iloc[0]
    assert pd.isna(changed["error"]) and changed["image_id"] != table.loc["changed.jpg", "image_id"]
    assert not t2["path"].str.endswith("deleted.jpg").any()
    assert again.meta["inferred_this_call"] == 1
    assert again.meta["failed_count"] == len(errors) - 2

    # every export lands inside its folder, whatever the names
    out = tmp_path / "export"
    files = again.export_polygons(out)
    assert len(files) == len(t2)
    assert all(Path(f).resolve().is_relative_to(out.resolve()) for f in files)


def test_folder_named_like_an_image_in_a_list_is_a_clear_error(tmp_path, tiny_model):
    (tmp_path / "x.jpg").mkdir()
    run = mt.run([tmp_path / "x.jpg"], model=tiny_model, **KW)
    assert run.status == "completed"
    err = run.per_image()["error"].iloc[0]
    assert re.search(r"x\.jpg is a directory, not an image file", err), err


def test_decompression_bomb_guard_is_clear_and_configurable(monkeypatch):
    with pytest.raises(ValueError, match=r"10000 megapixels, above the 250 megapixel limit"):
        decode_image(bomb_png())
    ok = _jpeg(make_image(np.random.default_rng(1), (128, 96)))
    assert decode_image(ok).shape == (96, 128, 3)
    monkeypatch.setenv("MUSSELTOOLS_MAX_PIXELS", "5000")
    with pytest.raises(ValueError, match=r"128x96 = 0 megapixels, above the 0 megapixel limit.*MUSSELTOOLS_MAX_PIXELS"):
        decode_image(ok)
    # a limit raised above Pillow's own (179 megapixels) is honoured: the header alone no longer refuses
    monkeypatch.setenv("MUSSELTOOLS_MAX_PIXELS", str(300_000_000))
    with pytest.raises(ValueError, match=r"cannot|not a readable|truncated|corrupt"):
        decode_image(bomb_png(15_000, 15_000))  # 225 MP allowed: fails only because its pixels are missing


def test_file_that_cannot_be_read_gets_an_error_and_the_run_completes(tmp_path, tiny_model):
    """Unreadable permissions. Tests run as root, and root reads a chmod-000 file regardless, so the run
    happens in a child process without the capabilities that let root ignore file permissions
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH; dropped with util-linux ``setpriv``): the same situation as
    an ordinary user meeting another user's private file."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("util-linux setpriv is not installed; cannot drop root's file-permission override")
    folder = tmp_path / "survey"
    folder.mkdir()
    rng = np.random.default_rng(3)
    (folder / "readable.jpg").write_bytes(_jpeg(make_image(rng)))
    secret = folder / "private.jpg"
    secret.write_bytes(_jpeg(make_image(rng)))
    secret.chmod(0)
    code = (
        "import json, musseltools as mt\n"
        f"r = mt.run({str(folder)!r}, model={str(tiny_model)!r}, imgsz={IMGSZ}, store='store', quiet=True)\n"
        "t = r.per_image()\n"
        "errors = {p: e if isinstance(e, str) else None for p, e in zip(t['path'], t['error'])}\n"
        "print(json.dumps({'status': r.status, 'errors': errors}))\n"
    )
    caps = "-dac_override,-dac_read_search"
    env = dict(os.environ, MUSSELTOOLS_TORCH_THREADS="1", MUSSELTOOLS_BATCH_SIZE="1", YOLO_OFFLINE="1")
    proc = subprocess.run([setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", sys.executable, "-c", code],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["status"] == "completed"
    assert out["errors"][str(folder / "readable.jpg")] is None
    assert re.search(r"cannot read .*private\.jpg: Permission denied", out["errors"][str(secret)])


def test_corpus_names_do_not_break_the_command_line(tmp_path, tiny_model, capsys):
    """The CLI prints non-UTF-8 and unicode names without crashing (JSON, status, counts)."""
    from musseltools.cli import main

    folder = tmp_path / "names"
    folder.mkdir()
    rng = np.random.default_rng(4)
    (folder / "ünï cødé.jpg").write_bytes(_jpeg(make_image(rng)))
    with open(os.path.join(os.fsencode(folder), b"\xff.jpg"), "wb") as f:
        f.write(_jpeg(make_image(rng)))
    assert main(["run", str(folder), "--model", str(tiny_model), "--imgsz", str(IMGSZ), "--store", "s",
                 "--json"]) == 0
    import json

    run_id = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["counts", run_id, "--store", "s", "--json"]) == 0
    paths = sorted(i["path"] for i in json.loads(capsys.readouterr().out)["images"])
    assert paths == sorted([str(folder / "ünï cødé.jpg"), str(folder) + "/\\xff.jpg"])
