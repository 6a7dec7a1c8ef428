import json
import os
import subprocess
import sys
import time

import pytest

from label_studio_ale.model_store import ModelStore


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "best.pt"
    path.write_bytes(b"weights-bytes")
    return path


def test_versions_are_numbered_complete_and_promoted_atomically(tmp_path, weights):
    store = ModelStore(tmp_path / "models", 7)
    assert store.versions() == [] and store.current() is None
    first = store.add(weights, ["bird", "nest"], {"map50": 0.5}, {"epochs": 3})
    second = store.add(weights, ["bird", "nest", "egg"], {"map50": 0.6}, {"epochs": 3})
    assert (first.name, second.name) == ("v0001", "v0002")
    assert store.current() is None  # adding does not serve
    store.promote(first.name)
    assert store.current().name == "v0001" and store.current().classes == ("bird", "nest")
    store.promote(second.name)
    current = store.current()
    assert current.name == "v0002" and current.metrics == {"map50": 0.6} and current.weights.read_bytes() == b"weights-bytes"
    assert [v.name for v in store.versions()] == ["v0001", "v0002"]
    assert not [p for p in store.dir.iterdir() if p.name.startswith(".")]  # no temp files left


def test_versions_past_9999_keep_their_order(tmp_path, weights):
    store = ModelStore(tmp_path / "models", 7)
    store.add(weights, ["bird"], {}, {}).path.rename(store.dir / "v9999")
    assert store.add(weights, ["bird"], {}, {}).name == "v10000"
    assert [v.name for v in store.versions()] == ["v9999", "v10000"]


def test_incomplete_versions_are_invisible_and_never_promoted(tmp_path, weights):
    store = ModelStore(tmp_path, 1)
    good = store.add(weights, ["bird"], {}, {})
    store.promote(good.name)
    broken = store.dir / "v0002"
    broken.mkdir()
    (broken / "weights.pt").write_bytes(b"half")
    with pytest.raises(LookupError, match="incomplete"):
        store.promote("v0002")
    assert store.current().name == good.name
    with pytest.raises(ValueError, match="not a version name"):
        store.get("../../etc")


def test_a_version_with_an_unreadable_record_is_left_out_and_never_promoted(tmp_path, weights):
    """A record cut to nothing (a power loss, a full disk) reads as an incomplete version, not as a JSON traceback."""
    store = ModelStore(tmp_path, 1)
    good = store.add(weights, ["bird"], {}, {})
    cut = store.add(weights, ["bird"], {}, {})
    (cut.path / "metrics.json").write_text("")
    assert [v.name for v in store.versions()] == [good.name]
    with pytest.raises(LookupError, match=r"model version v0002 .* has an unreadable record .*train again, or serve another version: ale models --project 1 --promote"):
        store.promote(cut.name)


