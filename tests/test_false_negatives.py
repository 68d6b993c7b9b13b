"""In-batch false-negative masking: the mask itself on hand-made batches, masked InfoNCE against the loss
with the masked columns removed by hand, the collator's inputs, the retriever (one process and two gloo
processes), and gradient-cached training with masking against the full-batch step."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import AutoTokenizer, TrainerCallback

from densekit import distributed
from densekit.data.collator import RetrievalCollator
from densekit.data.data_args import DataArguments
from densekit.modeling.grad_cache import grad_cache_step
from densekit.modeling.losses import InfoNCELoss, KLDistillationLoss
from densekit.modeling.losses.false_negatives import NO_ROW, false_negative_mask, text_hash
from densekit.modeling.model_args import ModelArguments
from densekit.modeling.retriever import BiEncoderRetriever
from densekit.training import RetrievalTrainer, RetrievalTrainingArguments

T = 0.1


# --------------------------------------------------------------------------------------------- the mask
def test_mask_covers_judged_positives_and_copies_of_the_own_positive_only():
    # 3 queries, groups of 2 (positive, hard negative); columns 0..5
    label = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    rows = torch.tensor([10, 11, 20, 10, 30, 31])       # col 3 (q1's negative) is q0's positive row
    positives = torch.tensor([[10, NO_ROW], [20, 31], [30, NO_ROW]])  # q1 also judges row 31 (col 5)
    hashes = torch.tensor([1, 2, 3, 4, 5, 3])           # col 5 has q1's positive text under another id
    mask = false_negative_mask(label, rows, positives, hashes)
    expected = torch.zeros(3, 6, dtype=torch.bool)
    expected[0, 3] = True    # same row as q0's own positive, in another group
    expected[1, 5] = True    # judged positive of q1 (and same text as its positive)
    assert torch.equal(mask, expected)


def test_mask_never_masks_own_positives_nor_true_negatives_and_works_without_hashes_or_positive_rows():
    label = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    rows = torch.tensor([5, 6, 6, 7])
    mask = false_negative_mask(label, rows)  # q0's own positives: rows 5, 6; q1's: row 6 (col 2)
    assert mask.tolist() == [[False, False, True, False], [False, True, False, False]]
    only_text = false_negative_mask(label, passage_hash=torch.tensor([1, 2, 2, 9]))
    assert torch.equal(only_text, mask)


def test_unknown_rows_match_nothing():
    label = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    mask = false_negative_mask(label, torch.tensor([NO_ROW, NO_ROW, NO_ROW, NO_ROW]),
                               torch.tensor([[NO_ROW], [NO_ROW]]))
    assert not mask.any()


# --------------------------------------------------------------------------------------- masked InfoNCE
def infonce_removed_by_hand(logits, label, mask):
    """Per query: cross-entropy of its positive over the columns that are neither masked nor another
    positive of its own group, written with Python lists (the reference)."""
    n_queries, group = label.shape
    total = 0.0
    for i in range(n_queries):
        own = [i * group + g for g in range(group)]
        target = own[int(torch.argmax(label[i]))]
        keep = [j for j in range(logits.shape[1])
                if j == target or not (bool(mask[i, j]) or (j in own and label[i, own.index(j)] > 0))]
        scores = torch.stack([logits[i, j] / T for j in keep])
        total = total - (logits[i, target] / T - torch.logsumexp(scores, 0))
    return total / n_queries


def test_masked_infonce_equals_the_loss_with_masked_columns_removed():
    torch.manual_seed(0)
    logits = torch.randn(4, 12, requires_grad=True)
    label = torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0]])
    mask = torch.rand(4, 12) < 0.3
    mask[0, 0] = True  # a mask on the own positive is ignored
    value = InfoNCELoss(temperature=T)(logits, label, mask=mask)
    grad, = torch.autograd.grad(value, logits)
    reference_mask = mask.clone()
    reference_mask[0, 0] = False
    ref_logits = logits.detach().clone().requires_grad_()
    ref = infonce_removed_by_hand(ref_logits, label, reference_mask)
    ref_grad, = torch.autograd.grad(ref, ref_logits)
    assert abs(value.item() - ref.item()) < 1e-6
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    assert value.item() != pytest.approx(InfoNCELoss(temperature=T)(logits, label).item(), abs=1e-4)
    assert torch.all(grad[reference_mask & ~(torch.arange(12) == 0)[None]] == 0)


def test_infonce_with_an_all_false_mask_is_plain_infonce():
    logits, label = torch.randn(3, 6), torch.tensor([[1.0, 0]] * 3)
    plain = InfoNCELoss(temperature=T)(logits, label)
    assert torch.equal(InfoNCELoss(temperature=T)(logits, label, mask=torch.zeros(3, 6, dtype=torch.bool)), plain)


def test_losses_say_whether_they_take_a_mask():
    assert InfoNCELoss.accepts_mask and not KLDistillationLoss.accepts_mask


# ------------------------------------------------------------------------------------------- collator
@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_collator_passes_rows_hashes_and_padded_positive_rows(tokenizer):
    collate = RetrievalCollator(DataArguments(group_size=2), tokenizer)
    batch = collate([
        {"query": "a", "passage": ["x", "y"], "label": [1, 0], "passage_row": [3, 4], "positive_rows": [3, 8, 9]},
        {"query": "b", "passage": ["y", "z"], "label": [1, 0], "passage_row": [4, 5], "positive_rows": [4]},
    ])
    assert batch["positive_rows"].tolist() == [[3, 8, 9], [4, NO_ROW, NO_ROW]]
    assert batch["passage_hash"].shape == (2, 2) and batch["passage_hash"].dtype == torch.int64
    assert batch["passage_hash"][0, 1] == batch["passage_hash"][1, 0] == text_hash("y")
    assert batch["passage_hash"][0, 0] != batch["passage_hash"][1, 1]


# ----------------------------------------------------------------------------- retriever / grad cache
Q, G = 4, 2


def make_model(model_dir):
    return BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(model_dir), temperature=T)).train()


def make_batch(model_dir):
    """4 queries x (positive, negative). Query 2's positive (row 100) is also query 0's negative (a copy of
    another query's positive); query 1 judges row 300 (query 3's positive) relevant; query 3's negative has
    query 1's positive text under another row."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    queries = [f"question {i} about topic {i * 7}" for i in range(Q)]
    passages = ["answer zero", "shared passage", "answer one", "other words", "shared passage", "more words",
                "answer three", "answer one"]
    rows = torch.tensor([[0, 100], [1, 11], [100, 21], [300, 31]])
    positive_rows = torch.tensor([[0, NO_ROW], [1, 300], [100, NO_ROW], [300, NO_ROW]])
    hashes = torch.tensor([text_hash(p) for p in passages]).reshape(Q, G)
    label = torch.zeros(Q, G)
    label[:, 0] = 1
    tok = lambda texts: dict(tokenizer(texts, padding="max_length", max_length=12, return_tensors="pt"))
    return tok(queries), tok(passages), label, dict(passage_row=rows, positive_rows=positive_rows,
                                                     passage_hash=hashes)


