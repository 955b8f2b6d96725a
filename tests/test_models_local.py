"""Registry data, local discovery and "use in profile" on real files and folders written here."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.models.discovery import scan
from engine.models.errors import HeaderError, ModelsError, RegistryError
from engine.models.fill import missing_model_files, use_entry, use_file
from engine.models.registry import component_status, entry_status, load_registry, parse_registry
from engine.models.safetensors_header import write_header_only
from profiles.document import TomlFile

SDXL = {"model.diffusion_model.input_blocks.0.0.weight": ("F16", (320, 4, 3, 3)),
        "model.diffusion_model.label_emb.0.0.weight": ("F16", (1280, 2816)),
        "first_stage_model.decoder.conv_in.weight": ("F16", (512, 4, 3, 3))}
CHROMA = {"img_in.weight": ("BF16", (3072, 64)), "double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
          "distilled_guidance_layer.in_proj.weight": ("BF16", (5120, 64))}
FLUX = {"img_in.weight": ("BF16", (3072, 64)), "double_blocks.0.img_attn.qkv.weight": ("BF16", (9216, 3072)),
        "guidance_in.in_layer.weight": ("BF16", (3072, 256))}

PROFILE = """# my chroma run
output_dir = '/tmp/out'
dataset = 'dataset.toml'
epochs = 10

[model]
type = 'chroma'  # the model family
diffusers_path = '/nowhere/flux'
dtype = 'bfloat16'
transformer_dtype = 'float8'

