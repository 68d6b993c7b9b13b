"""A small retrieval collection built offline from the docstrings of the Python standard library.

``densekit demo`` has to evaluate a real encoder on a real task without downloading anything. Every
Python installation already carries thousands of paragraphs of carefully written English about
well-defined objects: the docstrings of its standard library. This module turns them into a BEIR-style
collection, deterministically, in about a second:

* **corpus** - one document per docstring paragraph of a fixed list of public stdlib functions,
  classes, methods and properties (``_id`` = dotted name, ``"json.dumps#2"`` for the paragraph at
  index 2 of that docstring, ``title`` = dotted name, ``text`` = the whitespace-normalized paragraph).
  Paragraphs under 8 words and doctest examples are skipped; identical texts are kept once.
* **queries** - for a seeded sample of objects, the first sentence of the docstring (its summary line)
  with the words of the object's own name removed, so the query cannot be answered by matching the
  title. That object's whole first paragraph is removed from the corpus, so the query is never in the
  corpus verbatim (queries still found verbatim in some other document are dropped).
* **training split** - the objects not sampled (except methods sharing a name with a test object in the
  same module, and objects sharing a judged document with a test query) give training queries and ``qrels/train.tsv`` the same way; their first paragraphs are
  left out of the corpus too, so no query of either split is in the corpus verbatim.
* **judgments** - relevance 2 for the object's remaining paragraphs (the rest of the same docstring:
  details, arguments, caveats of what the summary announces); relevance 1, for a method or property,
  for the paragraphs of the same-named method of another class in the same module (``io.BufferedReader.seek``
  for ``io.TextIOWrapper.seek``): the same operation on a kindred type, which answers the query in part.

The task therefore measures whether a retriever connects a one-line summary to the longer
explanation that follows it in the same docstring: related vocabulary, rarely the same sentence.
Docstrings differ between Python versions, so the cache key holds the full Python version; the same
Python version always produces byte-identical files.
"""
from __future__ import annotations

import builtins
import importlib
import inspect
import json
import os
import random
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Only the standard library at module level: this file also runs as a script in a bare interpreter.

#: Modules whose public objects are documented. Only pure, platform-independent modules present in
#: every CPython 3.10-3.13 build (no optional C libraries such as sqlite3, zlib, ssl; no winreg, msvcrt,
#: posix-only modules; nothing removed by PEP 594).
DEMO_MODULES: tuple[str, ...] = (
    "abc", "argparse", "array", "ast", "asyncio.locks", "asyncio.queues", "asyncio.tasks", "base64", "bdb",
    "binascii", "bisect", "builtins", "calendar", "cmath", "cmd", "code", "codecs", "codeop", "collections",
    "collections.abc", "colorsys", "concurrent.futures", "configparser", "contextlib", "contextvars", "copy",
    "copyreg", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest", "email.generator",
    "email.headerregistry", "email.message", "email.parser", "email.policy", "email.utils", "enum",
    "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib",
    "heapq", "hmac", "html", "html.parser", "http.client", "http.cookiejar", "http.cookies", "http.server",
    "inspect", "io", "ipaddress", "itertools", "json", "keyword", "linecache", "logging", "logging.handlers",
    "mailbox", "math", "mimetypes", "netrc", "numbers", "operator", "optparse", "pathlib", "pickle",
    "plistlib", "pprint", "pstats", "queue", "quopri", "random", "re", "reprlib", "sched", "secrets",
    "shelve", "shlex", "smtplib", "stat", "statistics", "string", "struct", "symtable", "tarfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest",
    "unittest.mock", "urllib.parse", "urllib.robotparser", "uuid", "warnings", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "xml.sax.handler", "xml.sax.saxutils", "zipfile", "zoneinfo",
)

#: Documents shorter than this many words carry too little to retrieve or to be judged by.
MIN_WORDS = 8
#: Queries keep at least this many words once the object's name words are removed.
MIN_QUERY_WORDS = 4
#: How many objects are sampled as queries (a few are dropped afterwards, see the module docstring).
QUERY_SAMPLE_SIZE = 400
SEED = 13

_WORD = re.compile(r"[A-Za-z]+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_RULE_LINE = re.compile(r"^[ \t]*[-=~^*]{3,}[ \t]*$", re.MULTILINE)
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(?=\s|$)")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|\b)|[A-Z]?[a-z]+|[A-Z]+|\d+")


@dataclass
class _Documented:
    """One stdlib object with a docstring: its dotted name, enclosing class (if any) and paragraphs."""

    name: str
    module: str
    parent: str | None  # dotted name of the enclosing class, for methods and properties
    paragraphs: list[tuple[int, str]] = field(default_factory=list)  # (index in docstring, text)


