"""Built-in templates: metadata, help text, and every template validates once its placeholders are filled."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from profiles import model_types as mt
from profiles.backend_choice import choose_backend
from profiles.document import TomlFile, load_profile
from profiles.errors import ProfileNotFound
from profiles.rules.placeholders import PLACEHOLDER
from profiles.templates import (
    TEMPLATES_DIR,
    default_template,
    field_help,
    get_template,
    list_templates,
    load_template,
    normalize_keypath,
    template_texts,
)
from profiles.validate import has_errors, validate_profile

NAMES = [info.name for info in list_templates()]
IN_TEXT = re.compile(r"<(?:PATH TO|DEMO_)[^<>\n]*>")  # a placeholder inside a TOML line


def test_the_expected_templates_exist() -> None:
    types = {info.model_type for info in list_templates()}
    required = {
        "chroma",
        "sdxl",
        "flux",
        "sd3",
        "lumina_2",
        "wan",
        "ltx-video",
        "hunyuan-video",
        "qwen_image",
        "sd15",
    }
    assert required <= types
    assert {"chroma-e6ai-512", "chroma-e6ai-1024", "sdxl-single-file", "demo-tiny"} <= set(NAMES)
    sdxl = [i for i in list_templates() if i.model_type == "sdxl"]
    keys = {
        k
        for i in sdxl
        for k in ("model.checkpoint_path", "model.diffusers_path")
        if load_template(i.name).main.has(k)
    }
    assert keys == {"model.checkpoint_path", "model.diffusers_path"}  # one single-file, one diffusers folder


def test_default_is_the_chroma_512_profile() -> None:
    defaults = [i.name for i in list_templates() if i.default]
    assert defaults == ["chroma-e6ai-512"] and default_template().name == "chroma-e6ai-512"


BUILTIN_ONLY = {"sdxl-diffusers"}  # a type both backends train, in a shape only the built-in trainer reads


@pytest.mark.parametrize("name", NAMES)
def test_metadata_matches_the_files(name: str) -> None:
    info = get_template(name)
    profile = load_template(name)
    assert profile.main.get("model.type") == info.model_type
    # sdxl-diffusers is the built-in trainer's: diffusion-pipe's sdxl loads only a checkpoint_path file.
    assert mt.backend_supports(info.backend, info.model_type)
    model_keys = [k for k, v in profile.main.data()["model"].items() if v]
    with_checkout = choose_backend(info.model_type, model_keys, checkout="/opt/diffusion-pipe").backend
    assert (info.backend == "builtin") == (name in BUILTIN_ONLY or with_checkout == "builtin")
    assert info.description and "\n" not in info.description and len(info.description) < 100
    assert profile.dataset is not None and profile.main.get("dataset") == "dataset.toml"
    for key in info.essential_for("main"):
        assert profile.main.has(key), f"{name}: essential {key} is not in main.toml"
        assert field_help(key), f"no help for {key}"
    for key in info.essential_for("dataset"):
        assert profile.dataset.has(key), f"{name}: essential dataset:{key} is not in dataset.toml"
        assert field_help(f"dataset:{key}"), f"no help for dataset:{key}"
    # Easy mode must show every placeholder the user has to fill in (demo-tiny's are filled by `dpdeck demo`).
    if name != "demo-tiny":
        holes = {k for k, v in _leaves(profile.main.data()) if isinstance(v, str) and PLACEHOLDER.search(v)}
        assert holes <= set(info.essential_for("main")), holes


@pytest.mark.parametrize("name", NAMES)
def test_template_validates_apart_from_placeholders(name: str) -> None:
    info = get_template(name)
    problems = validate_profile(load_template(name), backend=info.backend, check_paths="off")
    assert not has_errors(problems), [str(p) for p in problems]
    assert all(p.code == "placeholder" for p in problems), [str(p) for p in problems]
    # The other backend rejects exactly the types it cannot train.
    other = "builtin" if info.backend == "diffusion-pipe" else "diffusion-pipe"
    cross = validate_profile(load_template(name), backend=other, check_paths="off")
    assert has_errors(cross) is (not mt.backend_supports(other, info.model_type) or name in BUILTIN_ONLY)


@pytest.mark.parametrize("name", NAMES)
def test_template_with_placeholders_filled_is_clean_on_the_gpu_box(name: str, tmp_path: Path) -> None:
    """Replace every placeholder with a real file or folder: zero problems with check_paths='error'."""
    info = get_template(name)
    texts = template_texts(name)
    counter = 0

    def real_path(match: re.Match[str]) -> str:
        nonlocal counter
        counter += 1
        text = match.group(0)
        target = tmp_path / f"p{counter}"
        if " FILE" in text or text.endswith(".safetensors>"):
            target.write_bytes(b"\0")
        else:
            target.mkdir()
        return str(target)

    for fname, text in texts.items():
        (tmp_path / fname).write_text(IN_TEXT.sub(real_path, text))
    profile = load_profile(tmp_path / "main.toml")
    problems = validate_profile(profile, backend=info.backend, check_paths="error")
    assert problems == [], [str(p) for p in problems]
    assert counter >= 2  # at least the output folder and the image folder were placeholders


@pytest.mark.parametrize("name", NAMES)
def test_no_secrets_in_templates(name: str) -> None:
    for text in template_texts(name).values():
        assert "wandb_api_key" not in TomlFile.from_text(text).dumps().replace(
            "dpdeck secrets set wandb_api_key", ""
        )
        assert not re.search(r"\b[0-9a-f]{40}\b|hf_[A-Za-z0-9]{20,}", text)
    main = load_template(name).main
    assert main.get("monitoring.enable_wandb", False) is False


def test_chroma_templates_keep_the_users_settings() -> None:
    small, big = load_template("chroma-e6ai-512"), load_template("chroma-e6ai-1024")
    for profile in (small, big):
        assert (
            profile.main.get("model.transformer_dtype") == "float8"
            and profile.main.get("model.flux_shift") is True
        )
        assert profile.main.get("adapter.rank") == 32 and profile.main.get("optimizer.type") == "adamw_optimi"
        assert profile.main.get("optimizer.lr") == 2.5e-4 and profile.main.get("optimizer.betas") == [
            0.9,
            0.99,
        ]
        assert profile.main.get("monitoring.wandb_tracker_name") == "e6ai-lora"
        assert (
            profile.dataset is not None and profile.dataset.get("directory[0].caption_prefix") == "by e6ai, "
        )
        assert profile.dataset.get("num_ar_buckets") == 9 and profile.dataset.get("shuffle_tags") is True
    assert small.main.get("micro_batch_size_per_gpu") == 4 and big.main.get("micro_batch_size_per_gpu") == 1
    assert small.dataset.get("resolutions") == [512] and big.dataset.get("resolutions") == [1024]  # type: ignore[union-attr]
    assert "chroma-unlocked-v47" in small.main.get("model.transformer_path")
    assert "chroma-unlocked-v50" in big.main.get("model.transformer_path")
    assert small.main.get("model.diffusers_path") == "<PATH TO flux_schnell_diffusers FOLDER>"


def test_demo_tiny_is_tiny_and_substitutable() -> None:
    profile = load_template("demo-tiny")
    main, dataset = profile.main, profile.dataset
    assert dataset is not None
    assert main.get("model.type") == "sd15" and get_template("demo-tiny").backend == "builtin"
    # Tiny enough for a CPU: small images, small batch, rank 4, a plain optimizer.
    assert dataset.get("resolutions")[0] <= 64 and main.get("micro_batch_size_per_gpu") <= 2
    assert (
        main.get("epochs") <= 16 and main.get("adapter.rank") == 4 and main.get("optimizer.type") == "adamw"
    )
    # It saves at least once, at the end.
    assert main.get("epochs") % main.get("save_every_n_epochs") == 0
    text = main.dumps() + dataset.dumps()
    assert {"<DEMO_MODEL_DIR>", "<DEMO_DATASET_DIR>", "<DEMO_OUTPUT_DIR>"} == set(
        re.findall(r"<DEMO_\w+>", text)
    )


def test_demo_tiny_matches_the_demo_code_copy() -> None:
    """engine/demo.py keeps a fallback copy; the two must train the same run (its test expects epoch16)."""
    demo = pytest.importorskip("engine.demo")
    ours = load_template("demo-tiny")
    theirs_main = TomlFile.from_text(demo.DEMO_MAIN).data()
    theirs_dataset = TomlFile.from_text(demo.DEMO_DATASET).data()
    assert ours.main.data() == theirs_main
    assert ours.dataset is not None and ours.dataset.data() == theirs_dataset


def test_load_template_returns_an_independent_copy() -> None:
    first = load_template("sd15")
    first.main.set("epochs", 999)
    assert load_template("sd15").main.get("epochs") != 999


def test_unknown_template_suggests() -> None:
    with pytest.raises(ProfileNotFound, match="did you mean: chroma-e6ai-512"):
        load_template("chroma-e6ai-51")


def test_field_help_forms() -> None:
    assert "diffusers" in field_help("model.diffusers_path")
    assert field_help("directory[3].path") == field_help("dataset:directory[0].path") != ""
    assert field_help("optimizer.betas[1]") == field_help("optimizer.betas") != ""
    assert field_help("directory[0].shuffle_tags") == field_help("shuffle_tags") != ""
    assert field_help("no.such.key") == ""
    assert normalize_keypath("dataset:directory[0].path") == "directory.path"


def test_every_schema_key_a_template_uses_has_help() -> None:
    for name in NAMES:
        profile = load_template(name)
        for toml in (profile.main, profile.dataset):
            assert toml is not None
            for key, _ in _leaves(toml.data()):
                if not key.startswith("optimizer.") or key in ("optimizer.type", "optimizer.lr"):
                    assert field_help(key), f"{name}: no help for {key}"


def test_templates_are_package_data() -> None:
    """pyproject ships templates/*.toml and templates/**/*.toml: every template file matches one of them."""
    files = sorted(TEMPLATES_DIR.rglob("*"))
    assert all(f.suffix == ".toml" for f in files if f.is_file())
    assert all(len(f.relative_to(TEMPLATES_DIR).parts) <= 2 for f in files)


def _leaves(node: object, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.extend(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for i, v in enumerate(node):
            out.extend(_leaves(v, f"{prefix}[{i}]"))
    else:
        out.append((prefix, node))
    return out


def test_every_schema_field_and_model_key_has_help() -> None:
    from profiles.schema import (
        AdapterConfig,
        DatasetConfig,
        DirectoryConfig,
        MainConfig,
        ModelConfig,
        MonitoringConfig,
        OptimizerConfig,
    )

    sections = [
        ("", MainConfig),
        ("model.", ModelConfig),
        ("adapter.", AdapterConfig),
        ("optimizer.", OptimizerConfig),
        ("monitoring.", MonitoringConfig),
        ("", DatasetConfig),
        ("directory.", DirectoryConfig),
    ]
    tables = {"model", "adapter", "optimizer", "monitoring"}
    missing = [
        p + f for p, m in sections for f in m.model_fields if f not in tables and not field_help(p + f)
    ]
    missing += [
        f"model.{k}" for s in mt.MODEL_SPECS.values() for k in s.known_keys if not field_help(f"model.{k}")
    ]
    assert missing == []


def test_a_builtin_only_shape_is_queued_on_the_builtin_trainer(tmp_path: Path) -> None:
    """backend auto: sdxl from a diffusers folder goes to the built-in trainer even when a diffusion-pipe
    checkout is configured (diffusion-pipe's sdxl would stop without checkpoint_path)."""
    from engine.jobs.launch import pick_backend
    from statefiles import settings

    settings.set_value("diffusion_pipe.path", str(tmp_path))
    assert pick_backend(load_template("sdxl-diffusers"), "auto") == "builtin"
    assert pick_backend(load_template("sdxl-single-file"), "auto") == "diffusion-pipe"
    assert pick_backend(load_template("sdxl-diffusers"), "diffusion-pipe") == "diffusion-pipe"


def _uncomment_sample(text: str) -> str:
    """The template's commented-out `#[sample]` block (up to the first blank line or the end) as live TOML."""
    lines = [*text.splitlines(), ""]
    start = lines.index("#[sample]")
    end = lines.index("", start)
    return "\n".join([*lines[:start], *(line[1:] for line in lines[start:end]), *lines[end:]]) + "\n"


@pytest.mark.parametrize("name", [n for n in NAMES if "\n#[sample]\n" in template_texts(n)["main.toml"]])
def test_a_commented_sample_table_validates_once_uncommented(name: str, tmp_path: Path) -> None:
    """Templates that keep [sample] off for memory say why, and the table they offer is right for the built-in
    trainer (no sample.* problem) once uncommented."""
    texts = template_texts(name)
    main = texts["main.toml"]
    comment = main[: main.index("\n#[sample]\n")].rsplit("\n\n", 1)[-1]
    assert "memory" in comment and "GiB" in comment, comment
    for fname, text in texts.items():
        (tmp_path / fname).write_text(_uncomment_sample(text) if fname == "main.toml" else text)
    profile = load_profile(tmp_path / "main.toml")
    assert profile.main.get("sample.prompts")
    problems = validate_profile(profile, backend="builtin", check_paths="off")
    assert not [str(p) for p in problems if p.key.startswith("sample")]


def test_the_chroma_templates_keep_samples_off() -> None:
    for name in ("chroma-e6ai-512", "chroma-e6ai-1024"):
        assert "\n#[sample]\n" in template_texts(name)["main.toml"]
        assert not load_template(name).main.has("sample")
