"""``densekit encode``: embed a corpus or query file (or one shard of it) into a folder a later search reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from densekit.cli.arguments import parse_dataclasses
from densekit.data.data_args import DataArguments
from densekit.errors import ConfigError
from densekit.modeling.model_args import ModelArguments


@dataclass
class EncodeArguments:
    input_path: str = field(metadata={"help": "corpus or query file (BEIR jsonl, TSV, .gz)"})
    output_dir: str = field(metadata={"help": "embedding folder to write (resumes if interrupted)"})
    kind: str = field(default="passage", metadata={"help": "passage (corpus) or query"})
    shard_id: int = field(default=0, metadata={"help": "this job's shard, GC-DPR style"})
    num_shards: int = field(default=1, metadata={"help": "number of independent shard jobs"})
    batch_size: int = field(default=64, metadata={"help": "texts per forward pass"})
    block_size: int = field(default=16_384, metadata={"help": "texts per atomically written block"})
    store_cache_dir: Optional[str] = field(default=None, metadata={"help": "keep Arrow copies of text files here"})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cpu)"})


def run(argv) -> int:
    from transformers import AutoTokenizer

    from densekit.data.store import load_store
    from densekit.evaluation.embedding_files import encode_to_folder
    from densekit.modeling.retriever import BiEncoderRetriever

    model_args, data_args, args = parse_dataclasses((ModelArguments, DataArguments, EncodeArguments), argv,
                                                    prog="densekit encode")
    if args.kind not in ("passage", "query"):
        raise ConfigError(f"--kind must be 'passage' or 'query', got {args.kind!r}.")
    store = load_store([args.input_path], kind="corpus" if args.kind == "passage" else "queries",
                       cache_dir=args.store_cache_dir)
    model = BiEncoderRetriever.from_model_args(args=model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_path,
                                              trust_remote_code=model_args.trust_remote_code)
    max_len = data_args.passage_max_len if args.kind == "passage" else data_args.query_max_len
    encode_to_folder(model, tokenizer, store, args.kind, args.output_dir, shard_id=args.shard_id,
                     num_shards=args.num_shards, batch_size=args.batch_size, max_len=max_len,
                     block_size=args.block_size, dataset_name=data_args.dataset_name, device=args.device)
    return 0
