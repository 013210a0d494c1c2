"""Click refinement of one chosen label (Qt-free): model, session, prompts, simulated user."""
from .model import Refiner, RefinerConfig, RefinerNet, load_refiner, save_refiner
from .prompts import prompts_from_mask
from .session import RefineSession
from .simulate import clicks_to_reach, next_click, simulate_session

__all__ = [
    "Refiner", "RefinerConfig", "RefinerNet", "load_refiner", "save_refiner", "RefineSession",
    "prompts_from_mask", "next_click", "simulate_session", "clicks_to_reach",
]
