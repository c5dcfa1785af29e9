"""Tiny torchvision Faster R-CNN checkpoints for the tests: randomly initialised, with varied scores.

No download: ``weights=None, weights_backbone=None``. The backbone's batch-norm statistics are calibrated
on generated images (so that features differ between regions), and the box predictor is drawn so that
scores spread from the floor to near 1 (so that thresholds matter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMALL = "fasterrcnn_mobilenet_v3_large_320_fpn"
#: The checkpoint forms the torchvision family loads (``pickle`` only with trust_pickle).
FORMS = ("bare", "model_state_dict", "state_dict", "pickle")


def calibrated_net(architecture: str = SMALL, num_classes: int = 3, seed: int = 0):
    """A randomly initialised torchvision Faster R-CNN (eval mode) whose scores are spread over (0, 1)."""
    import torch
    from conftest import make_image
    from torchvision.models import detection

    torch.manual_seed(seed)
    net = getattr(detection, architecture)(weights=None, weights_backbone=None, num_classes=num_classes)
    for mod in net.backbone.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()
            mod.momentum = None  # a cumulative average over the calibration batch
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(make_image(rng, (128, 96))[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255
              for _ in range(4)]
    net.backbone.train()
    with torch.no_grad():
        batch, _ = net.transform(images)
        net.backbone(batch.tensors)
        predictor = net.roi_heads.box_predictor
        torch.nn.init.normal_(predictor.cls_score.weight, 0, 0.5)
        bias = torch.zeros(num_classes)
        bias[0] = 1.0  # background a little favoured: many low scores, some high
        predictor.cls_score.bias.copy_(bias)
    return net.eval()


def save_checkpoint(net, path: Path, form: str = "bare", **extra) -> Path:
    """Save ``net`` as one of :data:`FORMS` (a training checkpoint carries an epoch and optimizer state too)."""
    import torch

    state = net.state_dict()
    if form == "bare":
        obj = state
    elif form in ("model_state_dict", "state_dict"):
        obj = {form: state, "epoch": 12, "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 0.01}]},
               **extra}
    elif form == "pickle":
        obj = net
    else:
        raise ValueError(form)
    torch.save(obj, path)
    return path


def write_sidecar(weights: Path, text: str, suffix: str = ".yaml") -> Path:
    """Write ``text`` as the sidecar of ``weights`` (``model.pt`` -> ``model.yaml``)."""
    side = weights.with_suffix(suffix)
    side.write_text(text)
    return side
