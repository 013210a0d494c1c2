"""Refinement of one chosen label (Qt-free): the click network, the predictors, the session, prompts."""
from .network import RefinerConfig, RefinerNet
from .predictor import REFINER_FORMAT, Refiner, load_refiner
from .prompts import prompts_from_mask
from .session import METHODS, RefineSession

__all__ = ["Refiner", "RefinerConfig", "RefinerNet", "load_refiner", "REFINER_FORMAT", "RefineSession", "METHODS",
           "prompts_from_mask"]
