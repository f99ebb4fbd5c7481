import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from streamdistill.encoder import Encoder
from streamdistill.profiles import get_profile
from streamdistill.testing import tiny_decoder, tiny_qwen2, tiny_tokenizer
from streamdistill.export import EncoderModule, to_sentence_transformer

TINY = get_profile("tiny")

TEXTS = ["a short one", "a somewhat longer sentence about the river and the bridge", "x",
         "the committee repaired the old engine after the storm had passed over the market"]


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
@pytest.mark.parametrize("pooling, projection", [("mean", False), ("mean", True), ("last", False)])
def test_causal_encoder_loads_with_sentence_transformer(tmp_path, pooling, projection, architecture):
    tok = tiny_tokenizer()
    proj = torch.nn.Linear(32, 16) if projection else None
    enc = Encoder(tiny_decoder(architecture, tok.vocab_size), tok, attention="causal", pooling=pooling,
                  projection=proj).eval()
    folder = to_sentence_transformer(enc, tmp_path / "st")
    st = SentenceTransformer(str(folder), device="cpu")
    ours = enc.encode(TEXTS)
    theirs = st.encode(TEXTS, batch_size=4)  # one padded batch
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert theirs.shape == ours.shape and float((1 - cos).max()) <= 1e-5


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
@pytest.mark.parametrize("attention, pooling", [("bidirectional", "mean"), ("causal", "echo")])
def test_bidirectional_and_echo_encoders_load_through_the_encoder_module(tmp_path, attention, pooling, architecture):
    tok = tiny_tokenizer()
    enc = Encoder(tiny_decoder(architecture, tok.vocab_size), tok, attention=attention, pooling=pooling).eval()
    folder = to_sentence_transformer(enc, tmp_path / "st")
    config = json.loads((folder / EncoderModule.SUBFOLDER / "encoder_config.json").read_text())
    assert config["attention"] == attention and config["pooling"] == pooling
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))  # safetensors only
    with pytest.raises(ValueError, match="trust_remote_code"):  # no custom code runs without the opt-in
        SentenceTransformer(str(folder), device="cpu")
    st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    ours = enc.encode(TEXTS)
    theirs = st.encode(TEXTS, batch_size=4)
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert theirs.shape == ours.shape and float((1 - cos).max()) <= 1e-5
    if attention == "bidirectional":  # the vectors really are bidirectional: a causal run differs
        causal = Encoder(enc.backbone, tok, attention="causal", pooling=pooling).encode(TEXTS)
        assert float((1 - (causal * theirs).sum(1)).max()) > 1e-3


def test_the_harness_evaluates_an_exported_teacher_folder_without_trusting_remote_code(tmp_path):
    from streamdistill.registry import resolve_model

    tok = tiny_tokenizer()
    enc = Encoder(tiny_qwen2(tok.vocab_size), tok, attention="bidirectional").eval()
    folder = to_sentence_transformer(enc, tmp_path / "teacher-st")
    model = resolve_model(str(folder), TINY)
    assert model.name == "streamdistill/teacher-st"
    ours = enc.encode(TEXTS)
    assert float((1 - (ours * model.encode(TEXTS)).sum(1)).max()) <= 1e-5


def test_cli_exports_a_stage_model_that_loads_with_one_call(tmp_path, capsys):
    from streamdistill.cli import main
    from streamdistill.registry import load_stage_encoder

    assert main(["export", "C", "--profile", "tiny", "--to", str(tmp_path / "C")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["loads_with"] == "SentenceTransformer(path)" and out["attention"] == "causal"
    st = SentenceTransformer(str(tmp_path / "C"), device="cpu")  # plain modules: nothing but sentence-transformers
    encoder, _ = load_stage_encoder("C", TINY)
    assert st.max_seq_length == encoder.max_length
    ours, theirs = encoder.encode(TEXTS), st.encode(TEXTS, batch_size=4)
    assert float((1 - (ours * theirs).sum(1)).max()) <= 1e-5
    assert main(["export", "B", "--profile", "tiny", "--to", str(tmp_path / "B")]) == 0
    assert "trust_remote_code=True" in json.loads(capsys.readouterr().out)["loads_with"]
    assert main(["export", "nope", "--profile", "tiny", "--to", str(tmp_path / "x")]) == 2
