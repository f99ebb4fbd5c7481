"""mteb evaluation: the ``AbsEncoder`` adapter of an :class:`~streamdistill.models.EmbeddingModel`
and the result cache.

Every model goes through ``mteb.evaluate`` with a ``ModelMeta`` whose name and revision identify
the checkpoint (the revision is a hash of its weights and configuration), so results of different
models never collide in the cache. The cache lives in
``$STREAMDISTILL_RESULTS`` (default ``<repo>/results/mteb``), one folder per data source (the
mirror's MANIFEST hash, the Hub, or the synthetic suite) and per sampling: full-task results and
the ``tiny`` profile's subsampled ones are kept apart. Models come in as objects; resolving a name
to a model is :mod:`streamdistill.registry`'s job.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import config_hash, repo_root
from .data import MIRROR_DATASETS, data_dir, data_fingerprint, hub_available
from .models import EmbeddingModel
from .profiles import Profile
from .tasks import get_tasks

RESULTS_ENV = "STREAMDISTILL_RESULTS"


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


def results_dir(profile: Profile, task=None) -> Path:
    """mteb's result cache for one data source and one sampling: a changed mirror, the Hub or the
    synthetic suite never reuse each other's scores. A task generated here (the synthetic long-context
    ones) keeps each generation's results apart: more documents or other lengths are a new cache."""
    source = f"mirror-{data_fingerprint()}" if data_dir() is not None else ("hub" if hub_available() else "synthetic")
    folder = results_root() / source / sampling_key(profile)
    generated = getattr(task, "generated_from", None)
    return folder / f"generated-{config_hash(generated, 8)}" if generated is not None else folder


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


def evaluate_model(model: EmbeddingModel, tasks: Sequence[str] | str, profile: Profile,
                   *, per_split: bool = False, show_progress: bool = False) -> dict[str, Any]:
    """Evaluate a model on tasks through ``mteb.evaluate``; cached per model name + revision.

    Returns ``{"model": name, "revision": rev, "scores": {task: main score x 100}}`` (and
    ``"splits"`` with per-split scores when ``per_split``).
    """
    import mteb
    from mteb.cache import ResultCache

    if not isinstance(model, EmbeddingModel):
        raise TypeError(f"evaluate_model takes an EmbeddingModel, not {type(model).__name__}; "
                        "resolve names with streamdistill.registry.resolve_model")
    task_objs = get_tasks(list(tasks) if not isinstance(tasks, str) else tasks, profile)
    logging.getLogger("mteb").setLevel(logging.WARNING)
    by_cache: dict[Path, list] = {}
    for task in task_objs:
        by_cache.setdefault(results_dir(profile, task), []).append(task)
    adapter, by_name = mteb_model(model), {}
    for folder, group in by_cache.items():
        result = mteb.evaluate(adapter, group, cache=ResultCache(cache_path=folder),
                               overwrite_strategy="only-missing", show_progress_bar=show_progress,
                               encode_kwargs={"batch_size": profile.eval_batch_size}, num_proc=1)
        by_name |= {r.task_name: r for r in result.task_results}
    out: dict[str, Any] = {"model": model.name, "revision": model.revision,
                           "scores": {t.metadata.name: main_score(by_name[t.metadata.name], t.metadata.name) for t in task_objs}}
    if per_split:
        out["splits"] = {t.metadata.name: split_scores(by_name[t.metadata.name]) for t in task_objs}
    return out


def harness_throughput(model: EmbeddingModel, texts: list[str], batch_size: int = 32, repeats: int = 3) -> dict[str, float]:
    """Texts/s of the harness's mteb adapter against the model's own ``encode``, side by side.

    Both paths encode the same texts with the same batch size in the same process; the best of
    ``repeats`` alternating runs is kept for each so that one slow run does not decide the ratio.
    """
    import mteb
    from datasets import Dataset
    from torch.utils.data import DataLoader

    from .hardware import timed_rounds

    adapter = mteb_model(model)
    meta = mteb.get_task("STSBenchmark").metadata
    loader = DataLoader(Dataset.from_dict({"text": texts}), batch_size=batch_size)  # what mteb hands an encoder
    if model.st_model is not None:
        own = lambda: model.st_model.encode(texts, batch_size=batch_size, show_progress_bar=False)  # noqa: E731
    else:
        own = lambda: model.encode(texts, None)  # noqa: E731
    seconds = timed_rounds({"harness": lambda: adapter.encode(loader, task_metadata=meta, hf_split="test",
                                                              hf_subset="default", batch_size=batch_size,
                                                              show_progress_bar=False),
                            "own": own}, repeats)
    out = {"texts": len(texts), "harness_texts_per_s": len(texts) / min(seconds["harness"]),
           "own_texts_per_s": len(texts) / min(seconds["own"])}
    out["ratio"] = out["harness_texts_per_s"] / out["own_texts_per_s"]
    return out
