"""Property test: mutated profiles never make load/validate raise anything but ProfileError."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiles.document import Profile, TomlFile, join_keypath, load_profile
from profiles.errors import ProfileError
from profiles.templates import TEMPLATES_DIR
from profiles.validate import Problem, validate_profile

CORPUS = Path(__file__).resolve().parent / "corpus"
BASES = sorted((CORPUS / "main").glob("*.toml")) + sorted(TEMPLATES_DIR.glob("*/main.toml"))

VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            "<PATH TO X FOLDER>",
            "float8",
            "nf4",
            "chroma",
            "Chroma",
            "sd15",
            "prodigy",
            "unsloth",
            "/",
            "..",
            "~",
        ]
    ),
    st.lists(st.integers(min_value=-3, max_value=2000), max_size=5),
    st.lists(st.lists(st.integers(min_value=0, max_value=2000), max_size=3), max_size=4),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(
        st.sampled_from(["path", "name", "config", "type", "x"]), st.text(max_size=6), max_size=3
    ),
    st.lists(
        st.dictionaries(st.sampled_from(["path", "name", "config", "type"]), st.text(max_size=6), max_size=3),
        max_size=2,
    ),
)
JUNK = st.text(alphabet="[]{}=\"'#\n ,.abc_123-", min_size=1, max_size=6)


def leaf_keys(node: Any, prefix: list[str | int]) -> list[str]:
    keys = [join_keypath(prefix)] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            keys.extend(leaf_keys(v, [*prefix, str(k)]))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            keys.extend(leaf_keys(v, [*prefix, i]))
    return keys


def mutate(data: st.DataObject, toml: TomlFile) -> str:
    """One to three edits through the document API, or a raw text edit."""
    text = toml.dumps()
    if data.draw(st.integers(0, 4)) == 0:
        pos = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 8))
        return text[:pos] + data.draw(JUNK) + text[pos + cut :]
    for _ in range(data.draw(st.integers(1, 3))):
        keys = leaf_keys(toml.data(), [])
        action = data.draw(st.sampled_from(["set", "delete", "add"]))
        try:
            if action == "set" and keys:
                toml.set(data.draw(st.sampled_from(keys)), data.draw(VALUES))
            elif action == "delete" and keys:
                toml.delete(data.draw(st.sampled_from(keys)))
            else:
                table = data.draw(st.sampled_from(["", "model.", "adapter.", "optimizer.", "monitoring."]))
                name = data.draw(
                    st.sampled_from(["alpha", "dtype", "type", "rank", "path", "resolutions", "zz"])
                )
                toml.set(table + name, data.draw(VALUES))
        except ProfileError:
            pass
        except (TypeError, ValueError, KeyError, IndexError, AttributeError):
            # tomlkit refuses some edits (a key inside an array, a table in an inline table): not our code
            # under test, so that mutation is simply skipped.
            pass
    return toml.dumps()


def check(problems: list[Problem]) -> None:
    assert isinstance(problems, list)
    for problem in problems:
        assert problem.severity in ("error", "warning")
        assert isinstance(str(problem), str) and problem.key is not None
        assert problem.line is None or problem.line >= 1


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_profiles_never_crash_the_validator(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(BASES))
    profile = load_profile(base)
    assert profile.dataset is not None
    main = TomlFile.from_text(profile.main.dumps())
    main.set("dataset", "dataset.toml")  # the copy sits beside the main file in the temp folder
    texts = {"main.toml": main.dumps(), "dataset.toml": profile.dataset.dumps()}
    target = data.draw(st.sampled_from(sorted(texts)))
    texts[target] = mutate(data, TomlFile.from_text(texts[target]))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, text in texts.items():
            (root / name).write_text(text)
        try:
            loaded = load_profile(root / "main.toml")
        except ProfileError:
            return
        backend = data.draw(st.sampled_from(["diffusion-pipe", "builtin", "auto"]))
        check_paths = data.draw(st.sampled_from(["error", "warn", "off"]))
        gpus = data.draw(st.one_of(st.none(), st.integers(1, 8)))
        check(validate_profile(loaded, backend=backend, check_paths=check_paths, num_gpus=gpus))


@settings(max_examples=60, deadline=None)
@given(text=st.text(alphabet="[]{}=\"'#\n ,.abcdeimnoprsty_0123456789<>-", max_size=200))
def test_arbitrary_text_is_a_profile_error_or_problems(text: str) -> None:
    try:
        toml = TomlFile.from_text(text, source="fuzz.toml")
    except ProfileError:
        return
    check(validate_profile(Profile(main=toml), check_paths="error"))


@settings(max_examples=60, deadline=None)
@given(
    value=VALUES,
    key=st.sampled_from(
        [
            "epochs",
            "model",
            "model.type",
            "dataset",
            "eval_datasets",
            "adapter",
            "optimizer",
            "monitoring",
            "resolutions",
            "directory",
            "directory[0].path",
            "model.text_encoders",
            "optimizer.betas",
        ]
    ),
)
def test_any_value_at_a_structural_key(value: Any, key: str) -> None:
    base = TomlFile.load(TEMPLATES_DIR / "chroma-e6ai-512" / "main.toml")
    dataset = TomlFile.load(TEMPLATES_DIR / "chroma-e6ai-512" / "dataset.toml")
    try:
        (dataset if key in ("resolutions", "directory", "directory[0].path") else base).set(key, value)
    except (ProfileError, TypeError, ValueError, KeyError, AttributeError):
        return
    reloaded_main = TomlFile.from_text(base.dumps(), source="main.toml")
    reloaded_ds = TomlFile.from_text(dataset.dumps(), source="dataset.toml")
    check(validate_profile(Profile(main=reloaded_main, dataset=reloaded_ds), check_paths="warn", num_gpus=3))
