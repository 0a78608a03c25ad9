"""Weights from elsewhere: a run starts from a state dict (config key ``init``).

A model trained outside mcel (a ``state_dict()`` saved with ``torch.save`` or
safetensors), or another mcel run, is loaded into the config's model before training:
mcel then fine-tunes it (with MCEL, clipping, error injection), or, with ``epochs: 0``,
only quantizes it and measures it (post-training quantization; layers with quantized
inputs get their activation ranges from training images). Pickled files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, no code runs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from mcel.errors import MCELError
from mcel.io import load_tensors

# where training scripts nest the weights inside a saved dict, most common first
_NESTS = ("state_dict", "model_state_dict", "model", "net", "module")
# what wrappers put before every key: DDP, torch.compile, Lightning's self.model
_PREFIXES = ("module.", "_orig_mod.", "model.")
# images whose activation ranges quantized inputs take when nothing is trained
CALIBRATION_IMAGES = 2048


def weights_file(init: str | Path) -> Path:
    """The file ``init`` names: itself, or a run folder's ``model.safetensors``."""
    path = Path(init)
    if path.is_dir():
        path = path / "model.safetensors"
        if not path.exists():
            raise MCELError(f"init folder {init} holds no model.safetensors; give a finished "
                            "run folder or a weights file")
    elif not path.exists():
        raise MCELError(f"init weights {init} do not exist; give a .safetensors or .pt file "
                        "of a state_dict(), or a run folder")
    return path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(init: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file or run folder, unwrapped from the dicts training
    scripts save them in."""
    path = weights_file(init)
    if path.suffix == ".safetensors":
        state = load_tensors(path)
    else:
        state = _torch_load(path)
    for key in _NESTS:  # {"epoch": 3, "state_dict": {...}}: the weights are inside
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise MCELError(f"{path} holds no state dict (a dict of tensors); save "
                        "model.state_dict(), not the model")
    odd = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if odd:
        raise MCELError(f"{path}: entry '{odd[0]}' is not a tensor; save model.state_dict() "
                        "(or a dict holding it under 'state_dict')")
    return state


def _unprefixed(state: dict[str, Tensor]):
    """``state`` as saved, then without each wrapper prefix that every key carries (tried
    in turn: a model whose one child is named ``model`` keeps its prefix)."""
    yield state
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            yield state


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or truncated file: torch raises many kinds
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:  # a pickled object, not a state dict: loading it would run its code
            raise MCELError(f"{path} holds a Python object ({found.group(1)}), not only "
                            "tensors, and would run code to load; save model.state_dict() "
                            "instead") from None
        inner = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        why = inner.group(1) if inner else (lines[0] if lines else type(e).__name__)
        raise MCELError(f"{path} is not a readable PyTorch checkpoint ({why})") from None


def load_weights(float_model: nn.Module, quantize, state: dict[str, Tensor],
                 source: str) -> nn.Module:
    """``float_model`` with ``state`` loaded, quantized by ``quantize``: the weights of the
    float model (a model trained elsewhere) or of the quantized one (an mcel run), with or
    without the prefix a wrapper (DDP, torch.compile, Lightning) put before every key."""
    want = set(float_model.state_dict())
    for candidate in _unprefixed(state):
        if set(candidate) == want:
            _load(float_model, candidate, source)
            return quantize(float_model)
    model = quantize(float_model)
    for candidate in _unprefixed(state):
        if set(candidate) == set(model.state_dict()):
            _load(model, candidate, source)
            return model
    state = list(_unprefixed(state))[-1]  # the keys named below: without wrapper prefixes
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    parts = [f"{len(missing)} missing ({_few(missing)})" if missing else "",
             f"{len(extra)} unexpected ({_few(extra)})" if extra else ""]
    raise MCELError(f"init weights {source} do not fit this model: keys "
                    f"{'; '.join(p for p in parts if p)}; is it the same architecture?")


def pretrained_model(config) -> nn.Module:
    """The model of a `TrainConfig` with its ``init`` weights loaded (quantized per config)."""
    from mcel.data import dataset_info
    from mcel.models import create_model
    from mcel.quant import quantize_model

    info = dataset_info(config.dataset, config.data_dir)
    float_model = create_model(config.model, num_classes=info.num_classes,
                               in_shape=info.in_shape, **config.model_kwargs)
    spec = config.quant_spec()
    return load_weights(float_model, lambda m: quantize_model(m, spec),
                        read_state_dict(config.init), config.init)


def _load(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # same keys, other shapes
        lines = [s.strip() for s in str(e).splitlines() if "size mismatch" in s]
        first = lines[0] if lines else str(e).splitlines()[0]
        raise MCELError(f"init weights {source} do not fit this model: {first}") from None


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


@torch.no_grad()
def calibrate_activations(model: nn.Module, x: Tensor, batch_size: int) -> int:
    """Set the input ranges of quantized-input layers from the first training images, as
    training would (the same running max), the rest of the model in eval mode (BatchNorm
    keeps its statistics). Returns the images used; 0 when no layer quantizes inputs."""
    from mcel.quant import quant_layers

    layers = [m for _, m in quant_layers(model) if m.act_bits is not None]
    if not layers:
        return 0
    model.eval()
    x = x[:CALIBRATION_IMAGES]
    for m in layers:
        m.train()  # only their running max of |input| moves
    try:
        for batch in x.split(batch_size):
            model(batch)
    finally:
        model.eval()
    return len(x)


__all__ = ["pretrained_model", "read_state_dict", "weights_file", "file_sha256", "load_weights",
           "calibrate_activations", "CALIBRATION_IMAGES"]
