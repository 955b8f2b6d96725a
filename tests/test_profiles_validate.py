"""Validation: every check names the file, the key path and the line, with what was found and expected."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from profiles.document import load_profile
from profiles.validate import Problem, has_errors, validate_profile

KEY = "0123456789abcdef0123456789abcdef01234567"


def make_box(root: Path) -> dict[str, Path]:
    """Real model files and folders, so a profile pointing at them validates with check_paths='error'."""
    paths = {
        "diffusers": root / "flux_schnell_diffusers",
        "images": root / "images",
        "out": root / "output",
        "transformer": root / "chroma.safetensors",
    }
    for key in ("diffusers", "images", "out"):
        paths[key].mkdir(parents=True, exist_ok=True)
    paths["transformer"].write_bytes(b"\0" * 8)
    return paths


def chroma_main(box: dict[str, Path]) -> str:
    return f"""# a valid chroma profile
output_dir = '{box["out"]}'
dataset = 'dataset.toml'
epochs = 10
micro_batch_size_per_gpu = 4
pipeline_stages = 1
gradient_accumulation_steps = 1
gradient_clipping = 1.0
warmup_steps = 100
save_every_n_epochs = 1

[model]
type = 'chroma'
diffusers_path = '{box["diffusers"]}'
transformer_path = '{box["transformer"]}'
dtype = 'bfloat16'
transformer_dtype = 'float8'
flux_shift = true

[adapter]
type = 'lora'
rank = 32
dtype = 'bfloat16'

[optimizer]
type = 'adamw_optimi'
lr = 2.5e-4
betas = [0.9, 0.99]
weight_decay = 0.01
eps = 1e-8
"""


def chroma_dataset(box: dict[str, Path]) -> str:
    return f"""resolutions = [512]
enable_ar_bucket = true
min_ar = 0.5
max_ar = 2.0
num_ar_buckets = 9
frame_buckets = [1]

