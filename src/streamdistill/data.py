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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import atomic_write_bytes, atomic_write_json, sha256_file

DATA_ENV = "STREAMDISTILL_DATA_DIR"


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


# --------------------------------------------------------------------------- export from the Hub

Rows = list[dict[str, Any]]


def export_mirror(dest: str | Path, load: Callable[[str], dict[str, Rows]] | None = None,
                  datasets: Iterable[str] | None = None) -> Path:
    """Write a mirror (same layout, with a MANIFEST.json) for an air-gapped machine.

    ``load(dataset_name)`` returns ``{relative_path: rows}``; the default reads the Hub through
    mteb's official task loaders (and GLUE for MRPC). Files are written atomically.
    """
    from .tasks import MIRROR_DATASETS

    dest = Path(dest)
    load = load or hub_rows
    names = list(datasets or MIRROR_DATASETS)
    listing: dict[str, dict] = {}
    for name in names:
        if name not in MIRROR_DATASETS:
            raise MirrorError(f"unknown dataset {name!r}; choose from: {', '.join(MIRROR_DATASETS)}")
        files = []
        for rel, rows in load(name).items():
            path = dest / rel
            if rel.endswith(".tsv"):
                body = "query-id\tcorpus-id\tscore\n" + "".join(
                    f"{r['query-id']}\t{r['corpus-id']}\t{r['score']}\n" for r in rows)
            else:
                body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            atomic_write_bytes(path, body.encode("utf-8"))
            files.append({"path": rel, "rows": len(rows), "sha256": sha256_file(path)})
        listing[name] = {"task_type": MIRROR_DATASETS[name]["type"], "mteb_task": name, "files": files,
                         "sources": [{"exported_from": "huggingface hub"}]}
    atomic_write_json(dest / "MANIFEST.json", listing)
    return dest


def hub_rows(name: str, load_dataset: Callable | None = None) -> dict[str, Rows]:
    """Rows of one dataset read from the Hub, in the mirror's layout.

    Retrieval sets come from the BEIR layout of mteb's own dataset (path and revision from the
    official task's metadata) so the *train* qrels and all queries, which training needs, are
    exported too; ``load_dataset`` (default ``datasets.load_dataset``) is injectable for tests.
    """
    from .tasks import MIRROR_DATASETS

    if load_dataset is None:  # pragma: no cover - needs the Hub
        from datasets import load_dataset
    spec = MIRROR_DATASETS[name]
    if spec["type"] == "Retrieval":
        import mteb

        meta = mteb.get_task(name).metadata.dataset
        path, revision = meta["path"], meta.get("revision")
        corpus = load_dataset(path, "corpus", revision=revision)["corpus"]
        queries = load_dataset(path, "queries", revision=revision)["queries"]
        qrels = load_dataset(path, "default", revision=revision)
        out: dict[str, Rows] = {
            f"{spec['dir']}/corpus.jsonl": [{"_id": str(r["_id"]), "title": (r.get("title") or "").strip(),
                                             "text": r["text"].strip()} for r in corpus],
            f"{spec['dir']}/queries.jsonl": [{"_id": str(r["_id"]), "text": r["text"]} for r in queries],
        }
        for split in qrels:
            out[f"{spec['dir']}/qrels/{split}.tsv"] = [
                {"query-id": str(r["query-id"]), "corpus-id": str(r["corpus-id"]), "score": int(r["score"])}
                for r in qrels[split]]
        return out
    if name == "MRPC":  # pragma: no cover - needs the Hub
        ds = load_dataset("nyu-mll/glue", "mrpc")
        return {f"pairs/MRPC/{split}.jsonl": [
            {"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": r["label"],
             "id1": str(r["idx"]), "id2": str(r["idx"])} for r in ds[split]] for split in ds}
    import mteb  # pragma: no cover - needs the Hub

    task = mteb.get_task(name)
    task.load_data()
    out = {}
    subsets = task.dataset if task.metadata.is_multilingual else {"default": task.dataset}
    for subset, splits in subsets.items():
        if spec.get("subsets") and subset not in spec["subsets"]:
            continue
        for split, ds in splits.items():
            rel = f"{spec['dir']}/{split}.jsonl" if spec["type"] == "STS" else f"{spec['dir']}/{subset}/{split}.jsonl"
            out[rel] = [dict(r) for r in ds]
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
