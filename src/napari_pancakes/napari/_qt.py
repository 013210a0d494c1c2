"""Small Qt helpers shared by the dock widgets (the explorer, the study dock; the refine dock may use them)."""
from __future__ import annotations


class Failure:
    """An exception returned (not raised) by a worker: superqt re-raises a returned Exception
    instance, and a raised one would end as napari's traceback dialog."""

    def __init__(self, exc: Exception):
        self.exc = exc


def refill_combo(combo, names: list[str], fallback: str | None = None) -> str:
    """Put ``names`` in a layer drop-down without emitting its signals, keeping the current
    choice when it is still there, else ``fallback`` (else Qt's first item). Returns the choice."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    if current in names:
        combo.setCurrentText(current)
    elif fallback is not None:
        combo.setCurrentText(fallback)
    combo.blockSignals(False)
    return combo.currentText()
