"""Pancakes network modules (pure PyTorch)."""
from .codes import pair_codes, sinusoidal_code
from .pancakes import K_RANGE, M_RANGE, Pancakes, PancakesConfig, count_parameters

__all__ = ["Pancakes", "PancakesConfig", "pair_codes", "sinusoidal_code", "count_parameters", "M_RANGE", "K_RANGE"]
