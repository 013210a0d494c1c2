"""Loading and saving model weights as safetensors (no pickles), with the config as metadata."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .model import Pancakes, PancakesConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "pancakes_default.safetensors"
DEFAULT_REFINER_WEIGHTS = WEIGHTS_DIR / "refiner_default.safetensors"
REFINER_FORMAT = "napari-pancakes-refiner/1"  # metadata "format" of click-model files (save_weights(fmt=...))


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


def save_weights(model: torch.nn.Module, path: str | Path, extra: dict | None = None,
                 fmt: str = "napari-pancakes/1") -> Path:
    """Write ``model``'s state and config (and ``extra`` metadata) to a safetensors file.

    ``fmt``: the metadata "format" (the click refiner's files use "napari-pancakes-refiner/1")."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": json.dumps(model.config.to_dict()), "format": fmt}
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


def load_refiner_net(weights: str | Path | None = None):
    """The click network (:class:`~napari_pancakes.refine.network.RefinerNet`, CPU) and its
    metadata, from the bundled refiner file unless ``weights`` is given;
    :func:`napari_pancakes.refine.load_refiner` wraps it in the image-space predictor."""
    from .refine.network import RefinerConfig, RefinerNet  # not at import time: refine/ imports this module

    path = Path(weights) if weights is not None else DEFAULT_REFINER_WEIGHTS
    tensors, meta = read_weights(path)
    if meta.get("format") != REFINER_FORMAT or "config" not in meta:
        raise ValueError(f"weights file {path} is not a napari-pancakes refiner file")
    cfg = json.loads(meta["config"])
    cfg.setdefault("in_channels", 4)  # files written before the box channel existed
    net = RefinerNet(RefinerConfig(**cfg))
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"weights file {path} does not match the refiner architecture: {exc}") from exc
    return net, meta


def average_refiner_files(paths, out: str | Path) -> Path:
    """Write the element-wise mean of several refiner files' weights to ``out`` (a "model soup").

    Why: runs fine-tuned from one parent file lie in one basin, and the mean of their weights can
    generalise better than any one of them at no training cost. The files must share the
    architecture and the datasets they held out (``leave_out`` metadata), so that the
    benchmark's refusal of weights that saw its datasets still holds for the mean."""
    paths, out = [Path(p) for p in paths], Path(out)
    if len(paths) < 2:
        raise ValueError("averaging needs at least two refiner files")
    if out.exists():
        raise FileExistsError(f"{out} exists; choose another output (it is never overwritten)")
    nets, metas = zip(*(load_refiner_net(p) for p in paths))
    held = {m.get("leave_out", "") for m in metas}
    if len(held) > 1:
        raise ValueError(f"the files held out different datasets ({sorted(held)}); average only files of one stage")
    if len({json.dumps(n.config.to_dict(), sort_keys=True) for n in nets}) > 1:
        raise ValueError("the refiner files have different architectures")
    states = [n.state_dict() for n in nets]
    mean = {k: (torch.stack([st[k].float() for st in states]).mean(0).to(v.dtype) if v.is_floating_point() else v)
            for k, v in states[0].items()}
    nets[0].load_state_dict(mean)
    extra = {"averaged_from": [str(p) for p in paths],
             "recipes": [json.loads(m["recipe"]) if "recipe" in m else None for m in metas]}
    if "leave_out" in metas[0]:
        extra["leave_out"] = metas[0]["leave_out"]
    return save_weights(nets[0], out, extra=extra, fmt=REFINER_FORMAT)


CHECKPOINT_FIELDS = ("config", "param_groups", "optim_scalars", "format")  # the writer's own JSON fields


def checkpoint_run_state(meta: dict) -> dict:
    """The caller's ``state`` from a checkpoint's JSON (:func:`load_checkpoint`'s ``meta``), without the
    writer's own fields, ready to be saved again."""
    return {k: v for k, v in meta.items() if k not in CHECKPOINT_FIELDS}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, rng_tensors: dict[str, torch.Tensor] | None = None,
                    json_path: str | Path | None = None) -> Path:
    """A resumable training checkpoint as ``path`` (safetensors) plus ``path.json`` (no pickle).

    Both training loops (Pancakes and the click refiner) write through here; the refiner keeps its
    campaign folders' names (``checkpoint.safetensors`` + ``checkpoint.json``) via ``json_path``.

    The safetensors file holds the model (``model.*``), every optimiser state tensor
    (``optim.<param index>.<name>``) and RNG byte states (``rng.*``); the JSON holds the model
    config, the optimiser's param groups and scalar state, and ``state`` (step, best score,
    elapsed time, numpy/python RNG states, run config). Both are written to temporary names
    first, so a crash never leaves a half-written checkpoint; the JSON goes last and marks
    the pair complete.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for idx, st in opt["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = float(value)
    for name, value in (rng_tensors or {}).items():
        tensors[f"rng.{name}"] = value.detach().cpu().contiguous()
    meta = {"config": model.config.to_dict(), "param_groups": opt["param_groups"], "optim_scalars": scalars,
            "format": "napari-pancakes-checkpoint/1", **state}  # the first four: CHECKPOINT_FIELDS
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    json_path = Path(json_path) if json_path is not None else path.with_name(path.name + ".json")
    tmp_json = json_path.with_name(json_path.name + ".tmp")
    tmp_json.write_text(json.dumps(meta))
    tmp_json.replace(json_path)
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", json_path: str | Path | None = None):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``(model_state, optimizer_state, rng_tensors, meta)``: the first two are ready
    for ``load_state_dict``; ``meta`` is the JSON (config, step, RNG states, ...).
    Also reads the click refiner's checkpoints from before it wrote through here
    (tensors ``net.*`` / ``opt.<index>.<name>``, the torch RNG as a JSON list), so that committed
    campaigns resume.
    """
    path = Path(path)
    json_path = Path(json_path) if json_path is not None else path.with_name(path.name + ".json")
    if not json_path.is_file():
        raise FileNotFoundError(f"checkpoint {path} is incomplete: {json_path.name} is missing")
    try:
        meta = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint metadata {json_path} is not valid JSON ({exc})") from exc
    tensors, _ = read_weights(path)
    if "format" not in meta and "torch_rng" in meta:  # the refiner's earlier layout
        renamed = {"net.": "model.", "opt.": "optim."}
        tensors = {renamed.get(k[:4], k[:4]) + k[4:]: v for k, v in tensors.items()}
        tensors["rng.torch"] = torch.tensor(meta.pop("torch_rng"), dtype=torch.uint8)
    model_state = {k[6:]: v.to(device) for k, v in tensors.items() if k.startswith("model.")}
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(device)
    for idx, values in meta.get("optim_scalars", {}).items():
        for name, value in values.items():
            state.setdefault(int(idx), {})[name] = torch.tensor(value)
    return model_state, {"state": state, "param_groups": meta["param_groups"]}, rng, meta
