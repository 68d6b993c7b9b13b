"""The extractive reader of DPR / GC-DPR: read the retriever's top passages, pick one, extract the answer span.

Modules, one idea each:

- :mod:`~densekit.reader.results`: DPR's retriever results JSON (``[{question, answers, ctxs}]``), read and checked;
- :mod:`~densekit.reader.preprocess`: tokenisation, answer-span location and positive/negative selection,
  cached in JSON keyed by input, tokenizer and settings;
- :mod:`~densekit.reader.model`: the encoder with span and passage-selection heads, in ``transformers.DPRReader``'s
  layout;
- :mod:`~densekit.reader.loss`: DPR's reader objective (passage selection + marginal span likelihood);
- :mod:`~densekit.reader.spans`: best-span decoding under passage boundaries and a length limit;
- :mod:`~densekit.reader.training`: batches and the ``transformers.Trainer`` that trains it;
- :mod:`~densekit.reader.predict`: predictions per top-k setting, Exact Match, report.

``densekit reader train`` / ``densekit reader predict`` (:mod:`densekit.cli.reader`) wire them together.
"""
