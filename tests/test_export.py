import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from streamdistill.encoder import Encoder, tiny_qwen2, tiny_tokenizer
from streamdistill.export import to_sentence_transformer

TEXTS = ["a short one", "a somewhat longer sentence about the river and the bridge", "x",
         "the committee repaired the old engine after the storm had passed over the market"]


@pytest.mark.parametrize("pooling, projection", [("mean", False), ("mean", True), ("last", False)])
def test_causal_encoder_loads_with_sentence_transformer(tmp_path, pooling, projection):
    tok = tiny_tokenizer()
    proj = torch.nn.Linear(32, 16) if projection else None
    enc = Encoder(tiny_qwen2(tok.vocab_size), tok, attention="causal", pooling=pooling, projection=proj).eval()
    folder = to_sentence_transformer(enc, tmp_path / "st")
    st = SentenceTransformer(str(folder), device="cpu")
    ours = enc.encode(TEXTS)
    theirs = st.encode(TEXTS, batch_size=4)  # one padded batch
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert theirs.shape == ours.shape and float((1 - cos).max()) <= 1e-5


def test_bidirectional_encoder_is_refused(tmp_path):
    tok = tiny_tokenizer()
    enc = Encoder(tiny_qwen2(tok.vocab_size), tok, attention="bidirectional")
    with pytest.raises(ValueError, match="only causal encoders export"):
        to_sentence_transformer(enc, tmp_path / "st")
    assert not (tmp_path / "st").exists()
