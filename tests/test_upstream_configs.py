"""Conformance with upstream diffusion-pipe's own configs (tdrussell/diffusion-pipe at 8f83dbf, GPL-3.0).

Every examples/*.toml and every TOML snippet of docs/supported_models.md goes through the real
`dpdeck profile validate`, as a user would bring it: a snippet is completed into a main config with the
non-model keys of examples/main_example.toml, and every absolute path is pointed at a real file or folder
made in tmp_path (a value with a weights-file suffix becomes a file, anything else a folder: the kind is read
off the upstream value, not off dpdeck's own tables). They must validate without errors. Then configs that
upstream's code would crash on must be refused with file:line: key.

The upstream folder is a reference to test against, never code dpdeck copies; without it these tests skip.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from profiles import model_types as mt
from profiles.document import load_profile
from profiles.validate import validate_profile
from tui.cli import main as cli_main

UPSTREAM = Path(__file__).resolve().parents[2] / "shared/upstream/diffusion-pipe"
UPSTREAM_COMMIT = "8f83dbf"
if not (UPSTREAM / "train.py").is_file():
    pytest.skip(
        f"../shared/upstream/diffusion-pipe absent: no upstream {UPSTREAM_COMMIT} configs to check against",
        allow_module_level=True,
    )

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".gguf", ".ckpt")
EXAMPLES = UPSTREAM / "examples"
DOCS = UPSTREAM / "docs/supported_models.md"


def _plain(text: str) -> dict[str, Any]:
    return tomlkit.parse(text).unwrap()


def doc_snippets() -> list[tuple[str, dict[str, Any]]]:
    """The fenced blocks of supported_models.md that are TOML with a [model] table, named by type and order.

    Upstream fences them without a language tag, next to shell commands: a block counts when it parses as
    TOML and has [model].
    """
    parts = DOCS.read_text(encoding="utf-8").split("```")
    found: list[tuple[str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for block in parts[1::2]:
        try:
            data = _plain(block)
        except Exception:  # a shell command or prose: not a config
            continue
        model = data.get("model")
        if isinstance(model, dict) and isinstance(model.get("type"), str):
            n = seen[model["type"]] = seen.get(model["type"], 0) + 1
            found.append((f"{model['type']}#{n}", data))
    return found


def example_mains() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.toml") if "model" in _plain(p.read_text(encoding="utf-8")))


def example_datasets() -> list[Path]:
    return sorted(EXAMPLES.glob("*dataset*.toml"))


SNIPPETS = doc_snippets()


class Box:
    """A stand-in GPU box under tmp_path: every absolute path of a config exists there, of the right kind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fs = root / "fs"
        root.mkdir(parents=True, exist_ok=True)

    def place(self, value: str) -> str:
        target = self.fs / value.lstrip("/")
        if target.suffix.lower() in WEIGHT_SUFFIXES:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"\0")
        else:
            target.mkdir(parents=True, exist_ok=True)
        return str(target)

    def relocate(self, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: self.relocate(v) for k, v in node.items()}
        if isinstance(node, list):
            return [self.relocate(v) for v in node]
        if isinstance(node, str) and node.startswith("/"):
            return self.place(node)
        return node

    def write(self, name: str, data: dict[str, Any]) -> Path:
        path = self.root / name
        path.write_text(tomlkit.dumps(self.relocate(data)), encoding="utf-8")
        return path

    def dataset(self, source: Path = EXAMPLES / "dataset.toml") -> str:
        """The dataset config written beside the main one; its name as a main config refers to it."""
        self.write("dataset.toml", _plain(source.read_text(encoding="utf-8")))
        return "dataset.toml"

    def main(self, data: dict[str, Any]) -> Path:
        """A main config as a user brings it: its dataset beside it, output_dir on this box."""
        data = dict(data)
        data["dataset"] = self.dataset()
        data.setdefault("eval_datasets", [])
        return self.write("main.toml", data)


def complete(snippet: dict[str, Any]) -> dict[str, Any]:
    """A docs snippet made into a main config the way a user would: main_example.toml's other keys around it."""
    data = _plain((EXAMPLES / "main_example.toml").read_text(encoding="utf-8"))
    data["model"] = snippet["model"]
    return data


