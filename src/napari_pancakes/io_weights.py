"""Loading and saving model weights as safetensors (no pickles), with the config as metadata."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .model import Pancakes, PancakesConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "pancakes_default.safetensors"


def best_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA, then Apple MPS, then CPU."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was requested but no CUDA GPU is available")
        if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was requested but Apple MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def save_weights(model: torch.nn.Module, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``model``'s state and config (and ``extra`` metadata) to a safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(model.config.to_dict()), "format": "napari-pancakes/1"}
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return path


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, with clear errors for missing/corrupt files."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ValueError(f"weights file {path} is not a valid safetensors file ({exc})") from exc
    return tensors, meta


def load_model(weights: str | Path | None = None, device: str | torch.device | None = None) -> Pancakes:
    """The Pancakes model in eval mode, with the bundled weights unless ``weights`` is given.

    Arguments:
        weights: path to a ``.safetensors`` file written by :func:`save_weights` or the
            training CLI; None uses the weights shipped in the package.
        device: "cpu", "cuda", "mps" or None for the best available.
    """
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    tensors, meta = read_weights(path)
    if "config" not in meta:
        raise ValueError(f"weights file {path} has no napari-pancakes config in its metadata")
    config = PancakesConfig(**json.loads(meta["config"]))
    model = Pancakes(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights file {path} does not match the Pancakes architecture: {exc}") from exc
    model.metadata = meta
    return model.to(best_device(device)).eval()
