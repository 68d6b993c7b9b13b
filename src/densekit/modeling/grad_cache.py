"""Gradient cache: a contrastive step over a batch larger than memory, with the full-batch gradient.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (GC-DPR).
A contrastive loss couples every query with every passage of the batch, so ordinary back-propagation
keeps the activations of the whole batch alive. The loss, however, only sees the *representations*.
``grad_cache_step`` therefore splits back-propagation in two:

1. encode every chunk of queries and passages **without** autograd, with dropout masks that can be
   drawn again: either every row gets its own dropout seed (models on the CPU prepared by
   :func:`densekit.modeling.seeded_dropout.make_seedable`, BERT- and T5-family encoders), or torch's RNG state
   (the CPU's and that of each CUDA device the step uses) is saved before each chunk and replayed (any
   model, and every model on a GPU: :func:`densekit.modeling.fast_inference.cpu_tricks_apply`);
2. compute the loss on the concatenated representations, held as leaf tensors, and back-propagate only
   to them: ``g = d loss / d reps`` (the cache; with a GradScaler the loss is scaled here);
3. for each chunk: encode it again **with** autograd and the same masks and back-propagate ``g_chunk``,
   which adds that chunk's share of the parameter gradient. The last passage chunk is the exception:
   step 1 keeps its graph (it would be freed right after anyway), so it is back-propagated without a
   second forward.

With seeded dropout on CPU (``workers``) each chunk is split into one part per core and the parts run at
once, one intra-op thread each; a row's masks depend only on its seed, so neither the split nor thread
timing changes them, and part ``i`` of every chunk adds into its own gradient sum, summed in order at
the end. Peak memory is one chunk's activations plus the representations of the whole batch, whatever
the number of workers. The result is the gradient of one step over the whole batch with the same
dropout masks; with seeded dropout, literally of one unchunked forward (pinned by
``tests/test_modeling_grad_cache.py``). It is a wrapper around any loss, not a trainer flag:
``loss_fn(q_reps, p_reps)`` is ordinary PyTorch, and may gather across devices itself (see
``densekit.distributed``). With DDP, pass the wrapped ``model``: all chunk passes but the last run under
``model.no_sync()``, so gradients are all-reduced once, after they are complete (DDP chunks run in turn).

Example::

    loss = grad_cache_step(encode, queries, passages,
                           lambda q, p: loss_module(q @ p.T, label),
                           query_chunk_size=16, passage_chunk_size=8)
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from densekit.errors import ConfigError
from densekit.modeling import seeded_dropout
from densekit.modeling.cpu_workers import map_on_workers
from densekit.modeling.fast_inference import cpu_tricks_apply

EncodeFn = Callable[[dict[str, Any]], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def split_rows(inputs: Mapping[str, Any], chunk_size: int | None) -> list[dict[str, Any]]:
    """Split a dict of per-row values (tensors, lists) into dicts of at most ``chunk_size`` rows each.

    ``chunk_size=None`` keeps one chunk. Every value must have the same number of rows.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk size must be >= 1 (or None for no chunking), got {chunk_size}")
    if not inputs:
        raise ConfigError("cannot split an empty input dict: expected e.g. input_ids and attention_mask")
    rows = {key: len(value) for key, value in inputs.items()}
    if len(set(rows.values())) != 1:
        raise ConfigError(f"inputs disagree on the number of rows: {rows}")
    n = next(iter(rows.values()))
    if n == 0:
        raise ConfigError("cannot run a step on an empty batch (0 rows)")
    size = n if chunk_size is None else chunk_size
    chunks = []
    for start in range(0, n, size):
        chunk = {}
        for key, value in inputs.items():
            if not isinstance(value, (torch.Tensor, list, tuple)):
                raise ConfigError(f"input {key!r} is a {type(value).__name__}; expected a tensor or list per row")
            chunk[key] = value[start:start + size]
        chunks.append(chunk)
    return chunks


