"""Training Pancakes: synthetic and real image sets, augmentation, the set loss, the loop.

Nothing here runs or reads data at import; see ``python -m napari_pancakes.training --help``.
"""