def test_a_version_and_the_pointer_are_on_disk_before_they_are_named(tmp_path, weights, monkeypatch):
    """Every file of a version, its folder and the store's folder are flushed to disk (fsync) around the renames."""
    import label_studio_ale.model_store as model_store

    flushed = []
    real_fsync = os.fsync
    monkeypatch.setattr(model_store.os, "fsync", lambda fd: (flushed.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    store = ModelStore(tmp_path / "models", 3)
    version = store.add(weights, ["bird"], {"map50": 0.5}, {})
    names = [os.path.basename(p) for p in flushed]
    assert {"weights.pt", "classes.json", "metrics.json", "manifest.json"} <= set(names)
    assert any(n.startswith(".incoming-") for n in names), "the version's folder, before its rename"
    assert flushed[-1] == str(store.dir), "the store's folder, after the rename"
    flushed.clear()
    store.promote(version.name)
    assert flushed[-1] == str(store.dir) and len(flushed) == 2, "the pointer's file, then the folder holding its new name"


def test_a_crash_while_writing_a_version_leaves_the_current_pointer_complete(tmp_path, weights):
    """Kill a writer midway (SIGKILL in the middle of add): current still names the complete v0001."""
    store = ModelStore(tmp_path, 3)
    store.promote(store.add(weights, ["bird"], {"map50": 0.4}, {}).name)
    big = tmp_path / "big.pt"
    big.write_bytes(os.urandom(64 * 1024 * 1024))
    script = (
        "import os, shutil, sys\n"
        "from label_studio_ale.model_store import ModelStore\n"
        "real = shutil.copyfile\n"
        "def dying_copy(src, dst):\n"
        "    real(src, dst)\n"
        "    os.kill(os.getpid(), 9)  # die after the weights, before the metadata\n"
        "shutil.copyfile = dying_copy\n"
        f"store = ModelStore({str(tmp_path)!r}, 3)\n"
        f"v = store.add({str(big)!r}, ['bird'], {{}}, {{}})\n"
        "store.promote(v.name)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert run.returncode == -9
    assert store.current().name == "v0001" and store.current().metrics == {"map50": 0.4}
    assert [v.name for v in store.versions()] == ["v0001"]
    assert json.loads((store.dir / "v0001" / "classes.json").read_text()) == ["bird"]


def test_a_weights_folder_is_stored_whole(tmp_path):
    """Adapters whose models are folders (a SavedModel) store them as the version's `model/`."""
    export = tmp_path / "export"
    (export / "variables").mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"graph")
    (export / "variables" / "variables.index").write_bytes(b"index")
    store = ModelStore(tmp_path / "models", 2)
    version = store.add(export, ["bird"], {"map50": 0.1}, {})
    store.promote(version.name)
    weights = store.current().weights
    assert weights == version.path / "model" and weights.is_dir()
    assert (weights / "saved_model.pb").read_bytes() == b"graph"
    assert (weights / "variables" / "variables.index").read_bytes() == b"index"


def test_models_load_only_from_inside_the_store(tmp_path, weights):
    """A version that is a link to elsewhere (or a pointer naming a path) is never loaded."""
    store = ModelStore(tmp_path / "models", 4)
    store.promote(store.add(weights, ["bird"], {}, {}).name)
    outside = tmp_path / "elsewhere" / "v0009"
    outside.mkdir(parents=True)
    for name in ("classes.json", "metrics.json", "manifest.json"):
        (outside / name).write_text("{}" if name != "classes.json" else '["bird"]')
    (outside / "weights.pt").write_bytes(b"not ours")
    (store.dir / "v0009").symlink_to(outside, target_is_directory=True)
    with pytest.raises(LookupError, match="points outside the model store"):
        store.get("v0009")
    with pytest.raises(LookupError, match="points outside the model store"):
        store.promote("v0009")
    assert [v.name for v in store.versions()] == ["v0001"]  # listed nowhere either
    (store.dir / "current").write_text("v0009\n")  # a tampered pointer
    with pytest.raises(LookupError, match="outside the model store"):
        store.current()
    (store.dir / "current").write_text("../../elsewhere/v0009\n")
    with pytest.raises(ValueError, match="not a version name"):
        store.current()


@pytest.mark.parametrize("folder", [False, True], ids=["weights file", "weights folder"])
def test_weights_that_link_out_of_the_store_are_refused(tmp_path, weights, folder):
    """A complete version whose weights (or a file inside a weights folder) link elsewhere is never loaded."""
    store = ModelStore(tmp_path / "models", 5)
    store.promote(store.add(weights, ["bird"], {}, {}).name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "evil.pt").write_bytes(b"a pickle from outside")
    if folder:
        export = tmp_path / "export"
        export.mkdir()
        (export / "saved_model.pb").write_bytes(b"graph")
        linked = store.add(export, ["bird"], {}, {})
        (linked.path / "model" / "variables").symlink_to(elsewhere, target_is_directory=True)
    else:
        linked = store.add(weights, ["bird"], {}, {})
        (linked.path / "weights.pt").unlink()
        (linked.path / "weights.pt").symlink_to(elsewhere / "evil.pt")
    with pytest.raises(LookupError, match="is a link"):
        store.get(linked.name)
    with pytest.raises(LookupError, match="is a link"):
        store.promote(linked.name)
    assert [v.name for v in store.versions()] == ["v0001"]
    (store.dir / "current").write_text(f"{linked.name}\n")  # a tampered pointer to it
    with pytest.raises(LookupError, match="is a link"):
        store.current()


def test_what_a_killed_training_left_is_removed_and_versions_are_kept(tmp_path, weights):
    store = ModelStore(tmp_path, 2)
    kept = store.add(weights, ["bird"], {}, {})
    store.promote(kept.name)
    (store.dir / ".work-1700000000000" / "images").mkdir(parents=True)
    (store.dir / ".incoming-abc").mkdir()
    (store.dir / ".incoming-abc" / "weights.pt").write_bytes(b"half")
    (store.dir / ".current-xyz").write_text("v0009")
    (store.dir / ".last-version-xyz").write_text("v0009")
    (store.dir / "images").mkdir()  # the training image cache stays
    hour_ago = time.time() - 3600
    for name in (".work-1700000000000", ".incoming-abc", ".current-xyz", ".last-version-xyz"):
        os.utime(store.dir / name, (hour_ago, hour_ago))
    assert store.remove_leftovers() == [".current-xyz", ".incoming-abc", ".last-version-xyz", ".work-1700000000000"]
    assert sorted(p.name for p in store.dir.iterdir()) == ["current", "images", "last-version", "v0001"]
    assert store.current().name == "v0001" and store.remove_leftovers() == []
    assert ModelStore(tmp_path, 99).remove_leftovers() == []  # a project with no folder yet


def test_a_version_removed_by_hand_never_has_its_name_given_again(tmp_path, weights):
    """The adapter cache, the detection store and the served-queue record know a model by its name: a new model
    named like a removed one would be taken for it (its cached weights served, its stored detections reused)."""
    import shutil

    store = ModelStore(tmp_path, 7)
    store.add(weights, ["bird"], {}, {})
    store.promote(store.add(weights, ["bird"], {}, {}).name)
    shutil.rmtree(store.dir / "v0002")  # the bad newest version removed by hand
    assert store.add(weights, ["bird"], {}, {}).name == "v0003"
    for name in ("v0003", "v0001"):
        shutil.rmtree(store.dir / name)
    assert store.add(weights, ["bird"], {}, {}).name == "v0004", "nothing left on disk: the mark alone remembers"
    assert (store.dir / "last-version").read_text() == "v0004\n"


def test_a_store_older_than_the_mark_numbers_from_its_folders(tmp_path, weights):
    """A store written before `last-version` existed, or one whose mark was edited by hand, counts its folders."""
    store = ModelStore(tmp_path, 7)
    store.add(weights, ["bird"], {}, {}).path.rename(store.dir / "v0041")
    (store.dir / "last-version").unlink()
    assert store.add(weights, ["bird"], {}, {}).name == "v0042"
    (store.dir / "last-version").write_text("garbage\n")
    assert store.add(weights, ["bird"], {}, {}).name == "v0043"
    (store.dir / "last-version").write_text("v0100\n")  # a mark above the folders wins
    assert store.add(weights, ["bird"], {}, {}).name == "v0101"


def test_a_refused_promotion_is_recorded_in_place_and_whole(tmp_path, weights):
    store = ModelStore(tmp_path, 7)
    version = store.add(weights, ["bird"], {"map50": 0.5}, {"epochs": 3, "promotion": {"promoted": True, "reason": "first"}})
    again = store.record_promotion(version.name, {"promoted": False, "reason": "the lock lapsed"})
    assert again.manifest["promotion"] == {"promoted": False, "reason": "the lock lapsed"} and again.manifest["epochs"] == 3
    assert store.get(version.name).manifest == again.manifest and sorted(p.name for p in version.path.iterdir()) == [
        "classes.json", "manifest.json", "metrics.json", "weights.pt"
    ]


def test_the_files_of_a_training_that_still_runs_are_not_removed(tmp_path, weights):
    """A training whose lock lapsed (Redis restarted) goes on; the next one, holding the lock, must leave its files."""
    store = ModelStore(tmp_path, 3)
    store.add(weights, ["bird"], {}, {})
    with ModelStore.kept_in_use(store.dir / ".work-1", every=0.05) as running:
        (running / "run").mkdir()
        old = time.time() - 3600
        os.utime(running, (old, old))  # a long fine-tune writes below it only: the touches keep it fresh
        (store.dir / ".incoming-x").mkdir()  # a version being copied in now
        (store.dir / ".work-0").mkdir()
        os.utime(store.dir / ".work-0", (old, old))  # a killed training's, untouched for an hour
        deadline = time.time() + 5
        while running.stat().st_mtime < old + 1800 and time.time() < deadline:
            time.sleep(0.02)
        assert store.remove_leftovers() == [".work-0"]
        assert running.is_dir() and (store.dir / ".incoming-x").is_dir()
    assert store.remove_leftovers(older_than=0) == [".incoming-x", ".work-1"]


def test_a_manifest_can_name_the_version_it_is_stored_as(tmp_path, weights):
    store = ModelStore(tmp_path, 5)
    store.add(weights, ["bird"], {}, {})
    version = store.add(weights, ["bird"], {}, lambda name: {"promotion": {"reason": f"`ale models --promote {name}` serves it"}})
    assert version.name == "v0002" and version.manifest["promotion"]["reason"] == "`ale models --promote v0002` serves it"
