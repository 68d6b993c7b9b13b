"""The optional linear projection head: pooled vector -> ``projection_dim`` dimensions, before normalization.

OpenMatch's ``--add_linear_head``, DPR's ``projection_dim`` (``encode_proj``) and the ``Dense`` module of
Sentence-T5 / GTR are the same thing: one ``nn.Linear`` applied to the pooled vector. This module finds the
head a checkpoint folder carries, builds a new one when asked for a size the folder has none of, and
writes and reads densekit's own file for it, ``projection.safetensors`` (keys ``weight`` and, when the head
has one, ``bias``) beside the model weights. Why a separate file rather than a key inside
``model.safetensors``: the Hugging Face weights stay loadable by plain transformers, and the folder of a
model without a head is byte-for-byte what it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from densekit.errors import ConfigError
from densekit.modeling.st_config import DenseModule

PROJECTION_FILE = "projection.safetensors"


@dataclass
class FoundHead:
    """A head stored in a checkpoint folder: its tensors (``weight`` [out, in], optional ``bias`` [out]) and
    a description of where they came from, for error messages."""

    state: dict[str, torch.Tensor]
    origin: str

    @property
    def out_features(self) -> int:
        return int(self.state["weight"].shape[0])


def new_head(in_features: int, out_features: int, bias: bool = True) -> torch.nn.Linear:
    """A freshly initialised head (``nn.Linear``'s own init, from torch's generator), to be trained.

    A bias by default, as DPR's ``encode_proj`` has, so a trained head exports to DPR as it is."""
    return torch.nn.Linear(in_features, out_features, bias=bias)


def head_from_state(found: FoundHead) -> torch.nn.Linear:
    """An ``nn.Linear`` holding ``found``'s tensors, refusing a malformed state (ConfigError)."""
    weight, bias = found.state.get("weight"), found.state.get("bias")
    extra = sorted(set(found.state) - {"weight", "bias"})
    if weight is None or weight.dim() != 2 or extra or (bias is not None and tuple(bias.shape) != weight.shape[:1]):
        shapes = {k: tuple(v.shape) for k, v in found.state.items()}
        raise ConfigError(f"{found.origin}: expected a linear head (weight [out, in], optional bias [out]), found "
                          f"{shapes}; the file is damaged or not a densekit projection head.")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    return head


def read_projection_file(directory: str | Path) -> Optional[FoundHead]:
    """densekit's ``projection.safetensors`` in ``directory``, or None when there is none."""
    path = Path(directory) / PROJECTION_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return FoundHead(load_file(path, device="cpu"), str(path))


#: OpenMatch's head folders (``--add_linear_head``): beside ``query_model/`` / ``passage_model/`` when untied,
#: inside the model folder when tied.
OPENMATCH_HEADS = {"query_model": "head_q", "passage_model": "head_p"}


def read_openmatch_head(model_folder: str | Path) -> Optional[FoundHead]:
    """The OpenMatch linear head of a model folder, or None when it has none.

    OpenMatch saves ``head_q/`` and ``head_p/`` (``config.json`` with ``input_dim`` / ``output_dim`` and
    ``model.pt``, a state dict with ``linear.weight``: a Linear without bias) next to the towers of an untied
    model, or inside the folder of a tied one. ``model.pt`` is read with ``weights_only=True`` (no pickled
    code). A tied folder whose two heads differ cannot be one shared encoder: a ConfigError, not half a model.
    """
    folder = Path(model_folder)
    own = OPENMATCH_HEADS.get(folder.name)
    candidates = [folder.parent / own] if own else [folder / "head_q", folder / "head_p"]
    found = [_read_openmatch_head_folder(c) for c in candidates if c.is_dir()]
    if not found:
        return None
    if len(found) == 2 and not all(torch.equal(found[0].state[k], found[1].state.get(k, torch.empty(0)))
                                   for k in found[0].state):
        raise ConfigError(f"{folder}: OpenMatch's head_q and head_p differ, but the model is one shared encoder; "
                          "densekit cannot give queries and passages different heads on one tower. Save the model "
                          "untied (query_model/ and passage_model/) to use both heads.")
    return found[0]


