"""``RetrievalLoss``: the base class and registry of every retrieval loss.

A loss is found by name from ``ModelArguments.loss``. Every subclass registers itself when its class
statement runs (``__init_subclass__``), under its class name and its ``_alias`` (a string or a tuple of
strings); lookup ignores case, so ``"infonce"``, ``"InfoNCE"`` and ``"InfoNCELoss"`` name the same class.
Adding a loss is one new class in one new module; there is no central list to edit. A class defined
later under a name already taken replaces the earlier one (with a warning), so a user's own loss wins
over the built-in one of the same name.

The call shape is Trove's::

    loss = loss_fn(logits, label)            # logits: [Q, P], label: [Q, G] -> scalar

``P`` is every passage the queries were scored against (in-batch passages included). By default query
``i``'s own group of ``G`` passages is the columns ``i*G .. i*G+G-1``, which requires ``P == Q*G``. When
the layout differs (for example local queries scored against passages gathered from every device),
pass ``group_offsets``: a ``[Q]`` integer tensor with the first column of each query's group.

Losses that set ``accepts_mask = True`` also take ``mask``: a bool ``[Q, P]`` tensor, True where a
column must be left out of that query's softmax (in-batch false negatives, see
:mod:`densekit.modeling.losses.false_negatives`); the retriever builds and passes it only to them.
"""
from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch

from densekit.errors import ConfigError


class RetrievalLoss(torch.nn.Module):
    """Base class of retrieval losses; subclasses register themselves by class name and ``_alias``."""

    #: Other names (besides the class name) that select this loss, e.g. ``"infonce"``.
    _alias: ClassVar[str | tuple[str, ...] | None] = None
    #: lower-cased name -> (name as written, class). Shared by all subclasses; do not edit by hand.
    _registry: ClassVar[dict[str, tuple[str, type[RetrievalLoss]]]] = {}
    #: Whether ``forward`` takes ``mask=`` (columns left out of each query's negatives).
    accepts_mask: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        aliases = cls.__dict__.get("_alias")
        if aliases is None:
            aliases = ()
        elif isinstance(aliases, str):
            aliases = (aliases,)
        for name in (cls.__name__, *aliases):
            previous = RetrievalLoss._registry.get(name.lower())
            same = previous is not None and (previous[1].__module__, previous[1].__qualname__) == (
                cls.__module__, cls.__qualname__)
            if previous is not None and not same:
                warnings.warn(
                    f"loss name {name!r} was {previous[1].__module__}.{previous[1].__qualname__}; "
                    f"now {cls.__module__}.{cls.__qualname__}", stacklevel=2,
                )
            RetrievalLoss._registry[name.lower()] = (name, cls)

    @classmethod
    def available_losses(cls) -> list[str]:
        """Every name (class names and aliases) that ``find`` and ``ModelArguments.loss`` accept."""
        return sorted(written for written, _ in RetrievalLoss._registry.values())

    @classmethod
    def find(cls, name: str) -> type[RetrievalLoss]:
        """The loss class registered as ``name`` (case-insensitive); ConfigError listing the choices."""
        entry = RetrievalLoss._registry.get(str(name).lower())
        if entry is None:
            raise ConfigError(
                f"unknown loss {name!r}. Available losses: {', '.join(cls.available_losses())}. "
                "Fix: set ModelArguments.loss to one of them, or define a RetrievalLoss subclass "
                "with that name or _alias before building the model."
            )
        return entry[1]

    @classmethod
    def from_model_args(cls, args: Any, **kwargs: Any) -> RetrievalLoss | None:
        """Instantiate the loss named by ``args.loss`` (``None`` when ``args.loss`` is ``None``).

        ``args`` is passed on to the constructor, which reads what it needs (e.g. ``temperature``).
        """
        name = getattr(args, "loss", None)
        if name is None:
            return None
        return cls.find(name)(args=args, **kwargs)

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        super().__init__()

    def forward(self, logits: torch.Tensor, label: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Loss (a scalar) from query-passage scores ``logits [Q, P]`` and group labels ``label [Q, G]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")


def resolve_temperature(args: Any, temperature: float | None, default: float = 1.0) -> float:
    """The explicit ``temperature`` if given, else ``args.temperature``, else ``default``; must be > 0."""
    value = temperature if temperature is not None else getattr(args, "temperature", None)
    value = default if value is None else float(value)
    if not value > 0:
        raise ConfigError(f"temperature must be > 0, got {value}. Fix: use a positive temperature, e.g. 0.05.")
    return value


def group_columns(logits: torch.Tensor, group_size: int,
                  group_offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Column index ``[Q, G]`` in ``logits`` of each query's own group of ``group_size`` passages.

    Without ``group_offsets`` the layout must be the in-batch one, ``P == Q * G``; anything else is
    refused rather than guessed, because a wrong guess trains on the wrong positives without a sound.
    """
    if logits.dim() != 2:
        raise ConfigError(f"logits must be 2-D [queries, passages], got shape {tuple(logits.shape)}")
    n_queries, n_passages = logits.shape
    if group_offsets is None:
        if n_passages != n_queries * group_size:
            raise ConfigError(
                f"logits has {n_passages} passage columns but {n_queries} queries x group size "
                f"{group_size} = {n_queries * group_size}. Fix: pass group_offsets (first column of "
                "each query's group) when passages are not laid out group after group."
            )
        offsets = torch.arange(n_queries, device=logits.device) * group_size
    else:
        offsets = torch.as_tensor(group_offsets, device=logits.device).long().reshape(-1)
        if offsets.numel() != n_queries:
            raise ConfigError(f"group_offsets has {offsets.numel()} entries for {n_queries} queries")
        if n_queries and (int(offsets.min()) < 0 or int(offsets.max()) + group_size > n_passages):
            raise ConfigError(
                f"group_offsets put a group of {group_size} outside the {n_passages} passage columns"
            )
    return offsets[:, None] + torch.arange(group_size, device=logits.device)[None, :]


def check_label(logits: torch.Tensor, label: torch.Tensor) -> None:
    """Refuse a label tensor that cannot describe ``logits``' queries."""
    if label.dim() != 2 or label.shape[0] != logits.shape[0]:
        raise ConfigError(
            f"label must be [queries, group size] with {logits.shape[0]} rows, got shape {tuple(label.shape)}"
        )


def check_mask(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` as a bool tensor on ``logits``' device, refused unless it is ``[Q, P]`` like ``logits``."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(logits.shape):
        raise ConfigError(f"mask must have the logits' shape {tuple(logits.shape)}, got {tuple(mask.shape)}")
    return mask.to(device=logits.device, dtype=torch.bool)
