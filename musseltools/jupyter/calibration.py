"""A calibration in the notebook: the settings table, the chosen settings, and a button that writes the card.

:class:`CalibrationPanel` shows what :func:`musseltools.calibrate` found (its table of count errors per
setting, the chosen one marked ``*``, why it was chosen and the warnings) and writes the card beside the
weights on **Write the card**. An existing card is kept unless **replace the existing card** is ticked;
then the old file is kept as a backup (:meth:`musseltools.evaluation.calibrate.Calibration.write_card`).

>>> cal = mt.calibrate(run, "labels/")                     # doctest: +SKIP
>>> CalibrationPanel(cal)                                  # doctest: +SKIP
"""

from __future__ import annotations

import html
import logging
import os
import time

import ipywidgets as widgets

from ..errors import MusselToolsError
from ..evaluation.calibrate import Calibration
from ..models.card import CardExistsError, card_names

__all__ = ["CalibrationPanel"]

log = logging.getLogger(__name__)


class CalibrationPanel(widgets.VBox):
    """The outcome of a calibration, and a button to write it to the weights' card.

    Parameters
    ----------
    calibration : Calibration
        What :func:`musseltools.calibrate` returned.

    Attributes
    ----------
    table_html, chosen_html : ipywidgets.HTML
        The settings table (the chosen row marked ``*``, the run as it is ``(run)``), and the chosen
        settings with the explanation and warnings.
    force : ipywidgets.Checkbox
        Replace an existing card (its old file is kept as ``<card>.bak-<timestamp>``).
    button : ipywidgets.Button
        Writes the card (:meth:`write`); ``button.click()`` does what a click in the browser does.
    status_html : ipywidgets.HTML
        What the last click did: the card written, or why nothing was.
    """

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = cal = calibration
        head = widgets.HTML(f"<b>Calibration</b> of run {html.escape(cal.run_id)} on {cal.n_images} labelled images "
                            f"({html.escape(cal.truth_source)}): {int(cal.table['fitted'].sum())} settings searched, "
                            f"{cal.inferred} images inferred")
        self.table_html = widgets.HTML(f"<pre style='line-height:1.3'>{html.escape(cal.table_text())}</pre>")
        self.table_html.add_class("mt-calibration-table")
        self.chosen_html = widgets.HTML(self._chosen_text())
        self.chosen_html.add_class("mt-calibration-chosen")
        self.force = widgets.Checkbox(value=False, description="replace the existing card (a backup is kept)",
                                      indent=False)
        self.button = widgets.Button(description="Write the card", icon="save", button_style="primary",
                                     tooltip=f"write these settings to {self.card_path}: runs of these weights then "
                                             "use them for every setting they are not given")
        self.button.on_click(lambda _b: self.write())
        self.status_html = widgets.HTML()
        self.status_html.add_class("mt-status")
        super().__init__([head, self.table_html, self.chosen_html,
                          widgets.HBox([self.button, self.force]), self.status_html])
        self.add_class("mt-calibration-panel")

    def __repr__(self) -> str:
        return f"CalibrationPanel({self.calibration!r})"

    @property
    def card_path(self) -> str:
        """The card file the button writes: beside the weights, ``<weights stem>.yaml``."""
        return str(card_names(self.calibration.weights)[0])

    def _chosen_text(self) -> str:
        cal = self.calibration
        rec = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(_value(v))}</li>"
                      for k, v in cal.recommended().items())
        warn = "".join(f"<li style='color:#b00'>warning: {html.escape(w)}</li>" for w in cal.warnings)
        return (f"<b>Chosen settings</b> (what the card will recommend):<ul>{rec}</ul>"
                f"<p>{html.escape(cal.explain())}</p>" + (f"<ul>{warn}</ul>" if warn else ""))

    def write(self) -> str | None:
        """Write the card (replacing an existing one only when :attr:`force` is ticked); its path, or None
        when nothing was written (the status says why)."""
        try:
            path = self.calibration.write_card(force=self.force.value)
        except CardExistsError as exc:
            self.status_html.value = (f"<span style='color:#b00'>not written: {html.escape(str(exc))}; tick "
                                      "<i>replace the existing card</i> and click again to replace it</span>")
            return None
        except (MusselToolsError, OSError) as exc:
            self.status_html.value = f"<span style='color:#b00'>not written: {html.escape(str(exc))}</span>"
            log.warning("card not written: %s", exc)
            return None
        self.status_html.value = (f"card written to {html.escape(path)} at {time.strftime('%H:%M:%S')}: runs of "
                                  f"{html.escape(os.path.basename(self.calibration.weights))} now use it for every "
                                  "setting they are not given")
        return path


def _value(v: object) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {x:.2f}" if isinstance(x, float) else f"{k} {x}" for k, x in v.items())
    return str(v)