def test_retriever_masks_the_batchs_false_negatives(tiny_model_dir):
    model = make_model(tiny_model_dir)
    queries, passages, label, extra = make_batch(tiny_model_dir)
    out = model(query=queries, passage=passages, label=label, **extra)
    expected = torch.zeros(Q, Q * G, dtype=torch.bool)
    # column 1 (row 100) stays a negative of query 0, whose hard negative it is
    expected[2, 1] = True  # row 100 at column 1 is query 2's positive
    expected[1, 6] = True  # row 300 is judged relevant to query 1
    expected[1, 7] = True  # query 1's positive text ("answer one") under row 31
    mask = false_negative_mask(label, extra["passage_row"].reshape(-1), extra["positive_rows"],
                               extra["passage_hash"].reshape(-1))
    assert torch.equal(mask, expected)
    reference = InfoNCELoss(temperature=T)(out.logits, label, mask=expected)
    assert torch.allclose(out.loss, reference, atol=1e-6)
    assert not torch.allclose(out.loss, model(query=queries, passage=passages, label=label).loss, atol=1e-5)


def grads_of(model):
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("loss", ["infonce", "multi_positive_infonce"])
def test_gradient_cached_step_with_masking_equals_the_full_batch_step(tiny_model_dir, loss):
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(tiny_model_dir),
                                                              temperature=T, loss=loss)).train()
    queries, passages, label, extra = make_batch(tiny_model_dir)
    if loss == "multi_positive_infonce":
        label[1, 1] = 1  # a second positive in one group
    full = model(query=queries, passage=passages, label=label, **extra).loss
    full.backward()
    reference = grads_of(model)
    cached = grad_cache_step(lambda c: model(query=c).query, queries, passages,
                             lambda q, p: model.compute_loss(q, p, label, **extra),
                             passage_encode_fn=lambda c: model(passage=c).passage,
                             query_chunk_size=3, passage_chunk_size=3, model=model)
    got = grads_of(model)
    assert abs(cached.item() - full.item()) < 1e-5
    assert got.keys() == reference.keys() and reference
    for name, grad in reference.items():
        assert torch.allclose(got[name], grad, atol=1e-5), name
    model(query=queries, passage=passages, label=label).loss.backward()  # unmasked: other gradients
    unmasked = grads_of(model)
    assert any(not torch.allclose(unmasked[n], reference[n], atol=1e-5) for n in reference)