def python_version_tag() -> str:
    """``cpython-3.11.7``: docstrings change between releases, so the collection is keyed by this."""
    v = sys.version_info
    return f"{sys.implementation.name}-{v.major}.{v.minor}.{v.micro}"


def _paragraphs(doc: str) -> list[tuple[int, str]]:
    """Split a docstring on blank lines; keep (index, normalized text) of the paragraphs worth indexing."""
    kept = []
    for index, raw in enumerate(_PARAGRAPH_BREAK.split(inspect.cleandoc(doc))):
        stripped = raw.strip()
        if stripped.startswith((">>>", "...")):
            continue  # doctest examples are code, not prose
        text = " ".join(_RULE_LINE.sub(" ", stripped).split())
        if len(_WORD.findall(text)) >= MIN_WORDS:
            kept.append((index, text))
    return kept


def _own_doc(obj: object) -> str | None:
    """The docstring the object itself carries (never one inherited from a base class)."""
    if isinstance(obj, (classmethod, staticmethod)):
        obj = obj.__func__
    if not (inspect.isroutine(obj) or inspect.isclass(obj) or inspect.isdatadescriptor(obj)):
        return None  # constants and instances only repeat the docstring of their type
    doc = getattr(obj, "__doc__", None)
    return doc if isinstance(doc, str) and doc.strip() else None


def _public_members(module) -> list[str]:
    """Public names a module defines itself (or its C accelerator ``_name`` does), sorted."""
    names = getattr(module, "__all__", None)
    if names is None:
        home = {module.__name__, "_" + module.__name__.rsplit(".", 1)[-1]}
        names = [n for n, obj in vars(module).items()
                 if not n.startswith("_") and getattr(obj, "__module__", None) in home]
    return sorted(n for n in set(names) if not n.startswith("_") and hasattr(module, n))


def _documented_objects() -> list[_Documented]:
    """Walk the fixed module list in a fixed order; each object is documented once, first name wins.

    This reads the live objects of the current interpreter; :func:`_pristine_documented_objects` runs it
    where no third-party package has touched the standard library.
    """
    seen: set[int] = set()
    found: list[_Documented] = []

    def visit(module_name: str, name: str, obj: object, parent: str | None) -> None:
        doc = _own_doc(obj)
        key = id(obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj)
        if doc is None or key in seen:
            return
        seen.add(key)
        found.append(_Documented(name, module_name, parent, _paragraphs(doc)))

    for module_name in DEMO_MODULES:
        module = builtins if module_name == "builtins" else importlib.import_module(module_name)
        for member in _public_members(module):
            obj = getattr(module, member)
            dotted = f"{module_name}.{member}"
            visit(module_name, dotted, obj, None)
            if inspect.isclass(obj):
                for attr in sorted(vars(obj)):
                    if not attr.startswith("_"):
                        visit(module_name, f"{dotted}.{attr}", vars(obj)[attr], dotted)
    return found


