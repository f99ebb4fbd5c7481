import json

import pytest
import torch

from streamdistill import artifacts as A


def test_atomic_write_replaces_whole_files(tmp_path):
    path = A.atomic_write_json(tmp_path / "x" / "a.json", {"b": 1})
    assert json.loads(path.read_text()) == {"b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temporary left


def test_cached_builds_once_and_rebuilds_on_config_change(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "w.txt").write_text("x")
        return {"n": len(calls)}

    first = A.cached("stage", {"a": 1}, build, root=tmp_path)
    again = A.cached("stage", {"a": 1}, build, root=tmp_path)
    other = A.cached("stage", {"a": 2}, build, root=tmp_path)
    assert first == again != other and len(calls) == 2
    assert A.read_done(first)["summary"] == {"n": 1}


def test_interrupted_build_leaves_nothing_loadable(tmp_path):
    def build(folder):
        (folder / "half.txt").write_text("x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        A.cached("stage", {"a": 1}, build, root=tmp_path)
    assert not (tmp_path / "stage" / A.config_hash({"a": 1})).exists()
    assert list((tmp_path / "stage").iterdir()) == []


def test_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "f").mkdir()
    with pytest.raises(A.ArtifactError, match="incomplete"):
        A.read_done(tmp_path / "f")


def test_tensors_roundtrip_and_corruption(tmp_path):
    path = A.save_tensors(tmp_path / "w.safetensors", {"w": torch.arange(6.0).view(2, 3)})
    assert torch.equal(A.load_tensors(path)["w"], torch.arange(6.0).view(2, 3))
    path.write_bytes(path.read_bytes()[:20])  # a write cut short
    with pytest.raises(A.ArtifactError, match="corrupt weights file"):
        A.load_tensors(path)
    with pytest.raises(A.ArtifactError, match="missing"):
        A.load_tensors(tmp_path / "nope.safetensors")


def test_config_hash_is_order_free():
    assert A.config_hash({"a": 1, "b": 2}) == A.config_hash({"b": 2, "a": 1})
    assert A.config_hash({"a": 1}) != A.config_hash({"a": 2})


@pytest.mark.parametrize("main", [True, False])
def test_only_the_main_process_publishes_and_all_wait(tmp_path, monkeypatch, main):
    class State:  # what accelerate's PartialState offers under `accelerate launch`
        is_main_process = main
        waited = 0

        def wait_for_everyone(self):
            State.waited += 1

    monkeypatch.setattr(A, "multi_process_state", lambda: State())
    built = []
    folder = A.cached("s", {"a": 1}, lambda tmp: built.append(tmp) or (tmp / "w.txt").write_text("x") and {},
                      root=tmp_path)
    # every process decides together (barrier), builds (training is collective), then waits for the folder
    assert built and State.waited == 2
    assert (folder / "w.txt").exists() == main and A.is_complete(folder) == main
    assert not list((tmp_path / "s").glob(".*.tmp"))  # a non-main process leaves no temporary folder
    if main:  # a cache hit still meets the others at the decision barrier, and builds nothing
        A.cached("s", {"a": 1}, lambda tmp: built.append(tmp), root=tmp_path)
        assert len(built) == 1 and State.waited == 3


def test_single_process_needs_no_accelerate_state(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert A.multi_process_state() is None


def _zero_64_bytes(path):
    """What a bad copy does: 64 zeroed bytes inside the data, the size unchanged (a truncation check passes)."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(raw))


def test_done_records_weight_hashes_and_a_cache_hit_checks_them(tmp_path):
    def build(folder):
        A.save_tensors(folder / "w.safetensors", {"w": torch.arange(4096.0)})
        return {}

    folder = A.cached("stage", {"a": 1}, build, root=tmp_path)
    recorded = A.read_done(folder)["files"]
    assert recorded == {"w.safetensors": A.sha256_file(folder / "w.safetensors")}
    _zero_64_bytes(folder / "w.safetensors")
    with pytest.raises(A.ArtifactError) as info:
        A.cached("stage", {"a": 1}, lambda f: pytest.fail("a corrupt artifact is reported, not rebuilt"), root=tmp_path)
    message = str(info.value)
    assert "\n" not in message and "corrupt artifact file" in message and "w.safetensors" in message
    assert f"delete {folder} to rebuild it" in message


def test_an_artifact_without_recorded_hashes_is_rebuilt(tmp_path):
    calls = []

    def build(folder):
        calls.append(1)
        (folder / "w.npy").write_bytes(b"x")
        return {}

    folder = A.cached("stage", {"a": 1}, build, root=tmp_path)
    done = A.read_done(folder)
    del done["files"]  # what an older version of the cache wrote
    (folder / A.DONE).write_text(json.dumps(done))
    assert A.cached("stage", {"a": 1}, build, root=tmp_path) == folder and len(calls) == 2
    assert "files" in A.read_done(folder)


def test_loading_an_encoder_inside_an_artifact_checks_its_weights(tmp_path):
    from streamdistill.encoder import Encoder
    from streamdistill.testing import tiny_qwen2, tiny_tokenizer

    tok = tiny_tokenizer()
    folder = A.cached("s", {"a": 1}, lambda tmp: Encoder(tiny_qwen2(len(tok)), tok).save(tmp / "model") and {},
                      root=tmp_path)
    Encoder.load(folder / "model", device="cpu")
    weights = folder / "model" / "backbone" / "model.safetensors"
    _zero_64_bytes(weights)
    with pytest.raises(A.ArtifactError, match=r"corrupt artifact file .*backbone/model.safetensors .*delete .* to rebuild it"):
        Encoder.load(folder / "model", device="cpu")


def test_checkpoints_of_a_build_are_removed_once_it_is_published(tmp_path):
    def build(folder):
        ckpt = A.checkpoint_dir("stage", {"a": 1}, tmp_path)
        ckpt.mkdir(parents=True)
        (ckpt / "step-000001").mkdir()
        return {}

    A.cached("stage", {"a": 1}, build, root=tmp_path)
    assert not A.checkpoint_dir("stage", {"a": 1}, tmp_path).exists()


def test_processes_sharing_a_cache_build_an_artifact_once(tmp_path):
    """Two processes ask for the same artifact at once: one builds it, the other waits and reads it."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from streamdistill import artifacts as A

        def build(folder):
            with open({str(tmp_path / "builds.log")!r}, "a") as log:
                log.write(sys.argv[1] + "\\n")
            time.sleep(1.5)  # long enough for the other process to arrive while this one builds
            (folder / "w.npy").write_bytes(b"x")

        print(A.cached("stage", {{"a": 1}}, build, root=Path({str(tmp_path)!r})))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(tmp_path / "stage" / A.config_hash({"a": 1}))
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 1
