"""BiEncoderRetriever under torch.distributed (2 gloo processes, forked): the gathered loss and the
DDP-averaged gradients equal one process's loss and gradients on the concatenated batch, for the plain
forward and for the gradient-cached step the trainer runs; with one shared encoder and with untied query
and passage towers."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoTokenizer

from densekit import distributed
from densekit.modeling.grad_cache import grad_cache_step
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever

WORLD, Q, G = 2, 4, 2


def make_batch(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    queries = [f"question {i} about topic {i * 7}" for i in range(Q)]
    passages = [f"answer {i} variant {g} words {i + g}" for i in range(Q) for g in range(G)]
    label = torch.zeros(Q, G)
    label[:, 0] = 1
    return (dict(tokenizer(queries, padding="max_length", max_length=16, return_tensors="pt")),
            dict(tokenizer(passages, padding="max_length", max_length=16, return_tensors="pt")), label)


def make_model(model_dir, untied=False):
    return BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=model_dir, temperature=0.1,
                                                             untie_encoder=untied)).train()


def rows(inputs, start, stop):
    return {k: v[start:stop] for k, v in inputs.items()}


def worker(rank, model_dir, init_file, out_dir, untied):
    torch.set_num_threads(1)  # first: a forked child must not touch the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        queries, passages, label = make_batch(model_dir)
        half = Q // WORLD
        my_q = rows(queries, rank * half, (rank + 1) * half)
        my_p = rows(passages, rank * half * G, (rank + 1) * half * G)
        my_label = label[rank * half:(rank + 1) * half]

        # plain forward in DDP: loss already x world_size, DDP averages the gradients. BERT's pooler is
        # not used by the encoder, so DDP must look for unused parameters (the Trainer's default for a
        # model that is not a PreTrainedModel); without it the reduction silently never runs.
        ddp = torch.nn.parallel.DistributedDataParallel(make_model(model_dir, untied), find_unused_parameters=True)
        loss = ddp(query=my_q, passage=my_p, label=my_label).loss
        loss.backward()
        plain = {n: p.grad.clone() for n, p in ddp.module.named_parameters() if p.grad is not None}

        # the trainer's gradient-cached step: encode through DDP, retriever.compute_loss on the reps
        ddp2 = torch.nn.parallel.DistributedDataParallel(make_model(model_dir, untied), find_unused_parameters=True)
        inner = ddp2.module
        cached_loss = grad_cache_step(lambda c: ddp2(query=c).query, my_q, my_p,
                                      lambda q, p: inner.compute_loss(q, p, my_label),
                                      passage_encode_fn=lambda c: ddp2(passage=c).passage,
                                      query_chunk_size=1, passage_chunk_size=3, model=ddp2)
        cached = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}
        torch.save({"loss": float(loss.detach()), "cached_loss": float(cached_loss), "plain": plain,
                    "cached": cached}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("untied", [False, True], ids=["shared", "untied"])
def test_two_process_retriever_loss_and_gradients_equal_one_process_full_batch(tiny_model_dir, tmp_path, untied):
    import torch._dynamo  # noqa: F401  (imported before fork so children do not re-import it)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.start_processes(worker, args=(str(tiny_model_dir), str(tmp_path / "init"), str(tmp_path), untied),
                           nprocs=WORLD, join=True, start_method="fork")
        model = make_model(str(tiny_model_dir), untied)
        queries, passages, label = make_batch(str(tiny_model_dir))
        ref_loss = model(query=queries, passage=passages, label=label).loss
        ref_loss.backward()
        reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    finally:
        torch.set_num_threads(before)
    assert not distributed.is_distributed()
    assert any(float(g.abs().sum()) > 0 for g in reference.values())
    if untied:  # both towers get gradients, under their own names
        assert any(n.startswith("encoder.query_encoder.") for n in reference)
        assert any(n.startswith("encoder.passage_encoder.") for n in reference)
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        # the loss each rank back-propagates is world_size x the effective (full-batch) loss
        assert abs(out["loss"] / WORLD - float(ref_loss.detach())) < 1e-5
        assert abs(out["cached_loss"] / WORLD - float(ref_loss.detach())) < 1e-5
        for kind in ("plain", "cached"):
            assert out[kind].keys() == reference.keys()
            for name, grad in reference.items():
                # float32 sums in another order: compare relative to the gradient's scale
                error = float((out[kind][name] - grad).abs().max())
                assert error <= 1e-5 * max(1.0, float(grad.abs().max())), (kind, name, error)