def _pristine_documented_objects() -> list[_Documented]:
    """:func:`_documented_objects` run in a fresh ``python -I -S`` (no site-packages, no .pth hooks).

    Third-party packages patch the standard library when imported (``import torch`` replaces
    ``inspect.getfile``), and ``-OO`` strips docstrings; either would make the collection depend on what
    the calling process imported or how it was started. A bare interpreter of the same Python sees the
    stdlib as shipped, so the same Python version always yields the same collection.
    """
    from densekit.errors import ConfigError

    command = [sys.executable, "-I", "-S", str(Path(__file__).resolve())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8")
        problem = f"exit {done.returncode}: {done.stderr.strip()[-500:]}" if done.returncode else ""
    except OSError as error:
        done, problem = None, str(error)
    if problem or done is None or not done.stdout:
        raise ConfigError(f"Reading the standard library docstrings with `{' '.join(command[:3])}` failed "
                          f"({problem or 'no output'}). The demo collection needs the Python interpreter "
                          f"(sys.executable) and its complete standard library.")
    return [_Documented(d["name"], d["module"], d["parent"], [tuple(p) for p in d["paragraphs"]])
            for d in json.loads(done.stdout)]


def _name_words(dotted: str) -> set[str]:
    """Lower-cased words of an object's own name: ``json.JSONDecodeError`` -> jsondecodeerror, json, ..."""
    own = dotted.rsplit(".", 1)[-1]
    words = {own.lower()}
    for piece in own.split("_"):
        words.add(piece.lower())
        words.update(w.lower() for w in _CAMEL.findall(piece))
    words.discard("")
    return words


def _summary_query(documented: _Documented) -> str | None:
    """The first sentence of the docstring without the object's name words, or None if too little is left."""
    index, first = documented.paragraphs[0]
    if index != 0:
        return None  # the docstring opens with something we skipped (a signature, a short line)
    match = _FIRST_SENTENCE.match(first)
    sentence = match.group(1) if match else first
    if "->" in sentence or "(" in sentence.split(" ", 1)[0]:
        return None  # an old-style signature line, not a summary
    banned = _name_words(documented.name)
    kept = [tok for tok in sentence.split() if re.sub(r"[^a-z0-9_]", "", tok.lower()) not in banned]
    query = " ".join(kept)
    return query if len(_WORD.findall(query)) >= MIN_QUERY_WORDS else None


def _method_key(documented: _Documented) -> tuple[str, str]:
    return documented.module, documented.name.rsplit(".", 1)[-1]


_Namesakes = dict[tuple[str, str], list[_Documented]]


def _siblings(documented: _Documented, namesakes: _Namesakes) -> list[_Documented]:
    """Same-named methods/properties of other classes in the same module: the same operation on a
    kindred type (``io.BufferedReader.seek`` for ``io.TextIOWrapper.seek``, ``decimal.Context.sqrt`` for
    ``decimal.Decimal.sqrt``), whose documentation answers the query in part."""
    if documented.parent is None:
        return []
    return [o for o in namesakes[_method_key(documented)] if o is not documented]


@dataclass
class DemoCollection:
    """The collection in memory: corpus rows, queries and graded judgments, all in a fixed order."""

    corpus: list[dict[str, str]]
    queries: list[dict[str, str]]  # the test queries
    qrels: dict[str, dict[str, int]]
    train_queries: list[dict[str, str]] = field(default_factory=list)
    train_qrels: dict[str, dict[str, int]] = field(default_factory=dict)


def make_demo_collection(sample_size: int = QUERY_SAMPLE_SIZE, seed: int = SEED) -> DemoCollection:
    """Build the collection from the docstrings of :data:`DEMO_MODULES` (the same for a Python version)."""
    objects = _pristine_documented_objects()
    namesakes: _Namesakes = {}
    for documented in objects:
        if documented.parent is not None:
            namesakes.setdefault(_method_key(documented), []).append(documented)

    candidates = []
    for documented in objects:
        if len(documented.paragraphs) >= 2:
            query = _summary_query(documented)
            if query is not None:
                candidates.append((documented, query))
    chosen = random.Random(seed).sample(candidates, min(sample_size, len(candidates)))
    chosen.sort(key=lambda pair: pair[0].name)
    query_names = {d.name for d, _ in chosen}
    # Training queries: every other candidate, except methods sharing a name (and so judgments) with a
    # test object in the same module, which would put a test query's own operation in training.
    test_keys = {_method_key(d) for d, _ in chosen if d.parent is not None}
    train = [(d, q) for d, q in candidates if d.name not in query_names
             and not (d.parent is not None and _method_key(d) in test_keys)]
    asking = query_names | {d.name for d, _ in train}
    held_out = {d.paragraphs[0][1] for d, _ in chosen + train}  # texts that must not appear in the corpus

    corpus: list[dict[str, str]] = []
    canonical: dict[str, str] = {}      # text -> id of the first document carrying it
    paragraph_id: dict[tuple[str, int], str] = {}  # (object, paragraph index) -> corpus id
    for documented in objects:
        for position, (index, text) in enumerate(documented.paragraphs):
            if position == 0 and documented.name in asking:
                continue
            if text in held_out:
                continue
            if text not in canonical:
                doc_id = documented.name if index == 0 else f"{documented.name}#{index}"
                canonical[text] = doc_id
                corpus.append({"_id": doc_id, "title": documented.name, "text": text})
            paragraph_id[(documented.name, index)] = canonical[text]

    haystack = "\n".join(row["text"].lower() for row in corpus)
    asked: set[str] = set()

    def judge(pairs: list[tuple[_Documented, str]], avoid: frozenset[str] = frozenset()
              ) -> tuple[list[dict[str, str]], dict[str, dict[str, int]]]:
        queries: list[dict[str, str]] = []
        qrels: dict[str, dict[str, int]] = {}
        for documented, query in pairs:
            if query.lower() in haystack or query in asked:
                continue  # answerable by string matching alone, or an alias of an object already asked about
            asked.add(query)
            judged: dict[str, int] = {}
            for grade, owners in ((1, _siblings(documented, namesakes)), (2, [documented])):
                for owner in owners:
                    for index, _ in owner.paragraphs:
                        doc_id = paragraph_id.get((owner.name, index))
                        if doc_id is not None:
                            judged[doc_id] = max(grade, judged.get(doc_id, 0))
            if 2 not in judged.values() or avoid.intersection(judged):
                continue  # nothing of its own to find, or it shares a document with a test query
            query_id = f"q:{documented.name}"
            queries.append({"_id": query_id, "text": query})
            qrels[query_id] = dict(sorted(judged.items()))
        return queries, qrels

    test_queries, test_qrels = judge(chosen)  # test first: a text asked twice stays a test query
    test_docs = frozenset(doc for judged in test_qrels.values() for doc in judged)
    train_queries, train_qrels = judge(sorted(train, key=lambda pair: pair[0].name), avoid=test_docs)
    return DemoCollection(corpus, test_queries, test_qrels, train_queries, train_qrels)


def _readme(collection: DemoCollection) -> str:
    judgments = sum(len(j) for j in collection.qrels.values())
    grade2 = sum(1 for j in collection.qrels.values() for g in j.values() if g == 2)
    train_judgments = sum(len(j) for j in collection.train_qrels.values())
    return f"""# densekit demo collection: Python standard library docstrings

Built offline by `densekit.demo_collection.build_demo_collection` with {python_version_tag()} from the
docstrings of {len(DEMO_MODULES)} standard-library modules (seed {SEED}); the same Python version always
builds byte-identical files.

- corpus.jsonl: {len(collection.corpus)} documents, one per docstring paragraph of a public function,
  class, method or property (`_id` = dotted name, `#i` for paragraph i); identical texts kept once.
- queries.jsonl: {len(collection.queries)} test queries, then {len(collection.train_queries)} training
  queries, each the first sentence of an object's docstring with the words of the object's name removed;
  that first paragraph is not in the corpus.
- qrels/test.tsv: {judgments} judgments: {grade2} with relevance 2 (the other paragraphs of the same
  docstring) and {judgments - grade2} with relevance 1 (paragraphs of the same-named method of another
  class in the same module, e.g. `decimal.Context.sqrt` for `decimal.Decimal.sqrt`).
- qrels/train.tsv: {train_judgments} judgments of the training queries, made the same way. Training
  queries are the objects not sampled for test, minus methods that share a name with a test object in
  the same module, and minus objects whose documents are judged for a test query (identical paragraphs
  are one document, e.g. `math.isclose` and `cmath.isclose`): no training query is a test query, and
  no document judged for a test query is judged for a training query.

What it measures: whether a retriever connects a one-line summary to the longer explanation that
follows it (arguments, details, caveats), which shares vocabulary but rarely whole sentences. Query
ids (`q:<dotted name>`) name the source object for reading results; a retriever must not use them.
"""


def build_demo_collection(out_dir: Path) -> Path:
    """Write the collection in BEIR layout into ``out_dir`` (every file atomically); return ``out_dir``.

    README.md is written last, so a folder that has it holds a complete collection.
    """
    from densekit.files import atomic_write

    out_dir = Path(out_dir)
    collection = make_demo_collection()
    with atomic_write(out_dir / "corpus.jsonl") as handle:
        for row in collection.corpus:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    with atomic_write(out_dir / "queries.jsonl") as handle:
        for row in collection.queries + collection.train_queries:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    for split, qrels in (("test", collection.qrels), ("train", collection.train_qrels)):
        with atomic_write(out_dir / "qrels" / f"{split}.tsv") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for query_id, judged in qrels.items():
                for doc_id, grade in judged.items():
                    handle.write(f"{query_id}\t{doc_id}\t{grade}\n")
    with atomic_write(out_dir / "README.md") as handle:
        handle.write(_readme(collection))
    return out_dir


_FILES = ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv", "README.md")


def demo_collection_dir(cache_root: str | Path | None = None) -> Path:
    """The demo collection folder, built on first use and reused afterwards.

    It lives in ``<cache_root>/demo/<python-version-tag>/``; ``cache_root`` defaults to ``$DENSEKIT_CACHE``
    or else ``~/.cache/densekit``.
    """
    if cache_root is None:
        cache_root = os.environ.get("DENSEKIT_CACHE") or Path.home() / ".cache" / "densekit"
    folder = Path(cache_root).expanduser() / "demo" / python_version_tag()
    if not all((folder / name).is_file() for name in _FILES):
        build_demo_collection(folder)
    return folder


if __name__ == "__main__":  # the bare-interpreter half of _pristine_documented_objects
    json.dump([asdict(o) for o in _documented_objects()], sys.stdout, ensure_ascii=True)
