"""Moved to :mod:`napari_pancakes.training.simulate` (the simulated user is not public API);
this alias keeps existing scripts working."""
from ..training.simulate import clicks_to_reach, dice, error_regions, next_click, simulate_session  # noqa: F401
