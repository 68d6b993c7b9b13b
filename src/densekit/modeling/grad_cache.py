"""Gradient cache: a contrastive step over a batch larger than memory, with the full-batch gradient.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (GC-DPR).
A contrastive loss couples every query with every passage of the batch, so ordinary back-propagation
keeps the activations of the whole batch alive. The loss, however, only sees the *representations*.
``grad_cache_step`` therefore splits back-propagation in two:

1. encode every chunk of queries and passages **without** autograd, remembering each chunk's RNG state
   (CPU and every CUDA device) so that dropout can be replayed exactly;
2. compute the loss on the concatenated representations, held as leaf tensors, and back-propagate only
   to them: ``g = d loss / d reps`` (the cache; with a GradScaler the loss is scaled here);
3. for each chunk: restore its RNG state, encode it again **with** autograd and call
   ``reps.backward(g_chunk)``, which adds that chunk's share of the parameter gradient. The last
   passage chunk is the exception: step 1 keeps its graph (it would be freed right after anyway), so
   it is back-propagated without a second forward.

Peak memory is one chunk's activations plus the representations of the whole batch. The sum of the
chunk gradients is the gradient of one step over the whole batch with the same dropout masks (pinned by
``tests/test_modeling_grad_cache.py``). It is a wrapper around any loss, not a trainer flag:
``loss_fn(q_reps, p_reps)`` is ordinary PyTorch, and may gather across devices itself (see
``densekit.distributed``). With DDP, pass the wrapped ``model``: all chunk passes but the last run under
``model.no_sync()``, so gradients are all-reduced once, after they are complete.

Example::

    loss = grad_cache_step(encode, queries, passages,
                           lambda q, p: loss_module(q @ p.T, label),
                           query_chunk_size=16, passage_chunk_size=8)
    optimizer.step(); optimizer.zero_grad()
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from densekit.errors import ConfigError

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
    """The RNG state of the CPU and of every CUDA device, captured when the object is made.

    ``with state.replay(): ...`` runs the block from that state (same dropout masks as the first
    time), and afterwards puts back whatever state was current, so replaying never disturbs the
    random stream of the rest of training. Unlike GradCache's functional ``RandContext``, the CUDA
    states are restored as well, so dropout on GPU replays exactly too.
    """

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=list(range(len(self.cuda)))):
            torch.set_rng_state(self.cpu)
            if self.cuda:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def make_grad_scaler(device_type: str, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler only where it is needed and works: fp16 autocast on CUDA. Otherwise ``None``.

    bf16 has fp32's exponent range and needs no loss scaling; CPU runs therefore get no scaler.
    """
    if device_type == "cuda" and dtype == torch.float16:
        return torch.amp.GradScaler("cuda")
    return None


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
) -> torch.Tensor:
    """Accumulate the full-batch gradient of ``loss_fn(encode(queries), encode(passages))`` chunk by chunk.

    Args:
        encode_fn: ``dict of row-aligned inputs -> [rows, dim]`` representations of queries (and of
            passages unless ``passage_encode_fn`` is given). Under DDP it must call the wrapped model.
        queries, passages: dicts of tensors (``input_ids``, ``attention_mask``, ...) split by rows.
        loss_fn: ``(q_reps [Q, d], p_reps [P, d]) -> scalar`` on the whole batch, plain PyTorch.
        query_chunk_size, passage_chunk_size: rows per sub-batch (``None``: no chunking).
        model: the module being trained; if it offers ``no_sync()`` (DDP, FSDP) every chunk pass but
            the last runs inside it, so gradients are all-reduced once.
        scaler: a GradScaler for fp16; the loss is scaled before step 2, so parameter gradients come
            out scaled and ``scaler.step(optimizer)`` unscales them. Disabled scalers are ignored.
        autocast_dtype: run the encoder passes under ``torch.autocast`` with this dtype (bf16 on CPU,
            fp16/bf16 on CUDA). The loss itself is computed on float32 copies of the representations.

    Returns:
        The (unscaled) loss, detached. Parameter ``.grad`` fields hold the accumulated gradient.
    """
    encode_passages = passage_encode_fn or encode_fn
    query_chunks = split_rows(queries, query_chunk_size)
    passage_chunks = split_rows(passages, passage_chunk_size)
    use_scaler = scaler is not None and scaler.is_enabled()

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(_first_device_type(queries), dtype=autocast_dtype)

    # 1. representations without autograd, remembering the RNG state before each chunk; the very last
    #    chunk keeps its graph instead (it is the one chunk whose activations would be alive next to
    #    nothing else), which saves its second forward: a quarter of one tower's replays at 4 chunks
    jobs: list[tuple[EncodeFn, dict[str, Any], RandState]] = []
    q_reps, p_reps = [], []
    no_sync = getattr(model, "no_sync", None)  # DDP decides at forward time whether a backward syncs
    with autocast():
        towers = ((encode_fn, query_chunks, q_reps, "query"), (encode_passages, passage_chunks, p_reps, "passage"))
        for fn, chunks, out, what in towers:
            for chunk in chunks:
                if what == "passage" and chunk is chunks[-1]:
                    with contextlib.nullcontext() if no_sync is None else no_sync():
                        kept = _check_reps(fn(chunk), chunk, what)
                    out.append(kept.detach())
                    continue
                state = RandState()
                with torch.no_grad():
                    out.append(_check_reps(fn(chunk), chunk, what))
                jobs.append((fn, chunk, state))

    # 2. loss on the whole batch; back-propagate to the representations only
    q_leaf = torch.cat(q_reps).float().requires_grad_()
    p_leaf = torch.cat(p_reps).float().requires_grad_()
    loss = loss_fn(q_leaf, p_leaf)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise ConfigError("loss_fn must return a scalar tensor computed from the representations it is given")
    (scaler.scale(loss) if use_scaler else loss).backward()
    grads = [leaf.grad if leaf.grad is not None else torch.zeros_like(leaf) for leaf in (q_leaf, p_leaf)]
    cached = list(grads[0].split([r.shape[0] for r in q_reps])) + list(
        grads[1].split([r.shape[0] for r in p_reps]))

    # 3. the kept chunk first (its graph is freed before any replay), then replay each other chunk with
    #    autograd and push its cached gradient into the parameters; with DDP only the last one syncs
    with contextlib.nullcontext() if no_sync is None else no_sync():
        kept.backward(gradient=cached.pop().to(kept.dtype))
    del kept
    for index, ((fn, chunk, state), grad) in enumerate(zip(jobs, cached)):
        last = index == len(jobs) - 1
        sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
        with sync, state.replay():
            with autocast():
                reps = fn(chunk)
            reps.backward(gradient=grad.to(reps.dtype))
    return loss.detach()