[[directory]]
path = '{box["images"]}'
num_repeats = 1
"""


class Case:
    """A profile on disk: main.toml + dataset.toml in one folder, edited by text substitution."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "profile"
        self.root.mkdir()
        self.box = make_box(tmp_path / "box")
        self.main_text = chroma_main(self.box)
        self.dataset_text = chroma_dataset(self.box)

    @property
    def main(self) -> Path:
        return self.root / "main.toml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.toml"

    def write(self) -> None:
        self.main.write_text(self.main_text)
        self.dataset.write_text(self.dataset_text)

    def edit_main(self, old: str, new: str) -> None:
        assert old in self.main_text, old
        self.main_text = self.main_text.replace(old, new, 1)

    def edit_dataset(self, old: str, new: str) -> None:
        assert old in self.dataset_text, old
        self.dataset_text = self.dataset_text.replace(old, new, 1)

    def validate(self, **kwargs: object) -> list[Problem]:
        self.write()
        return validate_profile(load_profile(self.main), **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def case(tmp_path: Path) -> Case:
    return Case(tmp_path)


def line_of(text: str, pattern: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if re.search(pattern, line))


def only(problems: list[Problem], key: str) -> Problem:
    hits = [p for p in problems if p.key == key]
    assert len(hits) == 1, f"expected one problem at {key}, got: {[str(p) for p in problems]}"
    return hits[0]


def test_valid_profile_has_no_problems(case: Case) -> None:
    problems = case.validate()
    assert problems == [], [str(p) for p in problems]
    assert not has_errors(problems)


def test_problem_str_format(case: Case) -> None:
    case.edit_main("[adapter]\n", "[adapter]\nalpha = 16\n")
    problem = only(case.validate(), "adapter.alpha")
    line = line_of(case.main_text, r"^alpha = 16")
    assert str(problem).startswith(f"{case.main}:{line}: adapter.alpha: ")
    assert str(problem).endswith("(found 16, expected no alpha key)")
    assert problem.severity == "error" and problem.file == str(case.main) and problem.line == line


def test_wrong_types_are_mapped_to_key_paths_and_lines(case: Case) -> None:
    case.edit_main("epochs = 10", "epochs = '10'")
    case.edit_main("flux_shift = true", "flux_shift = 'yes'")
    case.edit_main("lr = 2.5e-4", "lr = 'fast'")
    case.edit_main("micro_batch_size_per_gpu = 4", "micro_batch_size_per_gpu = true")
    case.edit_dataset("num_repeats = 1", "num_repeats = 0")
    case.edit_dataset("resolutions = [512]", "resolutions = [512, 'big']")
    problems = case.validate()
    epochs = only(problems, "epochs")
    assert epochs.line == line_of(case.main_text, r"^epochs = ") and epochs.found == "'10'"
    assert epochs.expected == "an integer" and epochs.severity == "error"
    shift = only(problems, "model.flux_shift")
    assert shift.line == line_of(case.main_text, r"^flux_shift") and shift.expected == "true or false"
    lr = only(problems, "optimizer.lr")
    assert lr.line == line_of(case.main_text, r"^lr = ") and lr.expected == "a number"
    mbs = only(problems, "micro_batch_size_per_gpu")
    assert "[[512, 4], [1024, 1]]" in (mbs.expected or "") and mbs.found == "true"
    repeats = only(problems, "directory[0].num_repeats")
    assert repeats.file == str(case.dataset)
    assert repeats.line == line_of(case.dataset_text, r"^num_repeats") and repeats.found == "0"
    res = only(problems, "resolutions[1]")
    assert res.line == 1 and res.found == "'big'"


def test_required_keys(case: Case) -> None:
    case.edit_main("epochs = 10\n", "")
    case.edit_main("dtype = 'bfloat16'\ntransformer_dtype", "transformer_dtype")
    case.edit_main("[optimizer]\ntype = 'adamw_optimi'\n", "[optimizer]\n")
    problems = case.validate()
    epochs = only(problems, "epochs")
    assert epochs.code == "required" and "missing" in epochs.message and epochs.line is None
    dtype = only(problems, "model.dtype")
    # A missing key points at its table's header.
    assert dtype.line == line_of(case.main_text, r"^\[model\]")
    assert only(problems, "optimizer.type").line == line_of(case.main_text, r"^\[optimizer\]")


def test_missing_table(case: Case) -> None:
    start = case.main_text.index("[optimizer]")
    case.main_text = case.main_text[:start]
    problem = only(case.validate(), "optimizer")
    assert problem.code == "required" and problem.severity == "error"


def test_unknown_model_type_suggests(case: Case) -> None:
    case.edit_main("type = 'chroma'", "type = 'Chroma'")
    problem = only(case.validate(), "model.type")
    assert "did you mean 'chroma'" in problem.message and problem.found == "'Chroma'"
    assert problem.line == line_of(case.main_text, r"^type = 'Chroma'")
    case.edit_main("type = 'Chroma'", "type = 'hunyuan_video'")
    assert "did you mean 'hunyuan-video'" in only(case.validate(), "model.type").message
    case.edit_main("type = 'hunyuan_video'", "type = 'zzz'")
    assert "chroma" in (only(case.validate(), "model.type").expected or "")


def test_per_type_required_model_keys(case: Case) -> None:
    case.edit_main(f"transformer_path = '{case.box['transformer']}'\n", "")
    problem = only(case.validate(), "model.transformer_path")
    assert problem.code == "required" and "chroma" in problem.message
    assert "diffusers_path + transformer_path" in (problem.expected or "")
    assert problem.line == line_of(case.main_text, r"^\[model\]")


def test_alternative_model_keys(case: Case, tmp_path: Path) -> None:
    ckpt = tmp_path / "hv"
    ckpt.mkdir()
    start, end = case.main_text.index("[model]"), case.main_text.index("[adapter]")
    case.main_text = (
        case.main_text[:start]
        + f"[model]\ntype = 'hunyuan-video'\nckpt_path = '{ckpt}'\ndtype = 'bfloat16'\n\n"
        + case.main_text[end:]
    )
    assert case.validate() == []
    case.edit_main(f"ckpt_path = '{ckpt}'\n", "")
    assert {p.key for p in case.validate() if p.code == "required"} == {"model.ckpt_path"}
    # Started on the ComfyUI-files route: report what that route still lacks.
    case.edit_main(
        "dtype = 'bfloat16'\n\n[adapter]", "vae_path = '/x/vae.safetensors'\ndtype = 'bfloat16'\n\n[adapter]"
    )
    problems = [p for p in case.validate() if p.code == "required"]
    assert {p.key for p in problems} == {"model.transformer_path", "model.llm_path", "model.clip_path"}


def test_paths_must_exist_error_or_warn(case: Case) -> None:
    case.edit_main(str(case.box["transformer"]), "/nowhere/chroma.safetensors")
    case.edit_dataset(str(case.box["images"]), "/nowhere/images")
    problems = case.validate(check_paths="error")
    transformer = only(problems, "model.transformer_path")
    assert transformer.severity == "error" and transformer.code == "path"
    assert transformer.found == "'/nowhere/chroma.safetensors'" and transformer.expected == "an existing file"
    assert transformer.line == line_of(case.main_text, r"^transformer_path")
    images = only(problems, "directory[0].path")
    assert images.file == str(case.dataset) and images.line == line_of(case.dataset_text, r"^path = ")
    assert images.expected == "an existing folder"
    away = case.validate(check_paths="warn")
    assert not has_errors(away) and {p.key for p in away} == {"model.transformer_path", "directory[0].path"}
    assert case.validate(check_paths="off") == []


def test_path_of_wrong_kind(case: Case) -> None:
    case.edit_main(
        f"diffusers_path = '{case.box['diffusers']}'", f"diffusers_path = '{case.box['transformer']}'"
    )
    problem = only(case.validate(), "model.diffusers_path")
    assert "is a file, not a folder" in problem.message


def test_relative_paths_resolve_beside_the_file(case: Case) -> None:
    (case.root / "imgs").mkdir()
    case.edit_dataset(f"path = '{case.box['images']}'", "path = 'imgs'")
    assert case.validate() == []


def test_absent_dataset_file_is_an_error_at_the_dataset_key(case: Case) -> None:
    case.edit_main("dataset = 'dataset.toml'", "dataset = 'missing_dataset.toml'")
    problems = case.validate(check_paths="warn")
    problem = only(problems, "dataset")
    assert problem.severity == "error" and problem.file == str(case.main)
    assert problem.line == line_of(case.main_text, r"^dataset = ") and "missing_dataset.toml" in (
        problem.found or ""
    )


def test_placeholders_are_flagged(case: Case) -> None:
    case.edit_main(str(case.box["diffusers"]), "<PATH TO flux_schnell_diffusers FOLDER>")
    problems = case.validate()
    problem = only(problems, "model.diffusers_path")
    assert problem.code == "placeholder" and problem.severity == "error"
    assert "diffusers folder" in (problem.expected or "")
    off = only(case.validate(check_paths="off"), "model.diffusers_path")
    assert off.severity == "warning"


def test_save_frequency_required(case: Case) -> None:
    case.edit_main("save_every_n_epochs = 1\n", "")
    problem = only(case.validate(), "save_every_n_epochs")
    assert "save_every_n_steps" in (problem.expected or "") and problem.severity == "error"
    case.edit_main("warmup_steps = 100\n", "warmup_steps = 100\nsave_every_n_steps = 500\n")
    assert case.validate() == []


def test_dtype_names(case: Case) -> None:
    case.edit_main("transformer_dtype = 'float8'", "transformer_dtype = 'fp8'")
    case.edit_main(
        "[adapter]\ntype = 'lora'\nrank = 32\ndtype = 'bfloat16'",
        "[adapter]\ntype = 'lora'\nrank = 32\ndtype = 'bf16'",
    )
    problems = case.validate()
    model = only(problems, "model.transformer_dtype")
    assert model.code == "dtype" and "float8_e4m3fn" in (model.expected or "")
    adapter = only(problems, "adapter.dtype")
    assert "did you mean 'bfloat16'" in adapter.message
    assert adapter.line == line_of(case.main_text, r"^dtype = 'bf16'")


@pytest.mark.parametrize(
    ("name", "ok"),
    [("adamw_optimi", True), ("AdamW8bitKahan", True), ("automagic", True), ("Prodigy", True), ("SGD", True)],
)
def test_optimizer_names_accepted(case: Case, name: str, ok: bool) -> None:
    case.edit_main("type = 'adamw_optimi'", f"type = '{name}'")
    assert (case.validate() == []) is ok


def test_optimizer_wrong_case_is_an_error_with_the_right_spelling(case: Case) -> None:
    case.edit_main("type = 'adamw_optimi'", "type = 'prodigy'")
    problem = only(case.validate(), "optimizer.type")
    assert problem.severity == "error" and problem.expected == "'Prodigy'"
    assert problem.line == line_of(case.main_text, r"^type = 'prodigy'")


def test_optimizer_unknown_class_is_a_warning_and_junk_is_an_error(case: Case) -> None:
    case.edit_main("type = 'adamw_optimi'", "type = 'MyFancyOpt'")
    warning = only(case.validate(), "optimizer.type")
    assert warning.severity == "warning" and "pytorch_optimizer.MyFancyOpt" in warning.message
    case.edit_main("type = 'MyFancyOpt'", "type = 'adam w'")
    assert only(case.validate(), "optimizer.type").severity == "error"


def test_builtin_backend_optimizers(case: Case) -> None:
    case.edit_main("type = 'chroma'", "type = 'sdxl'")
    case.edit_main("type = 'adamw_optimi'", "type = 'automagic'")
    problems = case.validate(backend="builtin", check_paths="off")
    assert "built-in trainer has no 'automagic'" in only(problems, "optimizer.type").message


def test_too_many_resolutions(case: Case) -> None:
    case.edit_dataset("resolutions = [512]", "resolutions = [256, 512, 768, 1024]")
    problem = only(case.validate(), "resolutions")
    assert problem.file == str(case.dataset) and problem.line == 1 and "exit status 0" in problem.message


def test_gpu_count_must_divide_into_pipeline_stages(case: Case) -> None:
    case.edit_main("pipeline_stages = 1", "pipeline_stages = 2")
    assert case.validate(num_gpus=4) == []
    problem = only(case.validate(num_gpus=3), "pipeline_stages")
    assert problem.severity == "error" and problem.line == line_of(case.main_text, r"^pipeline_stages")


def test_ar_bucket_keys_required(case: Case) -> None:
    case.edit_dataset("min_ar = 0.5\nmax_ar = 2.0\nnum_ar_buckets = 9\n", "")
    problems = case.validate()
    assert {p.key for p in problems} == {"min_ar", "max_ar", "num_ar_buckets"}
    assert all(p.file == str(case.dataset) and p.code == "buckets" for p in problems)
    case.edit_dataset("frame_buckets = [1]", "frame_buckets = [1]\nar_buckets = [1.0, 1.5]")
    assert case.validate() == []


def test_ar_bucket_per_directory(case: Case) -> None:
    case.edit_dataset("enable_ar_bucket = true\nmin_ar = 0.5\nmax_ar = 2.0\nnum_ar_buckets = 9\n", "")
    case.edit_dataset(
        "num_repeats = 1", "num_repeats = 1\nenable_ar_bucket = true\nmin_ar = 2.5\nmax_ar = 2.0"
    )
    problems = case.validate()
    # min_ar and max_ar also need a top-level value: diffusion-pipe (8f83dbf) reads it even when the directory
    # sets its own.
    keys = {"directory[0].num_ar_buckets", "directory[0].min_ar", "directory[0].max_ar"}
    assert {p.key for p in problems} == keys
    above = [p for p in problems if p.key == "directory[0].min_ar" and "above max_ar" in p.message]
    assert len(above) == 1 and above[0].line == line_of(case.dataset_text, r"^min_ar = 2.5")


def test_backend_support(case: Case) -> None:
    assert not [p for p in case.validate(backend="builtin") if p.key == "model.type"]  # chroma is built in
    case.edit_main("type = 'chroma'", "type = 'wan'")
    problem = only(case.validate(backend="builtin"), "model.type")
    assert problem.code == "backend" and "built-in trainer cannot train 'wan'" in problem.message
    case.edit_main("type = 'wan'", "type = 'chroma'")
    case.edit_main("type = 'chroma'", "type = 'sd15'")
    case.edit_main(f"transformer_path = '{case.box['transformer']}'\n", "")
    case.edit_main("transformer_dtype = 'float8'\n", "")
    case.edit_main("flux_shift = true\n", "")
    dp = only(case.validate(), "model.type")
    assert dp.code == "backend" and "diffusion-pipe cannot train it" in dp.message
    assert case.validate(backend="builtin") == []
    assert case.validate(backend="auto") == []


def test_builtin_backend_limits(case: Case) -> None:
    case.edit_main("type = 'chroma'", "type = 'sdxl'")
    case.edit_main("dtype = 'bfloat16'\ntransformer_dtype = 'float8'", "dtype = 'float8'")
    case.edit_main("pipeline_stages = 1", "pipeline_stages = 2")
    keys = {p.key for p in case.validate(backend="builtin", check_paths="off") if p.code == "backend"}
    assert keys == {"model.dtype", "pipeline_stages"}


def test_wandb_key_in_profile_is_a_masked_warning(case: Case) -> None:
    case.main_text += f"\n[monitoring]\nenable_wandb = true\nwandb_api_key = '{KEY}'\nwandb_tracker_name = 't'\nwandb_run_name = 'r'\n"
    problems = case.validate()
    problem = only(problems, "monitoring.wandb_api_key")
    assert problem.severity == "warning" and problem.found == "***" and "secrets" in problem.message
    assert all(KEY not in str(p) and KEY not in repr(p) for p in problems)
    assert problem.line == line_of(case.main_text, r"^wandb_api_key")


def test_unknown_keys_are_warnings_with_suggestions(case: Case) -> None:
    case.edit_main("save_every_n_epochs = 1", "save_every_n_epochs = 1\nsave_every_n_epoch = 3")
    case.edit_dataset("num_repeats = 1", "num_repeats = 1\nnum_repeat = 2")
    case.edit_main("flux_shift = true", "flux_shift = true\nv_pred = true")
    problems = case.validate()
    top = only(problems, "save_every_n_epoch")
    assert top.severity == "warning" and "did you mean 'save_every_n_epochs'" in top.message
    assert only(problems, "directory[0].num_repeat").severity == "warning"
    # A key some other model type reads is still unknown for this one.
    assert "chroma" in only(problems, "model.v_pred").message
    assert not has_errors(problems)


def test_optimizer_extra_keys_are_not_reported(case: Case) -> None:
    case.edit_main("eps = 1e-8", "eps = 1e-8\nd_coef = 2\nuse_bias_correction = true")
    assert case.validate() == []


def test_block_swap_needs_one_stage_and_an_adapter(case: Case) -> None:
    case.edit_main("pipeline_stages = 1", "pipeline_stages = 2\nblocks_to_swap = 10")
    problem = only(case.validate(), "blocks_to_swap")
    assert "pipeline_stages = 1" in problem.message


def test_lr_scheduler_is_upstreams_set(case: Case) -> None:
    # diffusion-pipe's train.py (8f83dbf) implements constant, linear and cosine; so does the built-in trainer.
    case.edit_main("warmup_steps = 100", "warmup_steps = 100\nlr_scheduler = 'cosine'")
    assert [p for p in case.validate() if p.key == "lr_scheduler"] == []
    case.edit_main("lr_scheduler = 'cosine'", "lr_scheduler = 'cosine_with_restarts'")
    problem = only(case.validate(), "lr_scheduler")
    assert problem.severity == "error" and problem.expected == "one of constant, linear, cosine"
    case.edit_main("lr_scheduler = 'cosine_with_restarts'", "lr_scheduler = 'cosine'")
    case.edit_main("type = 'chroma'", "type = 'sdxl'")
    assert [p for p in case.validate(backend="builtin", check_paths="off") if p.key == "lr_scheduler"] == []


def test_eval_dataset_is_validated_and_missing_one_reported(case: Case) -> None:
    (case.root / "eval.toml").write_text("resolutions = 'x'\n\n[[directory]]\npath = '/nowhere'\n")
    case.edit_main(
        "epochs = 10",
        "eval_datasets = [\n    {name = 'hold', config = 'eval.toml'},\n    {name = 'gone', config = 'gone.toml'},\n]\nepochs = 10",
    )
    problems = case.validate(check_paths="off")
    res = only(problems, "resolutions")
    assert res.file == str(case.root / "eval.toml") and res.line == 1
    gone = only(case.validate(), "eval_datasets[1].config")
    assert gone.line == line_of(case.main_text, r"gone\.toml") and gone.severity == "error"


def test_lines_after_a_multiline_array_are_right(case: Case) -> None:
    case.edit_main(
        "micro_batch_size_per_gpu = 4", "micro_batch_size_per_gpu = [\n    [512, 4],\n    [1024, 1]\n]"
    )
    case.edit_main("warmup_steps = 100", "warmup_steps = -1")
    problem = only(case.validate(), "warmup_steps")
    assert problem.line == line_of(case.main_text, r"^warmup_steps")


def test_bad_arguments_raise_value_error(case: Case) -> None:
    case.write()
    profile = load_profile(case.main)
    with pytest.raises(ValueError):
        validate_profile(profile, check_paths="maybe")
    with pytest.raises(ValueError):
        validate_profile(profile, backend="kohya")


def test_errors_come_before_warnings(case: Case) -> None:
    case.edit_main("save_every_n_epochs = 1", "save_every_n_epochs = 1\nfoo = 1")
    case.edit_main("[adapter]\n", "[adapter]\nalpha = 16\n")
    problems = case.validate()
    assert [p.severity for p in problems] == ["error", "warning"]


def test_secret_values_are_masked_even_in_type_errors(case: Case) -> None:
    case.main_text += "\n[monitoring]\nenable_wandb = false\nwandb_api_key = 918273645546372819\n"
    problems = case.validate()
    problem = only(problems, "monitoring.wandb_api_key")
    assert problem.code == "type" and problem.found == "***"
    assert all("918273645546372819" not in str(p) for p in problems)


def test_eval_dataset_given_as_a_bare_path(case: Case) -> None:
    (case.root / "eval.toml").write_text(
        f"resolutions = [512]\n\n[[directory]]\npath = '{case.box['images']}'\n"
    )
    case.edit_main("epochs = 10", "eval_datasets = ['eval.toml']\nepochs = 10")
    # upstream reads the bare form but then copies eval_dataset['config'] into the run folder (8f83dbf)
    bare = only(case.validate(), "eval_datasets[0]")
    assert bare.severity == "error" and bare.expected == "{name = 'eval0', config = 'eval.toml'}"
    case.edit_main("eval_datasets = ['eval.toml']", "eval_datasets = [{name = 'e', config = 'eval.toml'}]")
    assert case.validate() == []
    (case.root / "eval.toml").write_text("resolutions = [512]\n")
    problem = only(case.validate(), "directory")
    assert problem.file == str(case.root / "eval.toml") and problem.code == "required"


def test_manual_partition_needs_matching_split(case: Case) -> None:
    case.edit_main(
        "pipeline_stages = 1", "pipeline_stages = 3\npartition_method = 'manual'\npartition_split = [10]"
    )
    problem = only(case.validate(num_gpus=3), "partition_split")
    assert problem.expected == "2 entries (pipeline_stages - 1)"
    assert problem.line == line_of(case.main_text, r"^partition_split")
    assert problem.to_dict()["text"] == str(problem) and problem.to_dict()["key"] == "partition_split"
    case.edit_main("partition_split = [10]", "partition_split = [10, 20]")
    assert case.validate(num_gpus=3) == []


def test_angle_brackets_in_captions_are_not_placeholders(case: Case) -> None:
    case.edit_dataset("num_repeats = 1", "num_repeats = 1\ncaption_prefix = '<SKS> dog, '")
    assert case.validate() == []
    case.edit_dataset("'<SKS> dog, '", "'<FILL IN your trigger word>'")
    assert only(case.validate(), "directory[0].caption_prefix").code == "placeholder"


def test_frame_buckets_on_an_image_model_warn(case: Case) -> None:
    case.edit_dataset("frame_buckets = [1]", "frame_buckets = [1, 33]")
    problem = only(case.validate(), "frame_buckets")
    assert problem.severity == "warning" and "images only" in problem.message


def test_absent_keys_point_at_the_related_line(case: Case) -> None:
    case.edit_dataset("min_ar = 0.5\nmax_ar = 2.0\nnum_ar_buckets = 9\n", "")
    case.edit_main("save_every_n_epochs = 1\n", "")
    problems = case.validate()
    enable = line_of(case.dataset_text, r"^enable_ar_bucket")
    assert [p.line for p in problems if p.code == "buckets"] == [enable, enable, enable]
    assert only(problems, "save_every_n_epochs").line == line_of(case.main_text, r"^epochs")


def test_an_unknown_type_does_not_hide_other_model_errors(case: Case) -> None:
    case.edit_main("type = 'chroma'", "type = 'Flux'")
    case.edit_main("dtype = 'bfloat16'\ntransformer_dtype", "dtype = 'bf16'\ntransformer_dtype")
    problems = case.validate()
    assert {p.key for p in problems if p.severity == "error"} == {"model.type", "model.dtype"}


def test_keys_upstream_reads_are_known_and_exclude_linear_modules_is_not(case: Case) -> None:
    """Known keys come from what diffusion-pipe's code reads (profiles.dp_keys), not from a hand list."""
    case.edit_main("rank = 32", "rank = 32\nexclude_modules = ['img_in']\nexclude_linear_modules = ['x']")
    case.edit_dataset("frame_buckets = [1]", "frame_buckets = [1]\nsubsample_ratio = 0.5")
    case.edit_dataset("num_repeats = 1", "num_repeats = 1\nshuffle_metadata = true")
    problems = case.validate()
    assert [p.key for p in problems] == ["adapter.exclude_linear_modules"]
    # upstream never reads exclude_linear_modules: reported, pointing at the key upstream does read
    assert (
        "does not read it" in problems[0].message and "did you mean 'exclude_modules'" in problems[0].message
    )
    case.edit_main("exclude_linear_modules = ['x']", "exclude_module = ['x']")
    assert "did you mean 'exclude_modules'" in only(case.validate(), "adapter.exclude_module").message


def write_checkout(root: Path) -> Path:
    """A tiny diffusion-pipe checkout whose chroma code reads a [model] key 8f83dbf does not know."""
    (root / "models").mkdir(parents=True)
    (root / "train.py").write_text(
        "import toml\n"
        "if __name__ == '__main__':\n"
        "    with open('config.toml') as f:\n"
        "        config = toml.load(f)\n"
        "    model_type = config['model']['type']\n"
        "    knob = config.get('newer_main_knob', 0)\n"
        "    if model_type == 'chroma':\n"
        "        from models import chroma\n"
        "        model = chroma.ChromaPipeline(config)\n"
    )
    (root / "models/chroma.py").write_text(
        "class ChromaPipeline:\n"
        "    def __init__(self, config):\n"
        "        self.config = config\n"
        "        self.model_config = self.config['model']\n"
        "        self.knob = self.model_config.get('newer_chroma_knob', 1.0)\n"
        "        if 'newer_guarded' in self.model_config:\n"
        "            self.guarded = self.model_config['newer_guarded']\n"
    )
    return root


def test_a_key_the_checkout_reads_unguarded_is_required(case: Case, tmp_path: Path) -> None:
    checkout = write_checkout(tmp_path / "dp")
    chroma = checkout / "models/chroma.py"
    chroma.write_text(chroma.read_text() + "        self.lr2 = self.model_config['newer_required_knob']\n")
    problem = only(case.validate(checkout=checkout), "model.newer_required_knob")
    assert (
        problem.severity == "error" and problem.code == "required" and "models/chroma.py:" in problem.message
    )
    assert problem.line == line_of(case.main_text, r"^\[model\]")
    # Built-in knowledge never asks for it; a guarded read (`if 'x' in ...`) is never required.
    assert case.validate(checkout=None) == []
    case.edit_main("flux_shift = true", "flux_shift = true\nnewer_required_knob = 1")
    assert case.validate(checkout=checkout) == []


def test_unknown_keys_follow_the_configured_checkout(case: Case, tmp_path: Path) -> None:
    checkout = write_checkout(tmp_path / "dp")
    case.edit_main("save_every_n_epochs = 1", "save_every_n_epochs = 1\nnewer_main_knob = 2")
    case.edit_main("flux_shift = true", "flux_shift = true\nnewer_chroma_knob = 0.5")
    builtin = {p.key for p in case.validate(checkout=None) if p.code == "unknown_key"}
    assert builtin == {"newer_main_knob", "model.newer_chroma_knob"}
    # The checkout's code reads them: known. Built-in knowledge still counts (the merge only widens).
    assert case.validate(checkout=checkout) == []
    # The default follows the diffusion_pipe.path setting.
    from statefiles import settings

    settings.set_value("diffusion_pipe.path", str(checkout))
    assert case.validate() == []
    # A folder that is not a checkout falls back to the built-in knowledge.
    assert {p.key for p in case.validate(checkout=tmp_path) if p.code == "unknown_key"} == builtin


def test_adapter_type_is_required_by_diffusion_pipe_only(case: Case) -> None:
    case.edit_main("type = 'lora'\n", "")
    problem = only(case.validate(), "adapter.type")
    assert problem.severity == "error" and problem.code == "required" and problem.line is not None
    case.edit_main("type = 'chroma'", "type = 'sdxl'")
    assert [p for p in case.validate(backend="builtin", check_paths="off") if p.key == "adapter.type"] == []


def test_beta2_half_life_needs_betas(case: Case) -> None:
    case.edit_main("betas = [0.9, 0.99]\n", "beta2_half_life = 1000\n")
    problem = only(case.validate(), "optimizer.betas")
    assert problem.severity == "error" and problem.line == line_of(case.main_text, r"^beta2_half_life")
