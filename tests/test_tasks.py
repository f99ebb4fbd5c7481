import mteb
import pytest

from streamdistill import data, tasks
from streamdistill.profiles import get_profile

from .conftest import manifest_rows


TINY, CPU = get_profile("tiny"), get_profile("cpu")

@pytest.mark.parametrize("name", tasks.OFFICIAL_TASKS)
def test_official_class_and_metadata(name):
    task = tasks.get_task(name, TINY)
    official = mteb.get_task(name)
    assert isinstance(task, type(official))
    assert task.metadata == official.metadata  # same name, main score, splits, evaluator settings


def test_unknown_task_lists_what_exists():
    with pytest.raises(tasks.TaskError, match="unknown task 'Nope'; available: SciFact"):
        tasks.get_task("Nope", TINY)
    with pytest.raises(tasks.TaskError, match="unknown task"):
        tasks.get_tasks("STSBenchmark,Nope", TINY)


def test_tiny_subsampling_is_deterministic_and_keeps_relevant_docs():
    a, b = tasks.get_task("SciFact", TINY), tasks.get_task("SciFact", TINY)
    a.load_data(), b.load_data()
    split = a.dataset["default"]["test"]
    assert split["queries"]["id"] == b.dataset["default"]["test"]["queries"]["id"]
    assert len(split["queries"]) == get_profile("tiny").task_max_samples
    corpus_ids = set(split["corpus"]["id"])
    assert all(d in corpus_ids for docs in split["relevant_docs"].values() for d in docs)
    assert len(corpus_ids) <= get_profile("tiny").task_max_corpus


def test_full_profile_loads_whole_splits():
    task = tasks.get_task("STSBenchmark", CPU)
    task.load_data()
    assert len(task.dataset["test"]) == manifest_rows("sts/STSBenchmark/test.jsonl")
    sci = tasks.get_task("SciFact", CPU)
    sci.load_data()
    assert len(sci.dataset["default"]["test"]["queries"]) == len(data.read_qrels("retrieval/SciFact/qrels/test.tsv"))
    assert len(sci.dataset["default"]["test"]["corpus"]) == manifest_rows("retrieval/SciFact/corpus.jsonl")


def test_classification_subset_and_integer_labels():
    task = tasks.get_task("AmazonCounterfactualClassification", CPU)
    assert task.hf_subsets == ["en"]
    task.load_data()
    assert set(task.dataset) == {"en"}
    assert len(task.dataset["en"]["test"]) == manifest_rows("classification/AmazonCounterfactualClassification/en/test.jsonl")
    assert set(task.dataset["en"]["train"]["label"]) == {0, 1}
    bank = tasks.get_task("Banking77Classification", CPU)
    bank.load_data()
    assert len(set(bank.dataset["train"]["label"])) == 77


def test_project_tasks_say_they_are_defined_here():
    mrpc = tasks.get_task("MRPC", CPU)
    clus = tasks.get_task("Banking77Clustering", CPU)
    assert mrpc.metadata.main_score == "max_ap" and "not an MTEB task" in mrpc.metadata.description
    assert clus.metadata.main_score == "v_measure" and "DERIVED HERE" in clus.metadata.description
    mrpc.load_data(), clus.load_data()
    assert len(mrpc.dataset["test"]) == manifest_rows("pairs/MRPC/test.jsonl")
    assert set(mrpc.dataset["test"]["labels"]) == {0, 1}
    assert len(clus.dataset["test"]) == manifest_rows("classification/Banking77Classification/default/test.jsonl")


def test_without_mirror_or_hub_named_tasks_fail_clearly(monkeypatch):
    from streamdistill.data import MirrorError

    monkeypatch.delenv("STREAMDISTILL_DATA_DIR")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MirrorError, match="needs the data mirror"):
        tasks.get_task("STSBenchmark", TINY)
    with pytest.warns(UserWarning, match="SYNTHETIC TASKS"):
        assert tasks.default_tasks() == tasks.SYNTHETIC_TASKS


def test_official_evaluator_settings_except_tiny_repetitions():
    assert tasks.get_task("Banking77Classification", CPU).n_experiments == mteb.get_task("Banking77Classification").n_experiments == 10
    assert tasks.get_task("Banking77Classification", TINY).n_experiments == get_profile("tiny").eval_experiments
    assert tasks.get_task("EmotionClassification", CPU).samples_per_label == 16  # mteb's own setting kept
