"""Small BEIR-layout collections written into a temporary folder for tests."""
from __future__ import annotations

import json
from pathlib import Path

TOPICS = {
    "cats": "cats are small domesticated felines that purr and hunt mice",
    "dogs": "dogs are loyal canines that bark and fetch sticks",
    "rain": "rain is liquid water falling from clouds in the sky",
    "sun": "the sun is the star at the centre of the solar system",
    "bread": "bread is baked from flour water yeast and salt",
    "chess": "chess is a board game for two players with kings and queens",
}


def write_beir(folder: Path, *, graded: bool = False, split: str = "test") -> Path:
    """A tiny collection: 3 documents per topic, a query per topic, judgments (0/1/2 when graded)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as handle:
        for topic, text in TOPICS.items():
            for n in range(3):
                handle.write(json.dumps({"_id": f"{topic}-{n}", "title": f"{topic} {n}",
                                         "text": f"{text} (part {n})"}) + "\n")
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as handle:
        for topic in TOPICS:
            handle.write(json.dumps({"_id": f"q-{topic}", "text": f"what are {topic}?"}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    with open(folder / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for topic in TOPICS:
            handle.write(f"q-{topic}\t{topic}-0\t{2 if graded else 1}\n")
            handle.write(f"q-{topic}\t{topic}-1\t1\n")
            if graded:
                handle.write(f"q-{topic}\t{topic}-2\t0\n")
    return folder