# ------------------------------------------------------------------------------------ two processes
WORLD = 2


def ddp_worker(rank, model_dir, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        queries, passages, label, extra = make_batch(model_dir)
        half = Q // WORLD
        mine = lambda d, per: {k: v[rank * half * per:(rank + 1) * half * per] for k, v in d.items()}
        ddp = torch.nn.parallel.DistributedDataParallel(make_model(model_dir), find_unused_parameters=True)
        local_extra = {k: v[rank * half:(rank + 1) * half] for k, v in extra.items()}
        loss = ddp(query=mine(queries, 1), passage=mine(passages, G), label=label[rank * half:(rank + 1) * half],
                   **local_extra).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in ddp.module.named_parameters() if p.grad is not None}
        torch.save({"loss": float(loss.detach()), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_masked_loss_and_gradients_equal_one_process(tiny_model_dir, tmp_path):
    import torch._dynamo  # noqa: F401  (imported before fork so children do not re-import it)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.start_processes(ddp_worker, args=(str(tiny_model_dir), str(tmp_path / "init"), str(tmp_path)),
                           nprocs=WORLD, join=True, start_method="fork")
        model = make_model(tiny_model_dir)
        queries, passages, label, extra = make_batch(tiny_model_dir)
        ref = model(query=queries, passage=passages, label=label, **extra).loss
        ref.backward()
        reference = grads_of(model)
        unmasked = model(query=queries, passage=passages, label=label).loss.item()
    finally:
        torch.set_num_threads(before)
    assert not distributed.is_distributed()
    assert abs(unmasked - ref.item()) > 1e-4  # the batch really has false negatives across ranks
    for rank in range(WORLD):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert abs(out["loss"] / WORLD - ref.item()) < 1e-5
        for name, grad in reference.items():
            error = float((out["grads"][name] - grad).abs().max())
            assert error <= 1e-5 * max(1.0, float(grad.abs().max())), (name, error)


# ------------------------------------------------------------------------------------------ trainer
class CaptureGrads(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def shared_positive_examples():
    """Queries 0 and 1 share their positive (row 7); query 2's negative is query 0's positive."""
    return [{"query": "what is a cat", "passage": ["cats purr", "dogs bark"], "label": [1, 0],
             "passage_row": [7, 1], "positive_rows": [7]},
            {"query": "tell me about cats", "passage": ["cats purr", "rain falls"], "label": [1, 0],
             "passage_row": [7, 2], "positive_rows": [7]},
            {"query": "what is bread", "passage": ["bread is baked", "cats purr"], "label": [1, 0],
             "passage_row": [3, 7], "positive_rows": [3]},
            {"query": "what is chess", "passage": ["chess has kings", "sun shines"], "label": [1, 0],
             "passage_row": [4, 5], "positive_rows": [4]}]


def train_once(model_dir, tmp_path, **args):
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    # temperature 1: this untrained model's scores are close, so the masked copies weigh in the softmax
    model = BiEncoderRetriever.from_model_args(ModelArguments(model_name_or_path=str(model_dir), temperature=1.0))
    collator = RetrievalCollator(DataArguments(group_size=G, query_max_len=12, passage_max_len=12), tokenizer)
    train_args = RetrievalTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                                            max_steps=1, save_strategy="no", disable_tqdm=True, max_grad_norm=0,
                                            dataloader_pin_memory=False, **args)
    trainer = RetrievalTrainer(args=train_args, model=model, tokenizer=tokenizer, data_collator=collator,
                               train_dataset=shared_positive_examples())
    capture = CaptureGrads()
    trainer.add_callback(capture)
    return trainer.train().training_loss, capture.grads, trainer


def test_trainer_masks_by_default_in_the_plain_and_the_cached_step_alike(tiny_model_dir, tmp_path):
    plain_loss, plain, trainer = train_once(tiny_model_dir, tmp_path)
    batch = trainer.data_collator(shared_positive_examples())
    assert set(trainer._model_inputs(batch)) >= {"passage_row", "positive_rows", "passage_hash"}
    cached_loss, cached, _ = train_once(tiny_model_dir, tmp_path, grad_cache=True, query_chunk_size=3,
                                        passage_chunk_size=3)
    assert cached_loss == pytest.approx(plain_loss, abs=1e-5)
    for name, grad in plain.items():
        assert torch.allclose(cached[name], grad, atol=1e-5), name
    off_loss, _, off = train_once(tiny_model_dir, tmp_path, mask_false_negatives=False)
    assert not set(off._model_inputs(batch)) & {"passage_row", "positive_rows", "passage_hash"}
    assert off_loss > plain_loss + 1e-3  # the shared positive is a negative again
