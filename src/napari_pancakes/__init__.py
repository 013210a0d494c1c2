"""napari-pancakes: many consistent segmentations of a set of biomedical images.

The core (model, inference, metrics, baselines, io, training) imports no Qt; the napari
widgets live in :mod:`napari_pancakes.napari`.
"""
from .inference import iter_segment_set, segment_set
from .io_weights import load_model, save_weights
from .metrics import set_dice, set_iou, set_surface_distance
from .model import K_RANGE, M_RANGE

__version__ = "0.1.0"
__all__ = [
    "load_model", "save_weights", "segment_set", "iter_segment_set",
    "set_dice", "set_iou", "set_surface_distance", "M_RANGE", "K_RANGE",
]