[optimizer]
type = 'adamw_optimi'
"""


@pytest.fixture
def models_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    monkeypatch.setenv("DPDECK_MODELS_DIR", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return root


def test_shipped_registry_covers_required_types() -> None:
    reg = load_registry()
    types = {e.model_type for e in reg.entries}
    assert {"chroma", "sdxl", "sd15", "flux", "sd3", "wan", "ltx-video", "hunyuan-video", "lumina_2",
            "qwen_image"} <= types
    chroma = reg.get("chroma-unlocked-v47")
    assert {c.key for c in chroma.components} == {"diffusers_path", "transformer_path"}
    schnell = next(c for c in chroma.components if c.key == "diffusers_path")
    assert schnell.repo == "black-forest-labs/FLUX.1-schnell"
    assert schnell.wants("vae/diffusion_pytorch_model.safetensors")
    assert not schnell.wants("transformer/diffusion_pytorch_model-00001-of-00003.safetensors")
    assert reg.get("flux-dev").gated is True
    for e in reg.entries:  # sha256 entries, when present, must be real hex digests
        for c in e.components:
            assert all(len(v) == 64 and int(v, 16) >= 0 for v in c.sha256.values())


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{", "not valid JSON"),
        ('{"version": 1, "entries": [{"id": "a"}]}', "entries.0"),
        (json.dumps({"version": 1, "entries": [
            {"id": "a", "title": "t", "model_type": "x", "licence": "l", "components": [
                {"key": "k", "repo": "r/r", "kind": "folder"}]}]}), "needs 'include'"),
        (json.dumps({"version": 1, "entries": [
            {"id": "a", "title": "t", "model_type": "x", "licence": "l", "components": []}] * 2}), "duplicate"),
    ],
)
def test_malformed_registry(text: str, needle: str) -> None:
    with pytest.raises(RegistryError, match=needle):
        parse_registry(text)


def test_unknown_entry_suggests() -> None:
    with pytest.raises(RegistryError, match="did you mean chroma-unlocked-v47"):
        load_registry().get("v47")


def test_component_status_present_partial_missing(models_root: Path) -> None:
    entry = load_registry().get("chroma-unlocked-v47")
    folder, single = entry.components
    assert entry_status(entry) == "missing"
    target = folder.local_path()
    (target / "vae").mkdir(parents=True)
    (target / "model_index.json").write_text("{}")
    assert component_status(folder)[0] == "partial"
    for rel in folder.check:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text("{}")
    assert component_status(folder) == ("present", target)
    part = single.local_path().parent / f".{single.local_path().name}.dpdeck-part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"123")
    assert component_status(single)[0] == "partial"
    assert entry_status(entry) == "partial"
    write_header_only(single.local_path(), CHROMA)
    part.unlink()
    assert entry_status(entry) == "present"


def test_status_finds_hf_cache_snapshot(models_root: Path, tmp_path: Path) -> None:
    entry = load_registry().get("sdxl-base-1.0")
    comp = entry.components[0]
    blob = tmp_path / "hf_cache" / "models--stabilityai--stable-diffusion-xl-base-1.0" / "blobs" / "abc"
    blob.parent.mkdir(parents=True)
    write_header_only(blob, SDXL)
    snap = blob.parent.parent / "snapshots" / "0123" / comp.file
    snap.parent.mkdir(parents=True)
    snap.symlink_to(blob)
    assert component_status(comp) == ("present", snap)


def test_scan_finds_folders_files_and_bad_headers(models_root: Path, tmp_path: Path) -> None:
    pipe = models_root / "flux-dev"
    (pipe / "transformer").mkdir(parents=True)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    write_header_only(pipe / "transformer" / "diffusion_pytorch_model.safetensors", FLUX)
    (models_root / "sdxl").mkdir()
    write_header_only(models_root / "sdxl" / "my_pony.safetensors", SDXL)
    write_header_only(models_root / "chroma-v47.safetensors", CHROMA)
    (models_root / "broken.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{oops")
    (models_root / ".x.safetensors.dpdeck-part").write_bytes(b"partial")
    wan = tmp_path / "hf_cache" / "Wan2.1-T2V-1.3B"
    wan.mkdir(parents=True)
    (wan / "config.json").write_text("{}")
    (wan / "Wan2.1_VAE.pth").write_bytes(b"")
    items = {Path(i.path).name: i for i in scan()}
    assert set(items) == {"flux-dev", "my_pony.safetensors", "chroma-v47.safetensors", "broken.safetensors",
                          "Wan2.1-T2V-1.3B"}
    assert (items["flux-dev"].kind, items["flux-dev"].family) == ("diffusers", "flux")
    assert (items["my_pony.safetensors"].family, items["my_pony.safetensors"].kind) == ("sdxl", "checkpoint")
    assert items["chroma-v47.safetensors"].family == "chroma"
    assert items["chroma-v47.safetensors"].dtype == "BF16"
    assert items["chroma-v47.safetensors"].size > 1_000_000  # the sparse file's logical size
    assert "not a valid safetensors file" in (items["broken.safetensors"].error or "")
    assert (items["Wan2.1-T2V-1.3B"].kind, items["Wan2.1-T2V-1.3B"].family) == ("ckpt_folder", "wan")


def _profile(tmp_path: Path, text: str = PROFILE) -> TomlFile:
    path = tmp_path / "main.toml"
    path.write_text(text)
    return TomlFile.load(path)


def test_use_file_sets_only_the_right_line(models_root: Path, tmp_path: Path) -> None:
    main = _profile(tmp_path)
    ckpt = tmp_path / "chroma-unlocked-v47.safetensors"
    write_header_only(ckpt, CHROMA)
    changes, what = use_file(main, ckpt)
    assert [c.key for c in changes] == ["model.transformer_path"]
    assert "chroma transformer" in what
    after = main.dumps().splitlines()
    before = PROFILE.splitlines()
    added = [line for line in after if line not in before]
    assert added == [f"transformer_path = \"{ckpt}\""]
    assert "type = 'chroma'  # the model family" in after  # untouched lines keep their comments


def test_use_file_refuses_wrong_family_and_loras(tmp_path: Path) -> None:
    main = _profile(tmp_path)
    flux = tmp_path / "flux1-dev.safetensors"
    write_header_only(flux, FLUX)
    with pytest.raises(ModelsError, match="is a flux transformer .* but the profile trains 'chroma'"):
        use_file(main, flux)
    changes, _ = use_file(main, flux, force=True)
    assert main.get("model.type") == "flux" and [c.key for c in changes] == ["model.type", "model.transformer_path"]
    lora = tmp_path / "lora.safetensors"
    write_header_only(lora, {"lora_unet_a.lora_down.weight": ("F16", (4, 8)), "lora_unet_a.lora_up.weight": ("F16", (8, 4))})
    with pytest.raises(ModelsError, match="is a LoRA"):
        use_file(main, lora)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"12345678")
    with pytest.raises(HeaderError):
        use_file(main, bad)


def test_use_entry_then_check(models_root: Path, tmp_path: Path) -> None:
    main = _profile(tmp_path)
    entry = load_registry().get("chroma-unlocked-v47")
    issues = missing_model_files(main)
    assert {i.key: i.problem for i in issues} == {"model.diffusers_path": "missing", "model.transformer_path": "unset"}
    assert all("chroma-unlocked-v47" in i.provided_by for i in issues)
    assert issues[0].line == 8
    changes = use_entry(main, entry)
    assert {c.key for c in changes} == {"model.diffusers_path", "model.transformer_path"}
    assert main.get("model.transformer_path") == str(entry.components[1].local_path())
    # Paths point where `pull` puts files; until then they are reported missing with the entry that provides them.
    assert {i.problem for i in missing_model_files(main)} == {"missing"}
    folder = entry.components[0].local_path()
    for rel in entry.components[0].check:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text("{}")
    entry.components[1].local_path().parent.mkdir(parents=True)
    write_header_only(entry.components[1].local_path(), CHROMA)
    assert missing_model_files(main) == []


def test_check_reports_directory_where_file_needed_and_bad_header(models_root: Path, tmp_path: Path) -> None:
    pipe = tmp_path / "flux"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 16)
    main = _profile(tmp_path, PROFILE.replace("/nowhere/flux", str(pipe)) + "")
    main.set("model.transformer_path", str(pipe))
    [issue] = missing_model_files(main)
    assert issue.problem == "not_a_file" and "is a directory, a single model file is needed" in issue.message
    main.set("model.transformer_path", str(bad))
    [issue] = missing_model_files(main)
    assert issue.problem == "bad_header" and "header length" in issue.message
    flux = tmp_path / "flux.safetensors"
    write_header_only(flux, FLUX)
    main.set("model.transformer_path", str(flux))
    [issue] = missing_model_files(main)
    assert issue.problem == "wrong_family"
    os.unlink(flux)
