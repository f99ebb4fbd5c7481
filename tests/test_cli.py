import json
import subprocess
import sys

import pytest

from streamdistill.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "streamdistill.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--model", "sentence-transformers/all-MiniLM-L6-v2", "--tasks", "Nope", "--profile", "tiny"], "unknown task(s) Nope"),
    (["evaluate", "--model", "sentence-transformers/all-MiniLM-L6-v2", "--tasks", "STSBenchmark", "--profile", "huge"], "unknown profile 'huge'"),
    (["evaluate", "--model", "no-such-model", "--tasks", "STSBenchmark", "--profile", "tiny"], "unknown model 'no-such-model'"),
])
def test_bad_input_exits_2_with_one_line(args, message):
    proc = run(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("streamdistill: error:")


def test_evaluate_applies_profile_overrides_to_the_evaluation(monkeypatch, capsys):
    import streamdistill.evaluate as E
    import streamdistill.registry as R

    seen = {}
    monkeypatch.setattr(R, "resolve_model", lambda name, profile, **inference: seen.update(model=(profile, inference)) or name)
    monkeypatch.setattr(E, "evaluate_model", lambda model, tasks, profile, **kw: seen.update(eval=profile) or
                        {"model": model, "scores": {}})
    assert main(["evaluate", "--model", "C", "--tasks", "STSBenchmark", "--profile", "tiny",
                 "--set", "seed=2", "--set", "eval_experiments=1", "--set", "pooling=last", "--quiet"]) == 0
    model_profile, inference = seen["model"]
    # the profile is resolved once, overrides applied, and both the model and the evaluation get it;
    # the model also gets the inference setting
    assert model_profile is seen["eval"] and inference == {"pooling": "last"}
    assert seen["eval"].seed == 2 and seen["eval"].eval_experiments == 1 and seen["eval"].name == "tiny"


def test_evaluate_writes_out_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", "sentence-transformers/all-MiniLM-L6-v2", "--tasks", "STSBenchmark",
                 "--profile", "tiny", "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert set(result["scores"]) == {"STSBenchmark"} and 0 < result["scores"]["STSBenchmark"] <= 100


def test_data_check_passes_then_names_a_corrupt_file(mirror_copy, capsys):
    assert main(["data", "check"]) == 0
    target = mirror_copy / "pairs/MRPC/validation.jsonl"
    text = target.read_text()
    target.unlink()
    target.write_text(text.replace("1", "0", 1))
    assert main(["data", "check"]) == 2
    assert "corrupt file" in capsys.readouterr().err.strip().splitlines()[-1]


def test_leaf_student_trains_then_evaluates_against_its_teacher(tmp_path, capsys):
    assert main(["train", "leaf", "--profile", "tiny", "--set", "leaf_steps=5"]) == 0
    folder = json.loads(capsys.readouterr().out)["artifact"]
    out = tmp_path / "leaf.json"
    assert main(["evaluate", "--model", folder, "--teacher", "sentence-transformers/all-MiniLM-L6-v2",
                 "--tasks", "SciFact", "--profile", "tiny", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["scores"]) == set(result["teacher_scores"]) == set(result["asymmetric_scores"]) == {"SciFact"}
    assert result["retention"]["SciFact"] == pytest.approx(100 * result["scores"]["SciFact"] / result["teacher_scores"]["SciFact"])


def test_gap_closure_writes_per_seed_scores_the_gap_its_error_the_interval_and_resolved(tmp_path, monkeypatch, capsys):
    import streamdistill.pipeline as P

    base = {"A": 50.0, "A+Echo": 50.5, "B": 55.0, "C": 53.0, "C-base": 53.0, "C-fromA": 53.5, "A-continued": 51.0,
            "B-causal": 50.5}

    def fake(profile, models, tasks, seeds=None):
        return {m: {s: {t: base[m] + 0.2 * s * (m != "A") + 0.1 * (t == "MRPC") for t in tasks}
                    for s in (seeds or profile.seeds)} for m in models}

    monkeypatch.setattr(P, "seeded_scores", fake)
    out = tmp_path / "g.json"
    assert main(["gap-closure", "--profile", "tiny", "--out", str(out)]) == 0
    g = json.loads(out.read_text())
    assert set(g["per_seed"]) >= {"A", "B", "C"} and set(g["per_seed"]["A"]) == {"0", "1"}
    assert g["b_minus_a"]["mean"] == pytest.approx(5.1) and g["b_minus_a"]["se"] > 0
    assert len(g["gap_closure_interval"]) == 2 and g["resolved"] is True
    # per seed C − A = 3.0, 3.2 over B − A = 5.0, 5.2: Fieller's 48-69 % reaches the paper's 68.1 %
    assert g["gap_closure_interval"] == pytest.approx([0.4777, 0.6861], abs=1e-4) and g["closure_verdict"][0] == "holds"
    assert g["echo_tasks"] == ["STSBenchmark", "AmazonCounterfactualClassification", "MRPC", "Banking77Clustering"]
