"""Profile store: names, CRUD, resolve order, atomic saves, trash, secrets stripped on save."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from profiles import store
from profiles.document import load_profile
from profiles.errors import ProfileNotFound
from statefiles.paths import profiles_dir, secrets_path

MAIN = """# my chroma run
output_dir = '/data/out/e6ai_512'
dataset = 'train/e6ai_dataset_512.toml'   # relative to the main file
epochs = 10
save_every_n_epochs = 1

[model]
type = 'chroma'
dtype = 'bfloat16'

[adapter]
type = 'lora'
rank = 32
dtype = 'bfloat16'

[optimizer]
type = 'adamw_optimi'
lr = 2.5e-4
"""

DATASET = """resolutions = [512]
enable_ar_bucket = true
min_ar = 0.5
max_ar = 2.0
num_ar_buckets = 9

[[directory]]
path = '/data/e6ai'
num_repeats = 1
"""


def write_sample(root: Path, main: str = MAIN, dataset: str = DATASET) -> Path:
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train" / "e6ai_dataset_512.toml").write_text(dataset)
    path = root / "e6ai_512.toml"
    path.write_text(main)
    return path


def test_files_from_profile_points_main_at_stored_dataset(tmp_path: Path) -> None:
    files = store.files_from_profile(load_profile(write_sample(tmp_path)))
    assert sorted(files) == ["dataset.toml", "main.toml"]
    assert files["dataset.toml"] == DATASET
    # Only the dataset line changes; its comment and every other byte survive.
    # The value keeps its quoting (a literal string stays literal), whichever tomlkit is installed.
    expected = MAIN.replace("'train/e6ai_dataset_512.toml'", "'dataset.toml'")
    assert files["main.toml"] == expected


def test_create_load_list(tmp_path: Path) -> None:
    result = store.save_profile("e6ai-512", load_profile(write_sample(tmp_path)), "first", create=True)
    assert result.version.version == 1
    pdir = profiles_dir() / "e6ai-512"
    assert (pdir / "main.toml").is_file() and (pdir / "dataset.toml").is_file()
    profile = store.load_stored("e6ai-512")
    assert profile.name == "e6ai-512"
    assert profile.dataset is not None and profile.dataset.get("resolutions") == [512]
    infos = store.list_profiles()
    assert [(i.name, i.model_type, i.versions) for i in infos] == [("e6ai-512", "chroma", 1)]


def test_create_refuses_existing_and_save_refuses_missing(tmp_path: Path) -> None:
    files = store.files_from_profile(load_profile(write_sample(tmp_path)))
    store.save("a", files, create=True)
    with pytest.raises(store.ProfileExists, match="already exists"):
        store.save("a", files, create=True)
    with pytest.raises(ProfileNotFound, match="no stored profile named 'b'"):
        store.save("b", files)
    assert store.names() == ["a"]


@pytest.mark.parametrize(
    "bad", ["../evil", "a/b", ".hidden", "-rf", "", "a b", "x" * 65, "..", "a\x00b", "é"]
)
def test_bad_names_rejected(tmp_path: Path, bad: str) -> None:
    files = store.files_from_profile(load_profile(write_sample(tmp_path)))
    before = sorted(p.name for p in profiles_dir().parent.rglob("*"))
    with pytest.raises(store.InvalidName, match="invalid profile name"):
        store.save(bad, files, create=True)
    assert sorted(p.name for p in profiles_dir().parent.rglob("*")) == before


def test_bad_file_names_rejected() -> None:
    with pytest.raises(Exception, match="invalid profile file name"):
        store.save("ok", {"main.toml": "epochs = 1\n", "../x.toml": ""}, create=True)
    assert not store.exists("ok")


def test_resolve_path_wins_then_name_then_suggestions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save_profile("chroma-512", load_profile(write_sample(tmp_path)), create=True)
    assert store.resolve("chroma-512").name == "chroma-512"
    # A file of the same name in the working directory wins over the stored profile.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chroma-512").write_text("epochs = 3\n")
    assert store.resolve("chroma-512").main.get("epochs") == 3
    assert store.resolve(str(tmp_path / "e6ai_512.toml")).main.get("epochs") == 10
    with pytest.raises(ProfileNotFound, match="did you mean: chroma-512"):
        store.resolve("chroma-51")
    with pytest.raises(ProfileNotFound, match="file not found"):
        store.resolve("nope/main.toml")


def test_atomic_save_reader_sees_old_or_new(tmp_path: Path) -> None:
    files = store.files_from_profile(load_profile(write_sample(tmp_path)))
    store.save("atomic", files, create=True)
    variants = [
        files["main.toml"],
        files["main.toml"].replace("rank = 32", "rank = 16") + "# padding\n" * 500,
    ]
    target = profiles_dir() / "atomic" / "main.toml"
    seen: set[str] = set()
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                text = target.read_text()
            except FileNotFoundError:
                bad.append("<missing>")
                continue
            if text not in variants:
                bad.append(text[:80])
            seen.add(text)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            store.save("atomic", {**files, "main.toml": variants[i % 2]}, f"save {i}")
    finally:
        stop.set()
        thread.join()
    assert bad == []
    assert seen  # the reader did run
    assert len(store.list_versions("atomic")) == 41


def test_delete_is_recoverable(tmp_path: Path) -> None:
    store.save_profile("gone", load_profile(write_sample(tmp_path)), create=True)
    store.save("gone", store.read_files("gone"), "second")
    where = store.delete("gone")
    assert not store.exists("gone") and (where / "main.toml").is_file()
    with pytest.raises(ProfileNotFound):
        store.load_stored("gone")
    store.undelete("gone")
    assert store.exists("gone")
    assert [v.message for v in store.list_versions("gone")] == ["save", "second"]


def test_rename_keeps_history_copy_starts_new(tmp_path: Path) -> None:
    store.save_profile("one", load_profile(write_sample(tmp_path)), create=True)
    store.save("one", store.read_files("one"), "second")
    store.rename("one", "two")
    assert not store.exists("one") and len(store.list_versions("two")) == 2
    store.copy("two", "three")
    assert store.read_files("three") == store.read_files("two")
    assert [v.message for v in store.list_versions("three")] == ["copied from two"]
    with pytest.raises(store.ProfileExists):
        store.rename("three", "two")


def test_save_strips_secrets_into_secrets_store(tmp_path: Path) -> None:
    key = "0123456789abcdef0123456789abcdef01234567"
    main = MAIN + f"\n[monitoring]\nenable_wandb = true\nwandb_api_key = '{key}'\n"
    result = store.save_profile("s", load_profile(write_sample(tmp_path, main=main)), create=True)
    assert any("monitoring.wandb_api_key" in w for w in result.warnings)
    pdir = profiles_dir() / "s"
    for path in pdir.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(), path
    assert store.load_stored("s").main.get("monitoring.enable_wandb") is True
    assert key in secrets_path().read_text()
    assert stat.S_IMODE(os.stat(secrets_path()).st_mode) == 0o600


def test_secret_pasted_into_a_comment_is_masked() -> None:
    token = "hf_ZyXwVuTsRqPoNmLkJiHgFeDcBa987654"
    result = store.save("c", {"main.toml": f"epochs = 1  # my token {token}\n"}, create=True)
    assert store.read_files("c") == {"main.toml": "epochs = 1  # my token ***\n"}
    assert any("masked" in w for w in result.warnings)
    assert all(token not in p.read_text() for p in (profiles_dir() / "c").rglob("*") if p.is_file())


def test_semantic_diff_key_by_key(tmp_path: Path) -> None:
    from profiles.diff import diff_profiles, render_value

    left = load_profile(write_sample(tmp_path / "l"))
    main_r = (
        MAIN.replace("rank = 32", "rank = 32.0")
        .replace("epochs = 10\n", "")
        .replace("# my chroma run", "# x")
    )
    main_r += "\n[monitoring]\nenable_wandb = false\n"
    data_r = DATASET.replace("[512]", "[512, 768]") + "\n[[directory]]\npath = '/data/more'\n"
    right = load_profile(write_sample(tmp_path / "r", main=main_r, dataset=data_r))
    entries = {(e.file, e.key): e for e in diff_profiles(left, right)}
    assert set(entries) == {
        ("main", "adapter.rank"),  # 32 vs 32.0: TOML integer vs float is a real difference
        ("main", "epochs"),
        ("main", "monitoring.enable_wandb"),
        ("dataset", "resolutions"),
        ("dataset", "directory[1].path"),
    }
    assert entries[("main", "epochs")].change == "removed"
    assert entries[("main", "monitoring.enable_wandb")].change == "added"
    assert entries[("dataset", "resolutions")].to_dict()["right"] == [512, 768]
    assert render_value(None, present=False) == "<absent>"
    assert diff_profiles(left, left) == []


@given(st.text(min_size=0, max_size=80))
def test_any_accepted_name_stays_inside_the_store(name: str) -> None:
    try:
        store.check_name(name)
    except store.InvalidName:
        return
    root = profiles_dir().resolve()
    assert (root / name).resolve().parent == root
    assert not name.startswith((".", "-")) and "/" not in name and "\\" not in name


def test_eval_datasets_are_stored_beside_main(tmp_path: Path) -> None:
    main = MAIN + "\n[[eval_datasets]]\nname = 'val set'\nconfig = 'train/val.toml'\n"
    path = write_sample(tmp_path, main=main)
    (tmp_path / "train" / "val.toml").write_text("resolutions = [512]\n")
    files = store.files_from_profile(load_profile(path))
    assert sorted(files) == ["dataset.toml", "eval-val_set.toml", "main.toml"]
    assert "config = 'eval-val_set.toml'" in files["main.toml"]
    store.save("ev", files, create=True)
    loaded = store.load_stored("ev")
    assert list(loaded.eval_datasets) == ["val set"]
    assert loaded.eval_datasets["val set"].get("resolutions") == [512]
