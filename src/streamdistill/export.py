"""Export a causal streamdistill ``Encoder`` as a SentenceTransformer folder (loads with one call).

``SentenceTransformer(path)`` then gives the library's embeddings: the backbone (AutoModel, causal
attention, right padding so positions count real tokens from 0), mean or last-token pooling, the
optional projection as an identity-activation ``Dense``, and ``Normalize``. Bidirectional
encoders are refused: transformers' Qwen2 has no configuration switch for bidirectional attention,
so a plain SentenceTransformer would silently run them causally.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .artifacts import atomic_dir

POOLING_MODES = {"mean": "mean", "last": "lasttoken"}


def to_sentence_transformer(encoder, path: str | Path) -> Path:
    """Write ``encoder`` to ``path`` as a SentenceTransformer folder, atomically."""
    from sentence_transformers import SentenceTransformer, models

    if encoder.attention != "causal":
        raise ValueError(f"only causal encoders export to SentenceTransformer (this one is {encoder.attention}: "
                         "Qwen2 in transformers has no bidirectional switch, it would silently run causally)")
    if encoder.pooling not in POOLING_MODES:
        raise ValueError(f"pooling {encoder.pooling!r} does not export; choose one of: {', '.join(POOLING_MODES)}")
    path = Path(path)
    with atomic_dir(path) as tmp:
        backbone_dir = tmp / "_backbone"
        encoder.backbone.save_pretrained(backbone_dir)
        tokenizer = encoder.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "right"  # AutoModel counts positions from the first token
        try:
            tokenizer.save_pretrained(backbone_dir)
        finally:
            tokenizer.padding_side = side
        word = models.Transformer(str(backbone_dir), max_seq_length=encoder.max_length)
        modules = [word, models.Pooling(encoder.hidden_size, pooling_mode=POOLING_MODES[encoder.pooling])]
        if encoder.projection is not None:
            proj = encoder.projection
            modules.append(models.Dense(proj.in_features, proj.out_features, bias=proj.bias is not None,
                                        activation_function=torch.nn.Identity(),
                                        init_weight=proj.weight.detach().clone(),
                                        init_bias=None if proj.bias is None else proj.bias.detach().clone()))
        if encoder.normalize:
            modules.append(models.Normalize())
        SentenceTransformer(modules=modules, device="cpu").save(str(tmp / "st"))
        # the final folder is the SentenceTransformer itself
        staged = tmp / "st"
        for item in list(tmp.iterdir()):
            if item != staged:
                import shutil

                shutil.rmtree(item) if item.is_dir() else item.unlink()
        for item in staged.iterdir():
            item.rename(tmp / item.name)
        staged.rmdir()
    return path
