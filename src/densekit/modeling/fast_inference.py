"""Exact, faster CPU inference for BERT-family encoders: split a batch into length-trimmed chunks and run
the chunks concurrently, one single-threaded forward per CPU thread, on the Hugging Face module itself.

Why this and not something else (measured on the 2-core AVX2 CPU, MiniLM-L6, batch 32 x 256 tokens):

- torch's fused encoder (``torch._transformer_encoder_layer_fwd``, padded or nested tensors) was 1.4-1.7x
  *slower* than HF's ``sdpa`` path: its CPU attention is bmm + masked softmax, and nested-tensor linears
  run row by row; HF ``eager`` attention was 1.7x slower; oneDNN linears (plain, or fused with GELU or
  the residual add) and MKL packed weights were no faster than the default MKL ``addmm``.
- What does help is *how* the two cores are used: half the batch per thread with one intra-op thread each
  (:mod:`densekit.modeling.cpu_workers` says why), and trimming each chunk to its own longest row, which
  also drops padding the full batch carried.

Every row is computed by the unmodified HF forward (same weights, same kernels), only on a smaller,
right-trimmed batch, so results equal the normal path to float rounding (~1e-7). Nothing is converted or
cached, so weights can never be stale after training steps. Left-padded batches are chunked but not
trimmed (trimming would shift their positions).

This module also holds :func:`cpu_tricks_apply`, the one place that decides whether densekit's CPU-only
speed-ups are used for a model (this forward, seeded dropout, the gradient cache's CPU workers): they are
measured wins on CPU cores and would be losses on a GPU, where torch's fused kernels are faster.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from densekit.modeling.cpu_workers import map_on_workers

# Architectures whose outputs for real tokens do not depend on trailing padding columns (absolute
# positions counted from the start; RoBERTa derives them from non-pad ids). Tested in
# tests/test_modeling_fast_inference.py.
SUPPORTED_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta"})
# T5-family encoders qualify too: their positions are relative (a bias from the query-key distance) and
# padded keys are masked, so trimming trailing padding changes nothing for real tokens. Measured on the 2-core
# CPU, shared (load ~10; 6 layers x 384, batch 32 x 20-256 tokens, mean pooling): 4.6-5.3 s vs 11.9-12.1 s for
# the plain forward, which attends over the full padded width with T5's float position-bias mask. Tested in
# tests/test_modeling_t5.py.
T5_MODEL_TYPES = frozenset({"t5", "mt5", "umt5"})
FAST_MODEL_TYPES = SUPPORTED_MODEL_TYPES | T5_MODEL_TYPES

# Rows per chunk: small enough to balance two workers and trim padding, large enough for efficient GEMMs.
ROWS_PER_CHUNK = 16

Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def model_device_types(model: torch.nn.Module) -> set[str]:
    """The device types (``cpu``, ``cuda``, ``meta`` ...) of ``model``'s parameters."""
    return {parameter.device.type for parameter in model.parameters()}


def cpu_tricks_apply(model: torch.nn.Module) -> bool:
    """Whether densekit's CPU-only speed-ups are for ``model``: True when all its parameters are on the CPU.

    The speed-ups: seeded dropout (masks from a numba kernel on the CPU, and explicit attention softmax
    instead of fused SDPA when attention dropout is seeded), the gradient cache's chunks on CPU worker
    threads, and the chunked parallel forward of this module. On a GPU each would be slower than what
    torch does there (masks made on the CPU and copied over, SDPA's fused kernels lost, threads queueing
    on one device), so callers keep torch's dropout, SDPA attention, and one chunk at a time. Decided from
    where the model *is* when it runs, since trainers move models after they are built. The one place
    this is decided: the trainer, the gradient cache and fast inference all ask here.
    """
    return model_device_types(model) == {"cpu"}


def _is_right_padded(attention_mask: torch.Tensor, lengths: torch.Tensor) -> bool:
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return bool(torch.equal(attention_mask.bool(), positions.unsqueeze(0) < lengths.unsqueeze(1)))


class ChunkedParallelForward:
    """Run a HF encoder on length-sorted, trimmed chunks of a batch, concurrently, and pool each chunk.

    Call with ``(input_ids, attention_mask, reduce, **token_inputs)``: ``reduce(hidden, mask) -> [b, d]``
    turns a chunk's last hidden states into embeddings (pooling and normalization); extra inputs such
    as ``token_type_ids`` must be ``[B, T]`` tensors and are split the same way. Returns ``[B, d]`` in the
    batch's row order. Falls back to one plain forward when splitting cannot help or might not be exact
    (one intra-op thread, one row, inputs or model not on the CPU, autocast on, extra inputs of other shapes).
    """

    def __init__(self, model: torch.nn.Module, rows_per_chunk: int = ROWS_PER_CHUNK) -> None:
        self.model = model
        self.rows_per_chunk = rows_per_chunk

    def _forward(self, inputs: dict[str, torch.Tensor], reduce: Reduce) -> torch.Tensor:
        hidden = self.model(**inputs).last_hidden_state
        return reduce(hidden, inputs["attention_mask"])

    def _splittable(self, input_ids: torch.Tensor, inputs: dict[str, Any]) -> bool:
        return (
            input_ids.dim() == 2 and input_ids.size(0) > 1 and input_ids.device.type == "cpu"
            and cpu_tricks_apply(self.model) and torch.get_num_threads() > 1
            and not torch.is_autocast_enabled("cpu")
            and all(isinstance(v, torch.Tensor) and v.shape == input_ids.shape for v in inputs.values())
        )

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, reduce: Reduce,
                 **token_inputs: Any) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **token_inputs}
        if not self._splittable(input_ids, token_inputs):
            return self._forward(inputs, reduce)
        threads = torch.get_num_threads()
        rows = input_ids.size(0)
        workers = min(threads, rows)
        per_worker = max(1, threads // workers)
        n_chunks = max(workers, math.ceil(rows / self.rows_per_chunk))
        n_chunks = min(rows, workers * math.ceil(n_chunks / workers))
        lengths = attention_mask.sum(dim=1)
        trim = _is_right_padded(attention_mask, lengths)
        order = torch.argsort(-lengths, stable=True)
        chunks = list(torch.tensor_split(order, n_chunks))

        def run(index: torch.Tensor) -> torch.Tensor:
            width = int(lengths[index].max()) if trim else input_ids.size(1)
            part = {key: value[index, :max(width, 1)] for key, value in inputs.items()}
            with torch.inference_mode():
                return self._forward(part, reduce)

        results = map_on_workers(run, chunks, workers, threads_per_worker=per_worker)
        out = torch.empty((rows, *results[0].shape[1:]), dtype=results[0].dtype, device=results[0].device)
        out[torch.cat(chunks)] = torch.cat(results)
        return out


def accelerate_for_inference(hf_model: torch.nn.Module) -> Optional[ChunkedParallelForward]:
    """The fast inference callable for ``hf_model``, or ``None`` when its architecture is not supported or it
    is not on the CPU (:func:`cpu_tricks_apply`; then the caller runs the model as usual). Use only for
    inference: the chunks run without autograd."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type not in FAST_MODEL_TYPES or not cpu_tricks_apply(hf_model):
        return None
    return ChunkedParallelForward(hf_model)
