"""Hub -> mirror: write an offline mirror (same layout, with a MANIFEST.json) for an air-gapped machine.

The only data code that needs mteb's Hub loaders; everything that reads a mirror is in ``data``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .artifacts import atomic_write_bytes, atomic_write_json, sha256_file
from .data import MIRROR_DATASETS, MirrorError

Rows = list[dict[str, Any]]


def export_mirror(dest: str | Path, load: Callable[[str], dict[str, Rows]] | None = None,
                  datasets: Iterable[str] | None = None) -> Path:
    """Write a mirror (same layout, with a MANIFEST.json) for an air-gapped machine.

    ``load(dataset_name)`` returns ``{relative_path: rows}``; the default reads the Hub through
    mteb's official task loaders (and GLUE for MRPC). Files are written atomically.
    """
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