def _read_openmatch_head_folder(folder: Path) -> FoundHead:
    weights = folder / "model.pt"
    if not weights.is_file():
        raise ConfigError(f"{folder}: an OpenMatch head folder without model.pt; restore it from the checkpoint, "
                          "or remove the folder to load the model without its head.")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure: the file is not a plain state dict
        raise ConfigError(f"{weights}: not a plain tensor state dict ({err}); densekit reads OpenMatch heads "
                          "with weights_only=True.") from None
    return FoundHead({k.removeprefix("linear."): v for k, v in dict(state).items()}, f"{weights} (OpenMatch head)")


def read_st_dense(dense: DenseModule) -> FoundHead:
    """The weights of a sentence-transformers ``Dense`` module (``linear.weight`` / ``linear.bias`` in its
    ``model.safetensors``, or in ``pytorch_model.bin`` for older saves), checked against its config."""
    folder = dense.folder
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(folder / "model.safetensors", device="cpu")
    elif (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ConfigError(f"{folder}: the sentence-transformers Dense module has no weights (model.safetensors or "
                          "pytorch_model.bin); restore them from the original checkpoint.")
    found = FoundHead({k.removeprefix("linear."): v for k, v in state.items()},
                      f"{folder} (sentence-transformers Dense)")
    weight = found.state.get("weight")
    if weight is None or tuple(weight.shape) != (dense.out_features, dense.in_features) or \
            ("bias" in found.state) != dense.bias:
        raise ConfigError(f"{found.origin}: weights {[(k, tuple(v.shape)) for k, v in state.items()]} do not match its "
                          f"config.json (in_features {dense.in_features}, out_features {dense.out_features}, bias "
                          f"{dense.bias}); restore the module from the original checkpoint.")
    return found


def save_projection(head: Optional[torch.nn.Linear], directory: str | Path) -> None:
    """Write ``head`` as ``directory/projection.safetensors``; without a head, remove a stale file (saving
    over an older checkpoint that had one)."""
    path = Path(directory) / PROJECTION_FILE
    if head is None:
        path.unlink(missing_ok=True)
        return
    from safetensors.torch import save_file

    save_file({name: tensor.detach().contiguous().cpu() for name, tensor in head.state_dict().items()}, str(path))


def resolve_head(folder: str, wanted_dim: Optional[int], hidden_size: int,
                 found: Optional[FoundHead]) -> Optional[torch.nn.Linear]:
    """The head an encoder gets: the folder's (``found``) when it has one, a new ``wanted_dim`` head when it
    has none, None when neither.

    A size asked for that differs from the folder's head, and a head whose input is not the model's hidden
    size, are ConfigErrors naming the folder: a silently re-initialised or truncated head would change every
    vector.
    """
    if found is not None:
        if wanted_dim is not None and wanted_dim != found.out_features:
            raise ConfigError(f"projection_dim={wanted_dim} but {found.origin} holds a "
                              f"{found.out_features}-dimensional head; drop projection_dim (or set it to "
                              f"{found.out_features}) to use the checkpoint's head, or use a folder without one.")
        head = head_from_state(found)
        if head.in_features != hidden_size:
            raise ConfigError(f"{found.origin}: the projection head takes {head.in_features} inputs but the model "
                              f"in {folder} has hidden size {hidden_size}; the head belongs to another model.")
        return head
    if wanted_dim is None:
        return None
    return new_head(hidden_size, wanted_dim)


def write_st_dense(head: torch.nn.Linear, directory: str | Path, subfolder: str = "2_Dense") -> dict:
    """Write ``head`` as a sentence-transformers ``Dense`` module (identity activation) into
    ``directory/subfolder``; returns its ``modules.json`` entry (``idx`` and a unique ``name`` left to the
    caller, who places it after the Pooling module and before Normalize). What :func:`read_st_dense` reads
    back, so a sentence-transformers export of a model with a head gives densekit's vectors."""
    import json

    from safetensors.torch import save_file

    folder = Path(directory) / subfolder
    folder.mkdir(parents=True, exist_ok=True)
    config = {"in_features": head.in_features, "out_features": head.out_features, "bias": head.bias is not None,
              "activation_function": "torch.nn.modules.linear.Identity"}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file({f"linear.{name}": tensor.detach().contiguous().cpu() for name, tensor in head.state_dict().items()},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return {"name": subfolder.split("_", 1)[0], "path": subfolder, "type": "sentence_transformers.models.Dense"}
