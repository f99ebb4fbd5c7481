"""Text, pair and task sources: the offline mirror first, the Hub second, a synthetic suite last.

The mirror is a folder laid out as described in its own README (BEIR folders for retrieval, JSON
lines for STS, classification and pairs) with a ``MANIFEST.json`` giving every file's SHA-256 and
row count. It is named by ``$STREAMDISTILL_DATA_DIR``; its files are read in place, never copied.

Training material comes from non-test splits only; no evaluated test text ever feeds training
(:func:`evaluated_test_texts`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import sha256_file

DATA_ENV = "STREAMDISTILL_DATA_DIR"

# The mirror's layout: dataset name -> its task type and folder (see the mirror's README).
MIRROR_DATASETS: dict[str, dict[str, Any]] = {
    "SciFact": {"type": "Retrieval", "dir": "retrieval/SciFact"},
    "STSBenchmark": {"type": "STS", "dir": "sts/STSBenchmark"},
    "SICK-R": {"type": "STS", "dir": "sts/SICK-R"},
    "STS12": {"type": "STS", "dir": "sts/STS12"},
    "STS13": {"type": "STS", "dir": "sts/STS13"},
    "STS14": {"type": "STS", "dir": "sts/STS14"},
    "STS15": {"type": "STS", "dir": "sts/STS15"},
    "STS16": {"type": "STS", "dir": "sts/STS16"},
    "BIOSSES": {"type": "STS", "dir": "sts/BIOSSES"},
    "Banking77Classification": {"type": "Classification", "dir": "classification/Banking77Classification"},
    "AmazonCounterfactualClassification": {"type": "Classification", "dir": "classification/AmazonCounterfactualClassification", "subsets": ["en"]},
    "EmotionClassification": {"type": "Classification", "dir": "classification/EmotionClassification"},
    "TweetSentimentExtractionClassification": {"type": "Classification", "dir": "classification/TweetSentimentExtractionClassification"},
    "MRPC": {"type": "PairClassification", "dir": "pairs/MRPC"},
}


def hub_available() -> bool:
    """Whether the Hugging Face Hub may be used (``HF_HUB_OFFLINE`` unset or false)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in {"1", "true", "True"}


class MirrorError(RuntimeError):
    """The mirror is missing, incomplete or corrupt."""


def data_dir(required: bool = False) -> Path | None:
    """The mirror folder from ``$STREAMDISTILL_DATA_DIR`` (None when unset and not required)."""
    raw = os.environ.get(DATA_ENV)
    if not raw:
        if required:
            raise MirrorError(f"no data mirror: set {DATA_ENV} to a mirror folder (e.g. ../shared/data)")
        return None
    root = Path(raw).expanduser().resolve()
    if not (root / "MANIFEST.json").exists():
        raise MirrorError(f"{DATA_ENV}={raw} is not a data mirror (no MANIFEST.json there)")
    return root


@functools.lru_cache(maxsize=8)
def manifest(root: Path) -> dict:
    return json.loads((root / "MANIFEST.json").read_text())


def manifest_files(root: Path) -> dict[str, dict]:
    """Relative path -> manifest entry (rows, sha256, ...) for every file the mirror lists."""
    return {f["path"]: f for entry in manifest(root).values() for f in entry.get("files", [])}


@dataclass(frozen=True)
class FileCheck:
    path: str
    ok: bool
    problem: str = ""


