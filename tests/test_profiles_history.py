"""Version history: every save is a version; show, diff, and rollback (itself undoable)."""

from __future__ import annotations

import pytest

from profiles import store
from profiles.errors import ProfileNotFound
from statefiles.paths import profiles_dir

V1 = {
    "main.toml": "output_dir = '/o'\ndataset = 'dataset.toml'\n\n[adapter]\ntype = 'lora'\nrank = 32\n",
    "dataset.toml": "resolutions = [512]\n",
}


def test_list_show_diff_rollback() -> None:
    store.save("h", V1, "created", create=True)
    v2 = {**V1, "main.toml": V1["main.toml"].replace("rank = 32", "rank = 16")}
    store.save("h", v2, "lower rank")
    versions = store.list_versions("h")
    assert [(v.version, v.message) for v in versions] == [(1, "created"), (2, "lower rank")]
    assert all(v.timestamp.endswith("+00:00") for v in versions)
    assert store.read_version("h", 1) == V1
    diff = store.diff_versions("h", 1, 2)
    assert "--- v1/main.toml" in diff and "+++ v2/main.toml" in diff
    assert "-rank = 32" in diff and "+rank = 16" in diff
    assert "dataset.toml" not in diff  # unchanged files do not appear
    assert store.diff_versions("h", 2, 2) == ""

    back = store.rollback("h", 1)
    assert back.version.version == 3 and back.version.message == "rollback to v1"
    assert store.read_files("h") == V1
    # The rollback is itself a version, so it can be undone.
    store.rollback("h", 2)
    assert store.read_files("h") == v2
    assert len(store.list_versions("h")) == 4


def test_file_added_and_removed_between_versions() -> None:
    store.save("f", {"main.toml": "epochs = 1\n"}, create=True)
    store.save("f", V1)
    diff = store.diff_versions("f", 1, 2)
    assert "--- /dev/null" in diff and "+++ v2/dataset.toml" in diff
    store.rollback("f", 1)
    assert sorted(store.read_files("f")) == ["main.toml"]
    assert not (profiles_dir() / "f" / "dataset.toml").exists()


def test_incomplete_version_is_ignored_and_its_number_not_reused() -> None:
    store.save("c", V1, create=True)
    # A crash after writing the files but before meta.json leaves a folder without meta.json.
    (profiles_dir() / "c" / "history" / "v000002").mkdir()
    assert [v.version for v in store.list_versions("c")] == [1]
    assert store.save("c", V1, "after crash").version.version == 3


def test_missing_version_message() -> None:
    store.save("m", V1, create=True)
    with pytest.raises(ProfileNotFound, match="no version 7 .*versions 1..1"):
        store.read_version("m", 7)