class RandState:
    """The RNG state of the CPU and of the given CUDA devices, captured when the object is made.

    ``with state.replay(): ...`` runs the block from that state (same dropout masks as the first
    time), and afterwards puts back whatever state was current, so replaying never disturbs the
    random stream of the rest of training. Like GradCache's ``RandContext``, only the devices the step
    uses are captured (touching every visible GPU would create a CUDA context on each, from every
    process); unlike it, their states are restored after the block too. ``cuda_devices=None``: the
    current CUDA device, if CUDA is available.
    """

    def __init__(self, cuda_devices: Sequence[int] | None = None) -> None:
        if cuda_devices is None:
            cuda_devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        self.devices = sorted(set(cuda_devices))
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(device) for device in self.devices]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, device)
            yield


def _cuda_devices(model: torch.nn.Module | None, *inputs: Mapping[str, Any]) -> list[int]:
    """Indices of the CUDA devices a step runs on: those of the model's parameters and of the inputs."""
    tensors = [value for batch in inputs for value in batch.values() if isinstance(value, torch.Tensor)]
    if model is not None:
        tensors.extend(model.parameters())
    found = {tensor.device.index for tensor in tensors if tensor.device.type == "cuda"}
    return sorted(torch.cuda.current_device() if index is None else index for index in found)


def _first_device_type(inputs: Mapping[str, Any]) -> str:
    for value in inputs.values():
        if isinstance(value, torch.Tensor):
            return value.device.type
    return "cpu"


def _check_reps(reps: Any, chunk: Mapping[str, Any], what: str) -> torch.Tensor:
    rows = len(next(iter(chunk.values())))
    if not isinstance(reps, torch.Tensor) or reps.dim() < 1 or reps.shape[0] != rows:
        shape = tuple(reps.shape) if isinstance(reps, torch.Tensor) else type(reps).__name__
        raise ConfigError(f"{what} encode_fn must return a tensor with one row per input row "
                          f"({rows}), got {shape}")
    return reps


@dataclass
class _Chunk:
    """One sub-batch of one tower (the memory unit), split into one part per worker."""

    encode: EncodeFn
    tower: str
    parts: list["_Part"]
    keep: bool = False                 # its first pass keeps the graph (no second forward)
    state: RandState | None = None     # generator mode: torch's RNG state before its first forward


@dataclass
class _Part:
    """Rows of a chunk that one worker encodes, in both passes."""

    chunk: _Chunk
    inputs: dict[str, Any]
    seeds: torch.Tensor | None = None  # seeded mode: one dropout seed per row
    kept: torch.Tensor | None = None   # representations whose graph the first pass kept
    grad: torch.Tensor | None = None   # d loss / d representations (the cache)

    def replay(self) -> contextlib.AbstractContextManager:
        """The dropout masks of its first pass: its rows' seeds, or its chunk's generator state."""
        if self.seeds is not None:
            return seeded_dropout.seeded(self.seeds)
        return self.chunk.state.replay() if self.chunk.state is not None else contextlib.nullcontext()


def _rows(inputs: Mapping[str, Any]) -> int:
    return len(next(iter(inputs.values())))


# Fewest rows a part gets when ``workers`` is chosen automatically: smaller GEMMs stop paying off, and
# on a many-core machine the spare threads go to each part's intra-op pool instead.
MIN_PART_ROWS = 8


