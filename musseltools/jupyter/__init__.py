"""JupyterLab front ends: the threshold tuner and run monitor, the correction editor, the quadrat viewer, the
calibration panel.

>>> from musseltools.jupyter import RunMonitor, ThresholdTuner                  # doctest: +SKIP
"""

from __future__ import annotations

from .calibration import CalibrationPanel
from .editor import CorrectionEditor
from .monitor import RunMonitor
from .quadrats import QuadratNavigator
from .widgets import ThresholdTuner

__all__ = ["ThresholdTuner", "RunMonitor", "CorrectionEditor", "QuadratNavigator", "CalibrationPanel"]
