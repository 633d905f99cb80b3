"""Reading and writing network weights: our own checkpoint format and the authors' released files.

Our format (torch.save of a dict, tensors and plain data only, so torch.load(weights_only=True) reads it):
    {"format": "lvd-checkpoint", "version": 1,
     "config": {"network": <registered name>, "module": <defining module>, "kwargs": {...}, "metadata": {...}},
     "state_dict": {...}}
The authors' files (`net_epoch_<E>_id_img_encoder.pth`) are a plain state_dict; which of the four released
networks they hold is read from their keys and shapes.

Every failure raises CheckpointError with one line naming the file, the problem and what was expected.
"""

import importlib
import json
import os
import pickle
from pathlib import Path

import torch
from torch import Tensor

from .devices import pick_device
from .nets.base import LVDNetwork, register_network, registered_names, registered_network
from .nets.paper import PAPER_NETWORKS, paper_layout_from_state_dict
from .resources import weights_dir
from .results import InputError

__all__ = ["CheckpointError", "register_network", "save_checkpoint", "load_checkpoint", "load_paper_checkpoint"]

FORMAT = "lvd-checkpoint"
VERSION = 1
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy format's pickle protocol byte
MESSAGE_DETAIL_CHARS = 160  # torch's own messages are long and multi-line: keep the start of their first line


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message is one line."""


def save_checkpoint(path: str | os.PathLike, network: LVDNetwork, metadata: dict | None = None) -> Path:
    """Writes `network` (a registered LVDNetwork) to `path` in our format; metadata must be JSON-able."""
    name = getattr(type(network), "registered_name", None)
    if registered_network(name) is not type(network):  # also catches unregistered subclasses of registered nets
        raise ValueError(f"{type(network).__qualname__} is not registered: decorate it with @register_network(name)")
    config = {"network": name, "module": type(network).__module__,
              "kwargs": network.config(), "metadata": metadata or {}}
    json.dumps(config)  # fails here, not at load time, when the config is not plain data
    state_dict = {key: value.detach().cpu() for key, value in network.state_dict().items()}
    payload = {"format": FORMAT, "version": VERSION, "config": config, "state_dict": state_dict}
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    os.replace(partial, path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "auto") -> LVDNetwork:
    """Rebuilds the network saved by `save_checkpoint`, on `device`, in eval mode; the saved metadata is
    in its `checkpoint_metadata` attribute."""
    device = resolve_device(device)
    payload = read_torch_file(path, device)
    config = checked_config(path, payload)
    network_class = network_class_for(path, config)
    # The declared network is built without memory first (a small file may declare a huge one) and checked
    # against the file's tensors; only then for real.
    check_state_dict_fits(path, build_network(path, network_class, config, torch.device("meta")), payload["state_dict"],
                          config["network"])
    network = build_network(path, network_class, config, device)
    network.load_state_dict(payload["state_dict"], strict=True)
    network.checkpoint_metadata = config.get("metadata", {})
    return network.eval()


def build_network(path: str | os.PathLike, network_class: type, config: dict, device: torch.device) -> LVDNetwork:
    try:
        with device:
            return network_class(**config["kwargs"])
    except Exception as error:  # a config this version of the class no longer accepts
        raise CheckpointError(f"{path}: cannot build {config['network']} from the saved config ({short(error)})") \
            from None


def load_paper_checkpoint(path: str | os.PathLike, kind: str | None = None,
                          device: str | torch.device = "auto") -> LVDNetwork:
    """Loads one of the authors' released files (a plain state_dict) into the matching paper network.

    kind: a PAPER_NETWORKS name ("LVD_images_SMPL", "LVD_images_wmask_SMPL", "LVD_voxels_SMPL",
    "LVD_voxels_MANO") to insist on; inferred from the keys and shapes when None.
    """
    if kind is not None and kind not in PAPER_NETWORKS:
        raise CheckpointError(f"{path}: unknown kind {kind!r}; expected one of {', '.join(PAPER_NETWORKS)}")
    device = resolve_device(device)
    state_dict = read_torch_file(path, device)
    require_state_dict(path, state_dict, "the authors' files are a plain state_dict")
    try:
        name, network_class, kwargs = paper_layout_from_state_dict(state_dict)
    except KeyError as error:
        raise CheckpointError(f"{path}: not a released LVD network: key {error} is missing") from None
    except (ValueError, IndexError) as error:
        raise CheckpointError(f"{path}: not a released LVD network: {short(error)}") from None
    if kind is not None and kind != name:
        raise CheckpointError(f"{path}: holds a {name} network, but {kind} was asked for")
    with torch.device("meta"):  # no random init: the file's tensors become the parameters (assign=True)
        network = network_class(**kwargs)
    check_state_dict_fits(path, network, state_dict, name)
    network.load_state_dict(state_dict, strict=True, assign=True)
    return network.to(device).eval()


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' / 'cuda' / 'cpu' through pick_device; a torch.device as it is."""
    return device if isinstance(device, torch.device) else pick_device(device)


