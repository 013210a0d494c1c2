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


def push_button(text: str, slot, tip: str | None = None):
    """A QPushButton that calls ``slot()`` when clicked (without Qt's ``checked`` argument,
    which would otherwise land in the slot's first optional parameter)."""
    from qtpy.QtWidgets import QPushButton

    button = QPushButton(text)
    button.clicked.connect(lambda *_: slot())
    if tip:
        button.setToolTip(tip)
    return button


def add_row(layout, *widgets, stretch: dict | None = None):
    """Add ``widgets`` side by side as one row of ``layout`` (a box or form layout); ``stretch``
    maps a widget's position to its stretch factor. Returns the row."""
    from qtpy.QtWidgets import QFormLayout, QHBoxLayout

    row = QHBoxLayout()
    for i, widget in enumerate(widgets):
        row.addWidget(widget, (stretch or {}).get(i, 0))
    if isinstance(layout, QFormLayout):
        layout.addRow(row)
    else:
        layout.addLayout(row)
    return row