def validate_cli(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    """`dpdeck profile validate PATH --json`, in process (the same entry point the dpdeck script runs).

    Checked as diffusion-pipe would run it unless `extra` names a backend: these are upstream's configs, and
    the default (auto) would move the few only the built-in trainer reads (sdxl from a diffusers folder) there.
    """
    capsys.readouterr()
    backend = [] if "--backend" in extra else ["--backend", "diffusion-pipe"]
    code = cli_main(["profile", "validate", str(path), "--json", *backend, *extra])
    report = json.loads(capsys.readouterr().out)
    assert code == (0 if report["valid"] else 1)
    return report


def errors(report: dict[str, Any]) -> list[str]:
    return [p["text"] for p in report["problems"] if p["severity"] == "error"]


def unknown(report: dict[str, Any]) -> list[str]:
    return [p["text"] for p in report["problems"] if p["code"] == "unknown_key"]


# Valid upstream configs.


@pytest.mark.parametrize("example", example_mains(), ids=lambda p: p.name)
def test_every_upstream_example_main_config_validates(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = Box(tmp_path)
    report = validate_cli(box.main(_plain(example.read_text(encoding="utf-8"))), capsys)
    assert errors(report) == []
    # Every key an upstream example sets is one upstream's code reads.
    assert unknown(report) == []


@pytest.mark.parametrize("name,snippet", SNIPPETS, ids=[n for n, _ in SNIPPETS])
def test_every_docs_snippet_validates_as_a_main_config(
    name: str, snippet: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = Box(tmp_path)
    report = validate_cli(box.main(complete(snippet)), capsys)
    assert errors(report) == [], name
    assert unknown(report) == [], name


def test_the_docs_cover_every_model_type() -> None:
    """The snippets are the corpus for each type below: a type upstream adds without a snippet shows up here."""
    assert {n.split("#")[0] for n, _ in SNIPPETS} == set(mt.MODEL_TYPES)


@pytest.mark.parametrize("example", example_datasets(), ids=lambda p: p.name)
def test_every_upstream_dataset_config_validates(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    box = Box(tmp_path)
    # wan reads images and videos, so a dataset's frame_buckets are all used
    data = dict(complete(dict(SNIPPETS)["wan#1"]), dataset=box.dataset(example), eval_datasets=[])
    report = validate_cli(box.write("main.toml", data), capsys)
    assert errors(report) == []
    assert unknown(report) == []


def test_lr_schedulers_are_upstreams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train.py's scheduler chain: constant, linear, cosine; anything else is its NotImplementedError."""
    source = (UPSTREAM / "train.py").read_text(encoding="utf-8")
    upstream = set(re.findall(r"scheduler_type == '(\w+)'", source))
    assert upstream == {"constant", "linear", "cosine"}
    box = Box(tmp_path)
    for value in sorted(upstream):
        data = complete(SNIPPETS[0][1]) | {"lr_scheduler": value}
        assert errors(validate_cli(box.main(data), capsys)) == [], value
    data = complete(SNIPPETS[0][1]) | {"lr_scheduler": "polynomial"}
    assert any(": lr_scheduler: " in e for e in errors(validate_cli(box.main(data), capsys)))


def test_the_real_cli_process_agrees(tmp_path: Path) -> None:
    """One config through the installed `dpdeck` process as well (the in-process runs above share its code)."""
    box = Box(tmp_path)
    path = box.main(complete(dict(SNIPPETS)["ltx2#1"]))
    proc = subprocess.run(
        [sys.executable, "-m", "tui.cli", "profile", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid (0 error(s)" in proc.stderr


# Configs upstream would crash on.

LINE = re.compile(r"^(?P<file>/[^:]+):(?P<line>\d+): (?P<key>[^:]+): ")


def refused(report: dict[str, Any], key: str) -> str:
    hits = [e for e in errors(report) if (m := LINE.match(e)) and m["key"] == key]
    assert hits, f"no file:line: {key} error in {errors(report)}"
    return hits[0]


BROKEN: dict[str, tuple[str, dict[str, Any], dict[str, Any], str]] = {
    # name: (snippet, keys removed -> None / added, the key the error must name, why upstream fails)
    "sdxl-diffusers-only": (
        "sdxl#1",
        {"checkpoint_path": None, "diffusers_path": "/models/sdxl-base-1.0"},
        {},
        "model.checkpoint_path",
    ),
    "anima-qwen_path": (
        "anima#1",
        {"llm_path": None, "qwen_path": "/models/Qwen3-0.6B"},
        {},
        "model.llm_path",
    ),
    "ltx2-vae-text_encoders": (
        "ltx2#1",
        {
            "text_encoder": None,
            "vae": "/models/ltx-2-vae.safetensors",
            "text_encoders": [{"path": "/models/gemma.safetensors", "type": "ltxv"}],
        },
        {},
        "model.text_encoder",
    ),
    "adapter-without-type": ("sdxl#1", {}, {"adapter": {"rank": 32, "dtype": "bfloat16"}}, "adapter.type"),
    "text-encoder-without-type": (
        "z_image#1",
        {"text_encoders": [{"path": "/models/qwen_3_4b.safetensors"}]},
        {},
        "model.text_encoders[0].type",
    ),
    "transformer_dtype-nf4": ("hidream#1", {"transformer_dtype": "nf4"}, {}, "model.transformer_dtype"),
    # models/base.py has that branch commented out: NotImplementedError
    "video_clip_mode-multiple_overlapping": (
        "wan#1",
        {},
        {"video_clip_mode": "multiple_overlapping"},
        "video_clip_mode",
    ),
    # train.py copies eval_dataset['config'] into the run folder
    "eval-dataset-as-a-bare-path": ("sdxl#1", {}, {"eval_datasets": ["dataset.toml"]}, "eval_datasets[0]"),
    # train.py writes beta2 into optimizer['betas'][1]
    "beta2_half_life-without-betas": (
        "sdxl#1",
        {},
        {"optimizer": {"type": "adamw_optimi", "lr": 2e-5, "beta2_half_life": 1000}},
        "optimizer.betas",
    ),
}


def _edit(model: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in model.items() if changes.get(k, "") is not None}
    out.update({k: v for k, v in changes.items() if v is not None})
    return out


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_configs_upstream_crashes_on_are_refused_with_file_line_key(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snippet, model_changes, top_changes, key = BROKEN[case]
    data = complete(dict(SNIPPETS)[snippet])
    data["model"] = _edit(data["model"], model_changes)
    data.update(top_changes)
    path = Box(tmp_path).main(data)
    report = validate_cli(path, capsys)
    text = refused(report, key)
    assert text.startswith(f"{path}:")


def test_sdxl_from_a_diffusers_folder_is_fine_for_the_builtin_trainer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = complete(dict(SNIPPETS)["sdxl#1"])
    data["model"] = _edit(data["model"], {"checkpoint_path": None, "diffusers_path": "/models/sdxl-base-1.0"})
    data["optimizer"] = {"type": "adamw", "lr": 1e-4}
    data["adapter"] = {"type": "lora", "rank": 8}
    data["pipeline_stages"] = 1
    path = Box(tmp_path).main(data)
    assert errors(validate_cli(path, capsys, "--backend", "builtin")) == []
    text = refused(validate_cli(path, capsys), "model.checkpoint_path")
    assert "built-in trainer only" in text
    # Left to choose (the default), validation goes where the queue would run it.
    auto = validate_cli(path, capsys, "--backend", "auto")
    assert auto["backend"] == "builtin" and errors(auto) == []


def _first_snippet_per_type() -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for name, data in SNIPPETS:
        mtype = data["model"]["type"]
        if mtype not in seen:
            seen.add(mtype)
            yield mtype, name


def _reads(model_type: str, key: str) -> bool:
    """Does upstream's code for the type read model `key` at all (subscript, .get or `in`)?"""
    spec = mt.get_spec(model_type)
    assert spec is not None
    files = [UPSTREAM / spec.source, UPSTREAM / "models/base.py", UPSTREAM / "train.py"]
    pattern = re.compile(
        rf"""model_config(\[|\.get\()\s*['"]{re.escape(key)}['"]|['"]{re.escape(key)}['"] in """
    )
    return any(pattern.search(f.read_text(encoding="utf-8")) for f in files)


REQUIRED_CASES = [
    (mtype, name, key)
    for mtype, name in _first_snippet_per_type()
    for key in sorted(
        {k for alt in mt.MODEL_SPECS[mtype].requires for k in alt} & set(dict(SNIPPETS)[name]["model"])
    )
]


@pytest.mark.parametrize("mtype,name,key", REQUIRED_CASES, ids=[f"{t}-{k}" for t, _, k in REQUIRED_CASES])
def test_a_missing_required_key_of_each_type_is_an_error_with_file_line_key(
    mtype: str, name: str, key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # dpdeck's required key is one upstream's code for the type really reads (not a key of its own making).
    assert _reads(mtype, key), f"upstream {mt.MODEL_SPECS[mtype].source} never reads model.{key}"
    data = complete(dict(SNIPPETS)[name])
    data["model"] = {k: v for k, v in data["model"].items() if k != key}
    path = Box(tmp_path).main(data)
    text = refused(validate_cli(path, capsys), f"model.{key}")
    assert text.startswith(f"{path}:") and "required" in text


def test_every_type_has_a_required_key_case() -> None:
    assert {t for t, _, _ in REQUIRED_CASES} == set(mt.MODEL_TYPES)


def test_model_dtype_is_required_for_every_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """train.py's set_config_defaults reads model['dtype'] before any model code runs."""
    for mtype, name in _first_snippet_per_type():
        data = complete(dict(SNIPPETS)[name])
        data["model"] = {k: v for k, v in data["model"].items() if k != "dtype"}
        report = validate_cli(Box(tmp_path / mtype).main(data), capsys)
        assert any(": model.dtype: " in e for e in errors(report)), mtype


def test_validation_time_of_the_upstream_corpus(tmp_path: Path) -> None:
    """Every example and snippet, validated in process: well under a second each (the editor validates live)."""
    paths = [Box(tmp_path / str(i)).main(complete(snippet)) for i, (_, snippet) in enumerate(SNIPPETS)]
    paths += [Box(tmp_path / p.stem).main(_plain(p.read_text(encoding="utf-8"))) for p in example_mains()]
    profiles = [load_profile(p) for p in paths]
    start = time.perf_counter()
    for profile in profiles:
        validate_profile(profile, check_paths="error", checkout=None)
    per_config = (time.perf_counter() - start) / len(profiles)
    assert per_config < 0.25, f"{per_config * 1000:.1f} ms per config"


ISSUE_KEYS: dict[str, dict[str, Any]] = {
    # keys issue 14 found reported as "unknown" although upstream reads them
    "wan#1": {"cache_text_embeddings": False, "text_encoder_fp8": True},
    "anima#1": {
        "llm_adapter_path": "/models/llm_adapter.safetensors",
        "multiscale_loss_weight": 0.5,
        "self_attn_lr": 1e-5,
        "cross_attn_lr": 1e-5,
        "mlp_lr": 1e-5,
        "mod_lr": 1e-5,
    },
    "cosmos_predict2#1": {"llm_path": "/models/qwen_3_06b_base.safetensors", "multiscale_loss_weight": 0.5},
}


@pytest.mark.parametrize("name", sorted(ISSUE_KEYS))
def test_model_keys_upstream_reads_are_known(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = complete(dict(SNIPPETS)[name])
    data["model"] = {**data["model"], **ISSUE_KEYS[name]}
    data["adapter"] = {**data["adapter"], "exclude_modules": ["final_layer"]}
    report = validate_cli(Box(tmp_path).main(data), capsys)
    assert errors(report) == [] and unknown(report) == []


def test_optimizer_and_dtype_tables_are_upstreams() -> None:
    from profiles.rules.dtypes import DTYPES
    from profiles.rules.optimizer import DP_OPTIMIZERS

    train = (UPSTREAM / "train.py").read_text(encoding="utf-8")
    assert set(re.findall(r"optim_type_lower == '(\w+)'", train)) == set(DP_OPTIMIZERS)
    common = (UPSTREAM / "utils/common.py").read_text(encoding="utf-8")
    block = re.search(r"DTYPE_MAP = \{(.*?)\}", common, re.S)
    assert block is not None and set(re.findall(r"'(\w+)':", block[1])) == set(DTYPES)
