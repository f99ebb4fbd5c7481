"""Text, pair and task sources: the offline mirror first, the Hub second, a synthetic suite last.

The mirror is a folder laid out as described in its own README (BEIR folders for retrieval, JSON
lines for STS, classification and pairs) with a ``MANIFEST.json`` giving every file's SHA-256 and
row count. It is named by ``$STREAMDISTILL_DATA_DIR``; its files are read in place, never copied.

Training material comes from training splits only (and the SciFact corpus, which is unlabelled
documents); test splits never feed training.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import random
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


def training_texts(root: Path | None = None, *, limit: int | None = None, seed: int = 0) -> list[str]:
    """Every training text of the mirror (train splits and the SciFact corpus), deduplicated.

    Used for the tokenizer, the base LM and the LEAF teacher cache. Without a mirror, a synthetic
    corpus stands in and a warning says so.
    """
    root = root if root is not None else data_dir()
    if root is None:
        return synthetic_texts(limit or 2000, seed=seed)
    texts: list[str] = []
    for rel in CLASSIFICATION_TRAIN:
        texts += [r["text"] for r in read_jsonl(rel, root)]
    for rel in ["sts/STSBenchmark/train.jsonl", "pairs/MRPC/train.jsonl"]:
        for r in read_jsonl(rel, root):
            texts += [r["sentence1"], r["sentence2"]]
    texts += [document_text(d) for d in read_jsonl("retrieval/SciFact/corpus.jsonl", root)]
    train_qids = set(read_qrels("retrieval/SciFact/qrels/train.tsv", root))
    texts += [q["text"] for q in read_jsonl("retrieval/SciFact/queries.jsonl", root) if q["_id"] in train_qids]
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    random.Random(seed).shuffle(texts)
    return texts[:limit] if limit else texts


def data_fingerprint() -> str:
    """Identity of the mirror (the hash of its MANIFEST), or ``synthetic`` without one."""
    root = data_dir()
    if root is None:
        return "synthetic"
    return hashlib.sha256((root / "MANIFEST.json").read_bytes()).hexdigest()[:16]


def training_pairs(root: Path | None = None, *, limit: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """Positive (query, document) pairs from training material only, shuffled with ``seed``.

    MRPC train paraphrases, STSBenchmark train pairs scored >= 4, SciFact train claims with each
    cited abstract, and SciFact title -> abstract pairs for every document no *test* claim cites.
    (Train claims keep their cited abstracts, as BEIR's train split has them: 181 of the 283
    documents test claims cite are also cited by a train claim.)
    """
    root = root if root is not None else data_dir()
    if root is None:
        return synthetic_pairs(limit or 1000, seed=seed)
    pairs: list[tuple[str, str]] = []
    pairs += [(r["sentence1"], r["sentence2"]) for r in read_jsonl("pairs/MRPC/train.jsonl", root) if r["label"] == 1]
    pairs += [(r["sentence1"], r["sentence2"]) for r in read_jsonl("sts/STSBenchmark/train.jsonl", root) if r["score"] >= 4.0]
    corpus = {d["_id"]: d for d in read_jsonl("retrieval/SciFact/corpus.jsonl", root)}
    queries = {q["_id"]: q["text"] for q in read_jsonl("retrieval/SciFact/queries.jsonl", root)}
    for qid, docs in read_qrels("retrieval/SciFact/qrels/train.tsv", root).items():
        pairs += [(queries[qid], document_text(corpus[d])) for d in docs if d in corpus]
    test_relevant = {d for docs in read_qrels("retrieval/SciFact/qrels/test.tsv", root).values() for d in docs}
    pairs += [
        (d["title"], d["text"])
        for d in corpus.values()
        if d.get("title") and d.get("text") and d["_id"] not in test_relevant
    ]
    pairs = list(dict.fromkeys(p for p in pairs if p[0].strip() and p[1].strip()))
    random.Random(seed).shuffle(pairs)
    return pairs[:limit] if limit else pairs


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


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Pairs that share subject and object (a paraphrase-like relation a model can learn)."""
    _warn_synthetic("training pairs")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s, (a, _, c) = _sentence(rng)
        out.append((s + ".", f"{_OBJECTS[c]} was {_VERBS[rng.randrange(len(_VERBS))]} by {_SUBJECTS[a]}."))
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
