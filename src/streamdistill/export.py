"""Export a streamdistill ``Encoder`` as a SentenceTransformer folder (loads with one call).

A causal encoder with mean or last pooling (the student C, the baseline A) becomes plain
sentence-transformers modules: the backbone (AutoModel, causal attention, right padding so
positions count real tokens from 0), ``Pooling``, the optional projection as an identity
``Dense``, and ``Normalize``. ``SentenceTransformer(path)`` loads it with nothing else installed.

A bidirectional encoder (the teacher B) or Echo pooling cannot be written that way: transformers'
Qwen2 has no configuration switch for bidirectional attention, so a plain ``Transformer`` module
would silently run it causally. Such an encoder is saved as one :class:`EncoderModule` (the
library's own forward, its ``encoder_config.json`` carrying ``"attention": "bidirectional"``);
``SentenceTransformer(path, trust_remote_code=True)`` loads it with ``streamdistill`` installed.
The flag is sentence-transformers' opt-in for any module class outside its own package: the code
it runs is this installed module, nothing is fetched from the folder or the Hub.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sentence_transformers.base.modules import InputModule

from .artifacts import atomic_dir
from .encoder import Encoder

POOLING_MODES = {"mean": "mean", "last": "lasttoken"}


def needs_encoder_module(encoder: Encoder) -> bool:
    """True when plain sentence-transformers modules cannot express ``encoder`` (bidirectional, Echo)."""
    return encoder.attention != "causal" or encoder.pooling not in POOLING_MODES


class EncoderModule(InputModule):
    """A whole streamdistill :class:`~streamdistill.encoder.Encoder` as one SentenceTransformer module.

    Tokenization, the attention mask (causal, bidirectional), pooling (Echo included), projection
    and normalisation are the library's own, so the vectors are the library's.
    """

    SUBFOLDER = "streamdistill_encoder"

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = encoder.tokenizer
        self.max_seq_length = encoder.max_length

    def preprocess(self, inputs, prompt: str | None = None, **kwargs) -> dict[str, torch.Tensor]:
        texts = [str(t) for t in inputs]
        if prompt:
            texts = self._prepend_prompt(texts, prompt)
        return self.encoder.tokenize(texts, max_length=self.max_seq_length)

    def forward(self, features: dict, **kwargs) -> dict:
        out = self.encoder(input_ids=features["input_ids"], attention_mask=features["attention_mask"],
                           pool_mask=features.get("pool_mask"))
        features["sentence_embedding"] = out["embedding"]
        return features

    def get_embedding_dimension(self) -> int:
        return self.encoder.embed_dim

    get_sentence_embedding_dimension = get_embedding_dimension

    def save(self, output_path: str, *args, **kwargs) -> None:
        self.encoder.save(Path(output_path) / self.SUBFOLDER)  # safetensors, never pickles

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> EncoderModule:
        folder = Path(model_name_or_path) / subfolder / cls.SUBFOLDER
        if not folder.is_dir():
            raise ValueError(f"{folder} is missing: EncoderModule loads from a local exported folder")
        return cls(Encoder.load(folder))


def to_sentence_transformer(encoder: Encoder, path: str | Path) -> Path:
    """Write ``encoder`` to ``path`` as a SentenceTransformer folder, atomically.

    Causal mean/last encoders become plain modules (``SentenceTransformer(path)``); others one
    :class:`EncoderModule` (``SentenceTransformer(path, trust_remote_code=True)``, see above).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    path = Path(path)
    if needs_encoder_module(encoder):
        with atomic_dir(path) as tmp:
            # on the encoder's own device: SentenceTransformer moves its modules, and this one is the caller's
            SentenceTransformer(modules=[EncoderModule(encoder)], device=str(encoder.device)).save(str(tmp))
        return path
    with atomic_dir(path) as tmp:
        backbone_dir = tmp / "_backbone"
        encoder.backbone.save_pretrained(backbone_dir)
        tokenizer = encoder.tokenizer
        side, template = tokenizer.padding_side, getattr(tokenizer, "chat_template", None)
        tokenizer.padding_side = "right"  # AutoModel counts positions from the first token
        # no chat template: sentence-transformers would wrap every text in it (SmolLM2-Instruct's
        # system prompt), and the encoder reads the bare text
        tokenizer.chat_template = None
        try:
            tokenizer.save_pretrained(backbone_dir)
        finally:
            tokenizer.padding_side, tokenizer.chat_template = side, template
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
