"""Refinement of one chosen label (Qt-free): the click network, the predictors, the session, prompts."""
from .model import Refiner, RefinerConfig, RefinerNet, load_refiner, save_refiner
from .prompts import prompts_from_mask
from .session import METHODS, RefineSession

__all__ = ["Refiner", "RefinerConfig", "RefinerNet", "load_refiner", "save_refiner", "RefineSession", "METHODS",
           "prompts_from_mask"]