def _worker_count(workers: int | None, seeded: bool, no_sync: Any, on_cpu: bool, chunk_rows: int) -> int:
    """How many parts of a chunk run at once: ``None`` means every torch thread (parts of at least
    ``MIN_PART_ROWS`` rows), where that is possible."""
    possible = on_cpu and seeded and no_sync is None
    if workers is None:
        return max(1, min(torch.get_num_threads(), chunk_rows // MIN_PART_ROWS)) if possible else 1
    if isinstance(workers, bool) or workers < 1:
        raise ConfigError(f"grad cache workers must be >= 1, got {workers!r}")
    if workers > 1 and not possible:
        why = ("chunks run concurrently for models on the CPU only (on a GPU they run one after another)"
               if not on_cpu else "the model's dropout is not seeded: pass model= and call "
               "densekit.modeling.seeded_dropout.make_seedable(model) first (BERT- and T5-family models)" if not seeded
               else "DDP/FSDP models (no_sync) run their chunks in turn")
        raise ConfigError(f"grad cache workers={workers} is not possible here: {why}; use workers=1.")
    return workers


def grad_cache_step(
    encode_fn: EncodeFn,
    queries: Mapping[str, Any],
    passages: Mapping[str, Any],
    loss_fn: LossFn,
    *,
    query_chunk_size: int | None = None,
    passage_chunk_size: int | None = None,
    passage_encode_fn: EncodeFn | None = None,
    model: torch.nn.Module | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """Accumulate the full-batch gradient of ``loss_fn(encode(queries), encode(passages))`` chunk by chunk.

    Args:
        encode_fn: ``dict of row-aligned inputs -> [rows, dim]`` representations of queries (and of
            passages unless ``passage_encode_fn`` is given). Under DDP it must call the wrapped model.
        queries, passages: dicts of tensors (``input_ids``, ``attention_mask``, ...) split by rows.
        loss_fn: ``(q_reps [Q, d], p_reps [P, d]) -> scalar`` on the whole batch, plain PyTorch.
        query_chunk_size, passage_chunk_size: rows per sub-batch (``None``: no chunking); one chunk's
            activations are what the step keeps in memory at a time.
        model: the module being trained, holding every parameter ``encode_fn`` uses; if it offers
            ``no_sync()`` (DDP, FSDP) every chunk pass but the last runs inside it, so gradients are
            all-reduced once. When it is on the CPU and its dropout is seeded
            (:func:`~densekit.modeling.seeded_dropout.make_seedable`) every row gets its own dropout seed
            instead of each chunk a saved generator state (CPU and CUDA).
        scaler: a GradScaler for fp16; the loss is scaled before step 2, so parameter gradients come
            out scaled and ``scaler.step(optimizer)`` unscales them. Disabled scalers are ignored.
        autocast_dtype: run the encoder passes under ``torch.autocast`` with this dtype (bf16 on CPU,
            fp16/bf16 on CUDA). The loss itself is computed on float32 copies of the representations.
        workers: each chunk is split into this many parts, encoded at once, each on its own CPU thread
            with ``torch threads // workers`` intra-op threads (:mod:`densekit.modeling.cpu_workers`);
            memory stays one chunk. Needs a seeded model on the CPU without DDP; ``None`` uses one worker
            per torch thread (parts of at least ``MIN_PART_ROWS`` rows) when that holds, else 1.
            Part ``i`` of every chunk adds into gradient sum ``i``, and the sums are added in order,
            so the result does not depend on thread timing.

    Returns:
        The (unscaled) loss, detached. Parameter ``.grad`` fields hold the accumulated gradient.
    """
    no_sync = getattr(model, "no_sync", None)  # DDP decides at forward time whether a backward syncs
    on_cpu = model is not None and cpu_tricks_apply(model)
    seeded = on_cpu and seeded_dropout.is_seedable(model)
    cuda_devices = [] if seeded else _cuda_devices(model, queries, passages)
    towers = ((encode_fn, "query", split_rows(queries, query_chunk_size)),
              (passage_encode_fn or encode_fn, "passage", split_rows(passages, passage_chunk_size)))
    chunk_rows = max(_rows(inputs) for _, _, tower_chunks in towers for inputs in tower_chunks)
    workers = _worker_count(workers, seeded, no_sync, on_cpu, chunk_rows)
    threads_per_worker = max(1, torch.get_num_threads() // workers)
    chunks: list[_Chunk] = []
    for encode, tower, tower_chunks in towers:
        for inputs in tower_chunks:
            chunk = _Chunk(encode, tower, [])
            chunk.parts = [_Part(chunk, part) for part in split_rows(inputs, -(-_rows(inputs) // workers))]
            chunks.append(chunk)
    chunks[-1].keep = True  # its activations would be the live ones anyway: no second forward for it
    parts = [part for chunk in chunks for part in chunk.parts]
    if seeded:  # one draw from torch's generator per step keeps training reproducible under manual_seed
        row_counts = [_rows(part.inputs) for part in parts]
        for part, seeds in zip(parts, torch.randint(0, 2**62, (sum(row_counts),)).split(row_counts)):
            part.seeds = seeds

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(_first_device_type(queries), dtype=autocast_dtype)

    def sync(enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if (enabled or no_sync is None) else no_sync()

    # 1. representations without autograd (the kept chunk with it), recording how to redraw the masks
    def first_pass(part: _Part) -> torch.Tensor:
        chunk = part.chunk
        if not seeded and not chunk.keep:
            chunk.state = RandState(cuda_devices)
        with autocast(), (part.replay() if seeded else contextlib.nullcontext()):
            if chunk.keep:
                with sync(False):
                    part.kept = _check_reps(chunk.encode(part.inputs), part.inputs, chunk.tower)
                return part.kept.detach()
            with torch.no_grad():
                return _check_reps(chunk.encode(part.inputs), part.inputs, chunk.tower)

    reps = map_on_workers(first_pass, parts, workers, threads_per_worker)

    # 2. loss on the whole batch; back-propagate to the representations only
    n_query_parts = sum(len(chunk.parts) for chunk in chunks if chunk.tower == "query")
    leaves = [torch.cat(reps[:n_query_parts]).float().requires_grad_(),
              torch.cat(reps[n_query_parts:]).float().requires_grad_()]
    loss = loss_fn(*leaves)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise ConfigError("loss_fn must return a scalar tensor computed from the representations it is given")
    (scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss).backward()
    grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves]
    cached = grads[0].split([len(r) for r in reps[:n_query_parts]]) + \
        grads[1].split([len(r) for r in reps[n_query_parts:]])
    for part, grad in zip(parts, cached):
        part.grad = grad
    del reps

    # 3. push every part's cached gradient into the parameters: the kept chunk first (freeing its graph),
    #    then each other chunk after a second forward with the same dropout masks
    def second_pass(part: _Part) -> torch.Tensor:
        if part.kept is not None:
            out, part.kept = part.kept, None
            return out
        with part.replay(), autocast():
            return part.chunk.encode(part.inputs)

    ordered = [chunk for chunk in chunks if chunk.keep] + [chunk for chunk in chunks if not chunk.keep]
    if workers == 1:
        for index, chunk in enumerate(ordered):
            (part,) = chunk.parts
            with sync(index == len(ordered) - 1):
                out = second_pass(part)
                out.backward(gradient=part.grad.to(out.dtype))
            del out
        return loss.detach()

    params = [p for p in model.parameters() if p.requires_grad]
    sums: list[list[torch.Tensor | None]] = [[None] * len(params) for _ in range(workers)]

    def add_part_gradient(position: int, chunk_parts: list[_Part]) -> None:
        part, total = chunk_parts[position], sums[position]
        out = second_pass(part)
        part_grads = torch.autograd.grad(out, params, grad_outputs=part.grad.to(out.dtype), allow_unused=True)
        for i, grad in enumerate(part_grads):
            if grad is not None:
                total[i] = grad if total[i] is None else total[i].add_(grad)

    for chunk in ordered:
        map_on_workers(lambda position, chunk_parts=chunk.parts: add_part_gradient(position, chunk_parts),
                       range(len(chunk.parts)), workers, threads_per_worker)
    for total in sums:
        for param, grad in zip(params, total):
            if grad is not None:
                param.grad = grad if param.grad is None else param.grad.add_(grad)
    return loss.detach()
