"""Seed 001 (Trove's training guide) run as written with ``trove`` -> ``densekit``, on the bundled MiniLM and
a slice of SciFact: the slow counterpart of the tiny-model tests in test_training_trainer.py and
test_data_binary_dataset.py.

Only the model name (all-MiniLM-L6-v2 instead of facebook/contriever, ``normalize=True`` as MiniLM is
trained), the sizes (group_size, max lengths, steps) and the training arguments the guide leaves as
``...`` are changed. The guide's "Workflow" and "IR Metrics During Training" sections are run as one
training run: the second section's train_args replace the first's, "most of the above code remains the same".
"""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration

N_TRAIN_QUERIES = 40
N_DEV_QUERIES = 8
N_OTHER_DOCS = 200
N_TRAIN_NEGATIVES = 15  # score-0 judgments per train query: SciFact's train qrels only hold positives
N_MINED_NEGATIVES = 20  # "mined" dev negatives per dev query, written with a retrieval score


def read_qrels(path) -> dict[str, dict[str, str]]:
    """query id -> {doc id: score} in file order (the header line skipped)."""
    qrels: dict[str, dict[str, str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = score
    return qrels


def write_scifact_slice(scifact, folder) -> dict:
    """The first train and dev queries of SciFact with their positives plus N_OTHER_DOCS other documents,
    under the file names the guide uses: corpus.jsonl, queries.jsonl, train_qrel.tsv (positives of score 1
    and sampled unjudged documents of score 0), dev_qrel_positives.tsv and dev_mined_negs.tsv."""
    train = dict(list(read_qrels(scifact / "qrels" / "train.tsv").items())[:N_TRAIN_QUERIES])
    dev = dict(list(read_qrels(scifact / "qrels" / "dev.tsv").items())[:N_DEV_QUERIES])
    judged = {did for qrels in (train, dev) for docs in qrels.values() for did in docs}
    docs, others = [], []
    for line in (scifact / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc_id = json.loads(line)["_id"]
        if doc_id in judged:
            docs.append(line)
        elif len(others) < N_OTHER_DOCS:
            docs.append(line)
            others.append(doc_id)
    (folder / "corpus.jsonl").write_text("\n".join(docs) + "\n", encoding="utf-8")
    queries = [line for line in (scifact / "queries.jsonl").read_text(encoding="utf-8").splitlines()
               if json.loads(line)["_id"] in train.keys() | dev.keys()]
    (folder / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")

    rnd = random.Random(0)
    header = "query-id\tcorpus-id\tscore\n"
    with open(folder / "train_qrel.tsv", "w", encoding="utf-8") as handle:
        handle.write(header)
        for qid, positives in train.items():
            handle.writelines(f"{qid}\t{did}\t{score}\n" for did, score in positives.items())
            handle.writelines(f"{qid}\t{did}\t0\n" for did in rnd.sample(others, N_TRAIN_NEGATIVES))
    with open(folder / "dev_qrel_positives.tsv", "w", encoding="utf-8") as pos, \
            open(folder / "dev_mined_negs.tsv", "w", encoding="utf-8") as neg:
        pos.write(header)
        neg.write(header)
        for qid, positives in dev.items():
            pos.writelines(f"{qid}\t{did}\t{score}\n" for did, score in positives.items())
            # a miner writes its retrieval score; score_transform=0 turns these into label 0
            neg.writelines(f"{qid}\t{did}\t{N_MINED_NEGATIVES - rank}.5\n"
                           for rank, did in enumerate(rnd.sample(others, N_MINED_NEGATIVES)))
    assert not judged & set(others)
    return {"train": train, "dev": dev}


@pytest.fixture()
def one_thread():
    """The autouse one-thread fixture skips integration tests; this one shares the 2-core machine too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_seed_001_training_guide_runs_as_written_on_minilm_and_scifact(scifact_dir, minilm_dir, tmp_path,
                                                                       monkeypatch, one_thread):
    sliced = write_scifact_slice(scifact_dir, tmp_path)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)

    # --- seed block: RetrievalTrainingArguments (with the "IR Metrics During Training" changes)
    from densekit import RetrievalTrainingArguments
    train_args = RetrievalTrainingArguments(
        output_dir="./my_model", learning_rate=1e-5,
        per_device_train_batch_size=4, per_device_eval_batch_size=N_DEV_QUERIES, num_train_epochs=1,
        logging_steps=1, save_strategy="no", seed=0, disable_tqdm=True, dataloader_pin_memory=False,
        batch_eval_metrics=True,
        label_names=["label"],
        eval_strategy="steps",
        eval_steps=N_TRAIN_QUERIES // 4,  # once, after the last step
    )
    # --- seed block: ModelArguments
    from densekit import ModelArguments
    model_args = ModelArguments(
        model_name_or_path=minilm_dir,
        encoder_class="default",
        pooling="mean",
        normalize=True,
        loss="infonce"
    )
    # --- seed block: BiEncoderRetriever
    from densekit import BiEncoderRetriever
    model = BiEncoderRetriever.from_model_args(args=model_args)
    # --- seed block: DataArguments
    from densekit import DataArguments
    data_args = DataArguments(
        dataset_name="msmarco",
        group_size=4,
        query_max_len=32,
        passage_max_len=64
    )
    # --- seed block: MaterializedQRelConfig
    from densekit import MaterializedQRelConfig
    pos_conf = MaterializedQRelConfig(
        qrel_path="train_qrel.tsv",
        corpus_path="corpus.jsonl",
        query_path="queries.jsonl",
        min_score=1,
    )
    neg_conf = MaterializedQRelConfig(
        qrel_path="train_qrel.tsv",
        corpus_path="corpus.jsonl",
        query_path="queries.jsonl",
        max_score=1,
    )
    # --- seed block: BinaryDataset
    from densekit import BinaryDataset
    dataset = BinaryDataset(
        data_args=data_args,
        positive_configs=pos_conf,
        negative_configs=neg_conf,
        format_query=model.format_query,
        format_passage=model.format_passage,
    )
    # --- seed block: RetrievalCollator
    from transformers import AutoTokenizer
    from densekit import RetrievalCollator
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    tokenizer.pad_token_id = tokenizer.eos_token_id
    tokenizer.padding_side = "right"
    data_collator = RetrievalCollator(
        data_args=data_args,
        tokenizer=tokenizer,
        append_eos=model.append_eos_token,
    )
    # --- seed block: eval dataset (mined negatives variant)
    eval_mqrel = [
        MaterializedQRelConfig(
            qrel_path="dev_qrel_positives.tsv",
            corpus_path="corpus.jsonl",
            query_path="queries.jsonl",
            score_transform=1
        ),
        MaterializedQRelConfig(
            qrel_path="dev_mined_negs.tsv",
            corpus_path="corpus.jsonl",
            query_path="queries.jsonl",
            score_transform=0
        )
    ]
    # --- seed block: MultiLevelDataset for evaluation
    from densekit import MultiLevelDataset
    arg_overrides = {"group_size": 32, "passage_selection_strategy": "most_relevant"}  # the guide: 100
    eval_dataset = MultiLevelDataset(
        data_args=data_args,
        format_query=model.format_query,
        format_passage=model.format_passage,
        qrel_config=eval_mqrel,
        data_args_overrides=arg_overrides,
        num_proc=8,
    )
    # --- seed block: IRMetrics
    from densekit import IRMetrics
    # k_values are cutoff values for IR metrics
    metric_callback = IRMetrics(k_values=[10, 100])

    # --- checks before training: the data is what the slice says, and a fixed batch's loss to compare with
    assert len(dataset) == N_TRAIN_QUERIES and len(eval_dataset) == N_DEV_QUERIES
    for i in (0, N_TRAIN_QUERIES - 1):
        item = dataset[i]
        group = [did for did, _ in dataset.select_group(i)]
        assert item["label"] == [1.0, 0.0, 0.0, 0.0] and len(item["passage"]) == 4
        assert group[0] in sliced["train"][item["query_id"]] and not set(group[1:]) & set(sliced["train"][item["query_id"]])
    eval_item = eval_dataset[0]
    assert len(eval_item["passage"]) == 32 and eval_item["label"][0] == 1.0 and set(eval_item["label"]) == {0.0, 1.0}
    fixed_batch = data_collator([dataset[i] for i in range(8)])
    assert fixed_batch["query"]["input_ids"].shape[1] <= 32 and fixed_batch["passage"]["input_ids"].shape[1] <= 64
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.eval()
    with torch.no_grad():
        loss_before = model(**fixed_batch).loss.item()

    # --- seed block: RetrievalTrainer
    from densekit import RetrievalTrainer
    trainer = RetrievalTrainer(
        args=train_args,
        model=model,
        tokenizer=tokenizer,
        data_collator=data_collator,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        compute_metrics=metric_callback,
    )
    result = trainer.train(ignore_keys_for_eval=["query", "passage"])
    trainer.save_model()

    # --- training happened and helped on the data it saw
    steps = N_TRAIN_QUERIES // 4
    step_losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert result.global_step == steps and len(step_losses) == steps
    assert math.isfinite(result.training_loss) and all(math.isfinite(v) for v in step_losses)
    unchanged = {name for name, p in model.named_parameters() if torch.equal(before[name], p.detach())}
    assert unchanged <= {"encoder.model.pooler.dense.weight", "encoder.model.pooler.dense.bias"}, unchanged
    assert len(before) - len(unchanged) >= 100  # every weight mean pooling uses was trained, none frozen
    model.eval()
    with torch.no_grad():
        loss_after = model(**fixed_batch).loss.item()
    assert loss_after < loss_before, (loss_before, loss_after)

    # --- the IR-metrics block: one eval after the last step, every metric a fraction, MiniLM far above chance
    evals = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert len(evals) == 1 and evals[0]["step"] == steps
    metrics = {key[len("eval_"):]: value for key, value in evals[0].items()
               if key.startswith("eval_") and key.split("_", 1)[1].split("@")[0] in ("nDCG", "Recall", "MRR")}
    assert set(metrics) == {f"{m}@{k}" for m in ("nDCG", "Recall", "MRR") for k in (10, 100)}, evals[0]
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    assert metrics["Recall@100"] == pytest.approx(1.0)  # each group holds all its ~21 distinct docs
    assert metrics["nDCG@10"] > 0.6, metrics  # positives vs random SciFact abstracts: chance is ~0.3
    assert metric_callback.last_counts == {"evaluated": N_DEV_QUERIES, "without_relevant": 0}

    # --- the saved checkpoint reloads (densekit's reload path and the guide's from_model_args) to the same model
    # Inputs tokenized by the guide's collator, as in training.
    q_inputs, p_inputs = fixed_batch["query"], fixed_batch["passage"]
    assert (tmp_path / "my_model" / "model.safetensors").is_file()
    assert (tmp_path / "my_model" / "densekit_config.json").is_file()
    reloaded = {
        "from_pretrained": BiEncoderRetriever.from_pretrained("./my_model"),
        "from_model_args": BiEncoderRetriever.from_model_args(args=ModelArguments(
            model_name_or_path="./my_model", encoder_class="default", pooling="mean", normalize=True,
            loss="infonce")),
    }
    with torch.no_grad():
        expected_q, expected_p = model.encode_query(q_inputs), model.encode_passage(p_inputs)
        assert torch.allclose(expected_q.norm(dim=-1), torch.ones(8), atol=1e-5)  # normalize=True held
        for how, other in reloaded.items():
            other.eval()
            assert other.encoder.pooling == "mean" and other.encoder.normalize is True, how
            assert torch.allclose(other.encode_query(q_inputs), expected_q, atol=1e-5), how
            assert torch.allclose(other.encode_passage(p_inputs), expected_p, atol=1e-5), how
        original = BiEncoderRetriever.from_model_args(args=model_args).eval()
        assert not torch.allclose(original.encode_passage(p_inputs), expected_p, atol=1e-5)
    assert np.isfinite(expected_p.numpy()).all()

    # The guide sets `tokenizer.pad_token_id = tokenizer.eos_token_id`, None for MiniLM's BERT tokenizer;
    # the checkpoint must still pad, so it loads in sentence-transformers with the same embeddings.
    from sentence_transformers import SentenceTransformer

    texts = ["dense retrieval with a bi-encoder", "a much longer passage about vitamin D and bone density"]
    st_embs = SentenceTransformer(str(tmp_path / "my_model"), device="cpu").encode(texts, convert_to_tensor=True)
    ours = BiEncoderRetriever.from_pretrained("./my_model").eval()
    with torch.no_grad():
        saved_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "my_model"))
        batch = saved_tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        assert torch.allclose(ours.encode_passage(dict(batch)), st_embs, atol=1e-5)