def read_torch_file(path: str | os.PathLike, device: torch.device) -> object:
    """torch.load(weights_only=True), with a missing, truncated or foreign file reported as CheckpointError."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such file; expected a .pth checkpoint")
    with open(path, "rb") as file:
        start = file.read(4)
    if not start.startswith(TORCH_FILE_STARTS):
        raise CheckpointError(f"{path}: not a torch checkpoint (it starts with {start!r}, neither a zip nor a pickle); "
                              "expected a .pth file saved by torch.save")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        refused = isinstance(error, pickle.UnpicklingError) and "weights only load failed" in str(error).lower()
        problem = ("cannot be read safely: it holds Python objects besides tensors and plain data, which "
                   "torch.load(weights_only=True) refuses; expected weights only" if refused else
                   f"cannot be read as a torch checkpoint ({short(error)}); the file may be truncated, corrupt or "
                   "of another kind")
        raise CheckpointError(f"{path}: {problem}") from None


def checked_config(path: str | os.PathLike, payload: object) -> dict:
    """The config of a payload in our format, after checking format, version and fields."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = f"format {payload.get('format')!r}" if isinstance(payload, dict) else type(payload).__name__
        hint = " (an authors' file? use load_paper_checkpoint)" if isinstance(payload, dict) else ""
        raise CheckpointError(f"{path}: not an {FORMAT} file (found {found}){hint}")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: {FORMAT} version {payload.get('version')!r}; this code reads version {VERSION}")
    config = payload.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("network"), str) \
            or not isinstance(config.get("kwargs"), dict) or "state_dict" not in payload:
        raise CheckpointError(f"{path}: incomplete {FORMAT} file; expected config.network (str), "
                              "config.kwargs (dict) and state_dict")
    return config


def network_class_for(path: str | os.PathLike, config: dict) -> type:
    """The registered class named in the config, importing its lvd_core module first if need be."""
    name, module = config["network"], config.get("module", "")
    if registered_network(name) is None and isinstance(module, str) and module.startswith("lvd_core."):
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # reported below as an unknown network
    network_class = registered_network(name)
    if network_class is None:
        raise CheckpointError(f"{path}: unknown network {name!r}; registered: {', '.join(registered_names())}")
    return network_class


def require_state_dict(path: str | os.PathLike, state_dict: object, expected: str) -> None:
    """Raises unless state_dict is a dict from str to tensors."""
    if not isinstance(state_dict, dict) or not all(
            isinstance(key, str) and isinstance(value, Tensor) for key, value in state_dict.items()):
        raise CheckpointError(f"{path}: not a state_dict (a dict of name -> tensor, got "
                              f"{type(state_dict).__name__}); {expected}")


def check_state_dict_fits(path: str | os.PathLike, network: LVDNetwork, state_dict: object, name: str) -> None:
    """Raises, listing missing keys, unexpected keys and shape mismatches, unless load_state_dict(strict=True)
    would take state_dict (network may live on the meta device)."""
    require_state_dict(path, state_dict, f"expected the weights of {name}")
    expected = {key: tuple(value.shape) for key, value in network.state_dict().items()}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [f"{key} {tuple(state_dict[key].shape)} vs {expected[key]}"
                  for key in expected if key in state_dict and tuple(state_dict[key].shape) != expected[key]]
    problems = [f"{len(keys)} {what} ({listing(keys)})" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatches, file vs network", mismatched)) if keys]
    if problems:
        raise CheckpointError(f"{path}: weights do not fit {name}: {'; '.join(problems)}")


def listing(items: list[str], shown: int = 3) -> str:
    """The first few items, comma-separated, with how many more."""
    more = f", ... {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def short(error: Exception) -> str:
    """The start of the first line of an exception's message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:MESSAGE_DETAIL_CHARS] + ("..." if len(text) > MESSAGE_DETAIL_CHARS else "")


# ---------------------------------------------------------------------------------------------------------
# which checkpoint a body model uses, loaded once per process

WEIGHTS_DIR = weights_dir()
# The checkpoint each shipped body model uses by default (under WEIGHTS_DIR or a user's checkpoint folder).
DEFAULT_SCAN_WEIGHTS = {
    "anny": "anny-body-scan/checkpoint.pt",
    "anny-hand": "anny-hand-scan/checkpoint.pt",
    "anny-hand-right": "anny-hand-scan/checkpoint.pt",
    "anny-hand-left": "anny-hand-scan/checkpoint.pt",  # on the mirrored scan (see MIRRORED_BODIES)
}
# Bodies fitted with their mirror twin's network: the scan is mirrored (x -> -x) for the network and the
# prediction mirrored back. Anny's left hand is the right hand mirrored vertex for vertex (same indices).
MIRRORED_BODIES = {"anny-hand-left": "anny-hand-right"}


def resolve_weights(body: str, weights: str | Path | None, checkpoint_folder: str | Path | None = None, *,
                    defaults: dict = DEFAULT_SCAN_WEIGHTS, kind: str = "scan", no_default: str | None = None) -> Path:  # fmt: skip
    """The checkpoint file to use: the given one, else the default for `body` (from `defaults`) in the user's
    folder or ours. kind names the network in messages; no_default: the fix to suggest when none ships."""
    if weights:
        return Path(weights).expanduser()
    default = defaults.get(body)
    if default is None:
        fix = no_default or (f"train one with `lvd train --body {body} --model-file ...` or pass the authors' released "
                             "checkpoint with --weights")  # fmt: skip
        raise InputError(f"no trained {kind} network ships for the {body} body model: {fix}")
    for folder in ([Path(checkpoint_folder).expanduser()] if checkpoint_folder else []) + [WEIGHTS_DIR]:
        if (folder / default).is_file():
            return folder / default
    raise InputError(f"the {kind} network for {body} is missing ({WEIGHTS_DIR / default}): reinstall LVD or pass --weights")


_network_cache: dict[tuple, torch.nn.Module] = {}


def load_network(path: Path, device: torch.device) -> torch.nn.Module:
    """Our checkpoint or the authors' released file (cached per process)."""
    key = (str(path), str(device))
    if key not in _network_cache:
        try:
            _network_cache[key] = load_checkpoint(path, device=device)
        except CheckpointError as ours:
            try:
                _network_cache[key] = load_paper_checkpoint(path, device=device)
            except CheckpointError:
                raise ours from None
    return _network_cache[key]