def check_file(root: Path, rel: str, entry: dict) -> FileCheck:
    path = root / rel
    if not path.exists():
        return FileCheck(rel, False, f"missing file {path}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        return FileCheck(rel, False, f"corrupt file {path}: sha256 {digest[:12]}… != manifest {entry['sha256'][:12]}…")
    rows = _count_rows(path)
    if rows != entry["rows"]:
        return FileCheck(rel, False, f"corrupt file {path}: {rows} rows, manifest says {entry['rows']}")
    return FileCheck(rel, True)


def _count_rows(path: Path) -> int:
    with open(path, "rb") as fh:
        lines = sum(1 for line in fh if line.strip())
    return lines - 1 if path.suffix == ".tsv" else lines  # qrels carry a header


def check_mirror(root: Path | None = None) -> list[FileCheck]:
    """Verify every file of the mirror against MANIFEST.json (sha256 and row count)."""
    root = root or data_dir(required=True)
    return [check_file(root, rel, entry) for rel, entry in sorted(manifest_files(root).items())]


_verified: set[tuple[str, str]] = set()


def mirror_path(rel: str, root: Path | None = None) -> Path:
    """Path of a mirror file, verified against the manifest once per process."""
    root = root or data_dir(required=True)
    key = (str(root), rel)
    if key not in _verified:
        entry = manifest_files(root).get(rel)
        if entry is None:
            raise MirrorError(f"{rel} is not listed in {root / 'MANIFEST.json'}")
        result = check_file(root, rel, entry)
        if not result.ok:
            raise MirrorError(result.problem + " — restore it from the mirror's source")
        _verified.add(key)
    return root / rel


def read_jsonl(rel: str, root: Path | None = None) -> list[dict]:
    with open(mirror_path(rel, root), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def read_qrels(rel: str, root: Path | None = None) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(mirror_path(rel, root), encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    return qrels


def document_text(doc: dict) -> str:
    """BEIR documents are embedded as "title text" (mteb joins them with a space)."""
    title = (doc.get("title") or "").strip()
    return f"{title} {doc['text']}".strip() if title else doc["text"]


# --------------------------------------------------------------------------- training material

CLASSIFICATION_TRAIN = [
    "classification/Banking77Classification/default/train.jsonl",
    "classification/AmazonCounterfactualClassification/en/train.jsonl",
    "classification/EmotionClassification/default/train.jsonl",
    "classification/TweetSentimentExtractionClassification/default/train.jsonl",
]
PAIR_SOURCES = ("snli", "mrpc", "stsb", "scifact")  # what training_pairs can read (profile.pair_sources)


def normalized(text: str) -> str:
    """A text as overlap is checked: lower-cased, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def evaluated_test_texts(root: Path | None = None) -> frozenset[str]:
    """Every text of a *test* split this project evaluates on, :func:`normalized`.

    The test splits of every STS set, MRPC and every classification set, and SciFact's test
    queries. (A retrieval corpus is shared by all splits, so it is not a test text.) No training
    material may contain one of them.
    """
    root = root if root is not None else data_dir(required=True)
    return _evaluated_test_texts(root)


@functools.lru_cache(maxsize=4)
def _evaluated_test_texts(root: Path) -> frozenset[str]:
    texts: list[str] = []
    for name, spec in MIRROR_DATASETS.items():
        if spec["type"] in ("STS", "PairClassification"):
            texts += [t for r in read_jsonl(f"{spec['dir']}/test.jsonl", root) for t in (r["sentence1"], r["sentence2"])]
        elif spec["type"] == "Classification":
            for subset in spec.get("subsets") or ["default"]:
                texts += [r["text"] for r in read_jsonl(f"{spec['dir']}/{subset}/test.jsonl", root)]
        elif spec["type"] == "Retrieval":
            test = set(read_qrels(f"{spec['dir']}/qrels/test.tsv", root))
            texts += [q["text"] for q in read_jsonl(f"{spec['dir']}/queries.jsonl", root) if q["_id"] in test]
    return frozenset(normalized(t) for t in texts)


def _clean(items: list, root: Path) -> list:
    """Items (texts or tuples of texts) with no empty text and none that is an evaluated test text."""
    banned = evaluated_test_texts(root)
    out = []
    for item in items:
        parts = [item] if isinstance(item, str) else [t for t in item if t is not None]
        if all(t.strip() and normalized(t) not in banned for t in parts):
            out.append(item)
    return list(dict.fromkeys(out))


# Where training texts come from (:func:`training_texts`): every non-test text of the mirror. Not
# the SciFact corpus (it holds the documents SciFact scores, so training on it is transductive), not
# any STS or SICK test set; STSBenchmark's train and validation sentences only where no STS test
# set holds them (most do).
TEXT_SOURCES = ("classification", "mrpc", "snli", "stsb", "scifact-claims")


def _source_texts(source: str, root: Path) -> list[str]:
    if source == "classification":
        return [r["text"] for rel in CLASSIFICATION_TRAIN for r in read_jsonl(rel, root)]
    if source == "mrpc":
        return [t for r in read_jsonl("pairs/MRPC/train.jsonl", root) for t in (r["sentence1"], r["sentence2"])]
    if source == "snli":
        return [t for split in ("validation", "test") for r in read_jsonl(f"pairs/SNLI/{split}.jsonl", root)
                for t in (r["sentence1"], r["sentence2"])]
    if source == "stsb":
        return [t for split in ("train", "validation") for r in read_jsonl(f"sts/STSBenchmark/{split}.jsonl", root)
                for t in (r["sentence1"], r["sentence2"])]
    if source == "scifact-claims":
        train_qids = set(read_qrels("retrieval/SciFact/qrels/train.tsv", root))
        return [q["text"] for q in read_jsonl("retrieval/SciFact/queries.jsonl", root) if q["_id"] in train_qids]
    raise MirrorError(f"unknown text source {source!r}; choose from: {', '.join(TEXT_SOURCES)}")


@functools.lru_cache(maxsize=4)
def _sourced_texts(root: Path) -> tuple[tuple[str, str], ...]:
    """(source, text) for every training text, deduplicated (first source wins), test texts dropped."""
    by_source = {source: _source_texts(source, root) for source in TEXT_SOURCES}
    kept = set(_clean([t for texts in by_source.values() for t in texts], root))
    out: dict[str, str] = {}
    for source, texts in by_source.items():
        for text in texts:
            if text in kept:
                out.setdefault(text, source)
    return tuple((source, text) for text, source in out.items())


def training_texts(root: Path | None = None, *, limit: int | None = None, seed: int = 0) -> list[str]:
    """Every non-test text of the mirror (:data:`TEXT_SOURCES`), deduplicated, without any evaluated
    test text (:func:`evaluated_test_texts`), shuffled with ``seed``.

    The LEAF teacher's targets, int8 calibration and throughput texts. Without a mirror, a
    synthetic corpus stands in and a warning says so.
    """
    root = root if root is not None else data_dir()
    if root is None:
        return synthetic_texts(limit or 2000, seed=seed)
    texts = [text for _, text in _sourced_texts(root)]
    random.Random(seed).shuffle(texts)
    return texts[:limit] if limit else texts


def text_mix(texts: list[str], root: Path | None = None) -> dict[str, int]:
    """How many of ``texts`` each :data:`TEXT_SOURCES` entry gave (for the book's proportions)."""
    root = root if root is not None else data_dir(required=True)
    source = dict((text, src) for src, text in _sourced_texts(root))
    counts = dict.fromkeys(TEXT_SOURCES, 0)
    for text in texts:
        counts[source[text]] += 1
    return counts


def data_fingerprint() -> str:
    """Identity of the mirror (the hash of its MANIFEST), or ``synthetic`` without one."""
    root = data_dir()
    if root is None:
        return "synthetic"
    return hashlib.sha256((root / "MANIFEST.json").read_bytes()).hexdigest()[:16]


Item = tuple[str, str, str | None]  # (query, positive, hard negative or None)


def snli_triplets(root: Path | None = None) -> list[Item]:
    """AllNLI-style (premise, entailed hypothesis, contradicting hypothesis) from SNLI dev and test.

    Premises with both an entailment and a contradiction (the first of each, in file order);
    rows with an evaluated test sentence are dropped (:func:`evaluated_test_texts`).
    """
    root = root if root is not None else data_dir(required=True)
    by_premise: dict[str, dict[str, str]] = {}
    for split in ("validation", "test"):
        for r in read_jsonl(f"pairs/SNLI/{split}.jsonl", root):
            by_premise.setdefault(r["sentence1"], {}).setdefault(r["label"], r["sentence2"])
    triplets = [(p, h["entailment"], h["contradiction"]) for p, h in by_premise.items()
                if "entailment" in h and "contradiction" in h]
    return _clean(triplets, root)


def _source_items(source: str, root: Path) -> list[Item]:
    if source == "snli":
        return snli_triplets(root)
    if source == "mrpc":
        return [(r["sentence1"], r["sentence2"], None) for r in read_jsonl("pairs/MRPC/train.jsonl", root) if r["label"] == 1]
    if source == "stsb":
        return [(r["sentence1"], r["sentence2"], None) for r in read_jsonl("sts/STSBenchmark/train.jsonl", root)
                if r["score"] >= 4.0]
    if source == "scifact":
        corpus = {d["_id"]: d for d in read_jsonl("retrieval/SciFact/corpus.jsonl", root)}
        queries = {q["_id"]: q["text"] for q in read_jsonl("retrieval/SciFact/queries.jsonl", root)}
        items: list[Item] = []
        for qid, docs in read_qrels("retrieval/SciFact/qrels/train.tsv", root).items():
            items += [(queries[qid], document_text(corpus[d]), None) for d in docs if d in corpus]
        test_relevant = {d for docs in read_qrels("retrieval/SciFact/qrels/test.tsv", root).values() for d in docs}
        items += [(d["title"], d["text"], None) for d in corpus.values()
                  if d.get("title") and d.get("text") and d["_id"] not in test_relevant]
        return items
    raise MirrorError(f"unknown pair source {source!r}; choose from: {', '.join(PAIR_SOURCES)}")


def training_pairs(root: Path | None = None, *, sources: tuple[str, ...] = ("snli",), limit: int | None = None,
                   seed: int = 0) -> list[Item]:
    """(query, positive, hard negative or None) items from training material only, shuffled with ``seed``.

    Sources (:data:`PAIR_SOURCES`): ``snli`` (:func:`snli_triplets`, the contradiction as a hard
    negative), ``mrpc`` (train paraphrases), ``stsb`` (train pairs scored >= 4) and ``scifact``
    (train claims with each cited abstract, and title -> abstract for every document no *test*
    claim cites; train claims keep their cited abstracts, as BEIR's train split has them). No item
    holds an evaluated test text. :func:`pair_mix` counts where they came from.
    """
    root = root if root is not None else data_dir()
    if root is None:
        return synthetic_pairs(limit or 1000, seed=seed)
    items: list[Item] = []
    for source in sources:
        items += _source_items(source, root)
    items = _clean(items, root)
    random.Random(seed).shuffle(items)
    return items[:limit] if limit else items


def pair_mix(sources: tuple[str, ...] = ("snli",), root: Path | None = None) -> dict[str, int]:
    """How many training items each source gives (after cleaning), for the book's mix table."""
    root = root if root is not None else data_dir(required=True)
    return {source: len(_clean(_source_items(source, root), root)) for source in sources}


# --------------------------------------------------------------------------- synthetic fallback

_SUBJECTS = ["the river", "a violin", "the committee", "my neighbour", "the old bridge", "a red kite", "the market", "our server"]
_VERBS = ["crossed", "repaired", "praised", "ignored", "measured", "painted", "delayed", "followed"]
_OBJECTS = ["the storm", "a letter", "the budget", "an engine", "the garden", "a theorem", "the parade", "a ledger"]


def _warn_synthetic(what: str) -> None:
    warnings.warn(
        f"SYNTHETIC DATA: no mirror ({DATA_ENV} unset) — {what} are generated, not real; "
        "numbers from them say nothing about the papers' claims",
        stacklevel=3,
    )


def _sentence(rng: random.Random) -> tuple[str, tuple[int, int, int]]:
    idx = (rng.randrange(len(_SUBJECTS)), rng.randrange(len(_VERBS)), rng.randrange(len(_OBJECTS)))
    return f"{_SUBJECTS[idx[0]]} {_VERBS[idx[1]]} {_OBJECTS[idx[2]]}", idx


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    _warn_synthetic("training texts")
    rng = random.Random(seed)
    return [" and ".join(_sentence(rng)[0] for _ in range(rng.randint(1, 3))) + "." for _ in range(n)]


def synthetic_pairs(n: int, seed: int = 0) -> list[Item]:
    """Pairs that share subject and object (a paraphrase-like relation a model can learn)."""
    _warn_synthetic("training pairs")
    rng = random.Random(seed)
    out: list[Item] = []
    for _ in range(n):
        s, (a, _, c) = _sentence(rng)
        out.append((s + ".", f"{_OBJECTS[c]} was {_VERBS[rng.randrange(len(_VERBS))]} by {_SUBJECTS[a]}.", None))
    return out


def mirror_table(root: Path | None = None):
    """One row per mirrored dataset: type, files, rows, licence (for the book)."""
    import pandas as pd

    root = root or data_dir(required=True)
    rows = []
    for name, entry in manifest(root).items():
        lic = entry.get("license") or {}
        rows.append({
            "dataset": name,
            "type": entry.get("task_type"),
            "files": len(entry.get("files", [])),
            "rows": sum(f["rows"] for f in entry.get("files", [])),
            "licence (source)": lic.get("source_stated") or "none stated",
            "licence (mteb metadata)": lic.get("mteb_metadata") or "—",
        })
    return pd.DataFrame(rows).set_index("dataset")
