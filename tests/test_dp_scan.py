"""The diffusion-pipe key scan (profiles/dp_scan.py), its built-in data, keys_for() and `dpdeck doctor`'s report.

The built-in JSON is regenerated from ../shared/upstream/diffusion-pipe (8f83dbf) when that folder is here, so the
data cannot drift from the scanner; known upstream facts are checked on the data itself (always) and synthetic
checkouts prove the scan reports what it was not told about.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from profiles import dp_keys, dp_scan

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = Path(__file__).resolve().parents[2] / "shared/upstream/diffusion-pipe"


def _need_upstream() -> Path:
    if not (UPSTREAM / "train.py").is_file():
        pytest.skip("../shared/upstream/diffusion-pipe absent: the regeneration check needs upstream 8f83dbf")
    return UPSTREAM


@pytest.fixture(scope="module")
def upstream_scan() -> dp_scan.ScanResult:
    return dp_scan.scan(_need_upstream(), commit=dp_keys.BUILTIN_COMMIT, source="tdrussell/diffusion-pipe")


def test_builtin_json_is_what_the_scanner_makes_of_upstream(upstream_scan: dp_scan.ScanResult) -> None:
    committed = json.loads(dp_keys.DATA.read_text(encoding="utf-8"))
    assert upstream_scan.to_json() == committed, (
        "profiles/data/diffusion_pipe_8f83dbf.json is stale: regenerate it (docs/diffusion_pipe.md)")
    assert committed["problems"] == []


KNOWN = [
    ("adapter", "exclude_modules", None),
    ("adapter", "rank_dropout", None),
    ("dataset", "shuffle_metadata", None),
    ("directory", "shuffle_metadata", None),
    ("dataset", "subsample_ratio", None),
    ("dataset", "online_captions", None),
    ("directory", "online_captions", None),
    ("directory", "default_mask_file", None),
    ("dataset", "cache_shuffle_num", None),
    ("directory", "cache_shuffle_num", None),
    ("model", "cache_text_embeddings", "wan"),
    ("model", "text_encoder_fp8", "wan"),
    ("monitoring", "wandb_api_key", None),
    ("main", "lr_scheduler", None),
    ("main", "eval_datasets", None),
] + [("model", key, mtype) for mtype in ("cosmos_predict2", "anima")
     for key in ("llm_path", "llm_adapter_path", "multiscale_loss_weight", "self_attn_lr", "cross_attn_lr",
                 "mlp_lr", "mod_lr", "t5_path")]


@pytest.mark.parametrize(("table", "key", "mtype"), KNOWN)
def test_builtin_knows_what_upstream_reads(table: str, key: str, mtype: str | None) -> None:
    assert dp_keys.builtin().reads(table, key, mtype), f"{table}.{key} ({mtype})"


def test_builtin_facts_taken_from_upstream() -> None:
    k = dp_keys.builtin()
    assert k.commit == "8f83dbf"
    assert "8f83dbf" in k.source
    assert not k.reads("adapter", "exclude_linear_modules")
    assert not k.reads("model", "qwen_path", "anima")
    assert {"constant", "linear", "cosine"} <= set(k.enums["main.lr_scheduler"])
    assert set(k.enums["adapter.type"]) == {"lora", "lokr"}
    assert "bfloat16" in k.enums["model.dtype"]  # DTYPE_MAP's keys: the subscript-of-a-map rule
    # through self.video_clip_mode and a method parameter to `video_clip_mode == 'single_middle'`
    assert k.enums["main.video_clip_mode"] == ("single_beginning", "single_middle")
    # dispatch: both names load models/cosmos_predict2.py; wan lives in a package
    assert k.model_files["anima"] == k.model_files["cosmos_predict2"] == "models/cosmos_predict2.py"
    assert k.model_files["wan"] == "models/wan/wan.py"
    assert set(k.enums["model.type"]) == set(k.model_types)
    # required: unguarded subscripts only
    assert k.model_keys("sdxl")["checkpoint_path"].required
    assert not k.reads("model", "diffusers_path", "sdxl")
    ltx2 = k.model_keys("ltx2")
    assert ltx2["diffusion_model"].required and ltx2["text_encoder"].required
    assert "vae" not in ltx2 and "text_encoders" not in ltx2  # ComfyPipeline.__init__ is overridden there
    assert k.model_keys("z_image")["vae"].required  # ... and inherited here
    anima = k.model_keys("anima")
    assert not anima["llm_path"].required and not anima["t5_path"].required  # `'t5_path' in model_config`
    assert k.tables["model"]["dtype"].required
    assert k.tables["directory"]["path"].required
    assert not k.tables["main"]["adapter"].required  # full fine-tunes have none
    assert not k.tables["directory"]["num_repeats"].required  # setdefault in _set_defaults
    assert not k.tables["monitoring"]["wandb_api_key"].required  # read only when enable_wandb
    assert k.tables["directory"]["num_repeats"].default == 1
    assert k.tables["main"]["lr_scheduler"].default == "constant"
    assert k.tables["adapter"]["exclude_modules"].where.startswith("models/base.py:")
    assert "optimizer" in k.open_tables  # its keys go to the optimizer's constructor


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


SYNTHETIC = {
    "train.py": """\
        import toml
        from utils import dataset as dataset_util

        if __name__ == '__main__':
            with open('x.toml') as f:
                config = toml.load(f)
            config.setdefault('warmup_steps', 0)
            model_type = config['model']['type']
            if model_type == 'foo':
                from models import foo
                model = foo.FooPipeline(config)
            elif model_type in ('bar', 'baz', 'sdxl'):
                from models import bar
                model = bar.BarPipeline(config)
            if config.get('brand_new_scheduler', 'steady') == 'wavy':
                pass
            if config['warmup_steps'] > 0:
                print(config['epochs'])
            print(config['output_dir'])
            if config.get('resume'):
                print(config['run_root'])
            elif model_type == 'foo':
                print(config['run_root'])
            else:
                print(config['run_root'], config['only_else'])
            if config.get('monitor') and is_main_process():
                print(config['monitor_key'])
            if is_main_process():
                print(config['rank0_key'])
    """,
    "models/__init__.py": "",
    "models/base.py": """\
        class BasePipeline:
            def __init__(self, config):
                self.config = config
                self.model_config = self.config['model']
                self.vae = self.model_config['vae_path']

            def loss(self):
                return self.config.get('huber_delta', 0.5)
    """,
    "models/foo.py": """\
        from models.base import BasePipeline

        class FooPipeline(BasePipeline):
            def __init__(self, config):
                super().__init__(config)
                self.path = self.model_config['foo_path']
                self.knob = self.model_config.get('new_knob', 3)
    """,
    "models/bar.py": """\
        from models.base import BasePipeline

        class BarPipeline(BasePipeline):
            def __init__(self, config):
                self.config = config
                self.model_config = config['model']
                if 'bar_path' in self.model_config:
                    print(self.model_config['bar_path'])
    """,
    "utils/dataset.py": """\
        def check(dataset_config):
            for directory_config in dataset_config['directory']:
                print(directory_config['path'], directory_config.get('sparkle', False))
    """,
}


def test_scanner_reports_keys_of_a_checkout_it_never_saw(tmp_path: Path) -> None:
    _write(tmp_path, SYNTHETIC)
    r = dp_scan.scan(tmp_path)
    assert r.commit is None and r.problems == []
    assert r.model_files == {"foo": "models/foo.py", "bar": "models/bar.py", "baz": "models/bar.py",
                             "sdxl": "models/bar.py"}
    foo, bar = r.model_types["foo"], r.model_types["bar"]
    assert foo["foo_path"] == {"required": True, "default": None, "where": "models/foo.py:6"}
    assert foo["new_knob"]["required"] is False and foo["new_knob"]["default"] == 3
    assert foo["vae_path"]["required"]  # base __init__ runs through super()
    assert "vae_path" not in bar  # overridden without super()
    assert bar["bar_path"]["required"] is False  # guarded by `in`
    main = r.tables["main"]
    assert main["output_dir"]["required"] and main["output_dir"]["where"] == "train.py:19"
    assert not main["epochs"]["required"]  # only under an `if`
    assert main["run_root"]["required"] and main["run_root"]["where"] == "train.py:21"  # every branch reads it
    assert not main["only_else"]["required"]
    assert not main["monitor_key"]["required"]  # `monitor and is_main_process()` is still conditional on monitor
    assert main["rank0_key"]["required"]  # rank 0 runs it in every run
    assert not main["warmup_steps"]["required"]  # setdefault
    assert main["huber_delta"]["default"] == 0.5
    assert r.tables["directory"]["sparkle"]["default"] is False
    assert r.tables["directory"]["path"]["required"]
    assert r.enums["main.brand_new_scheduler"] == ["wavy"]
    assert set(r.enums["model.type"]) == {"foo", "bar", "baz", "sdxl"}


def test_scanner_cli_json_and_text(tmp_path: Path) -> None:
    _write(tmp_path, SYNTHETIC)
    out = subprocess.run([sys.executable, "-m", "profiles.dp_scan", str(tmp_path), "--json", "--commit", "abc"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["commit"] == "abc" and "foo_path" in data["model_types"]["foo"]
    text = subprocess.run([sys.executable, "-m", "profiles.dp_scan", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert "foo_path  required  models/foo.py:6" in text.stdout
    bad = subprocess.run([sys.executable, "-m", "profiles.dp_scan", str(tmp_path / "nope")], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 1 and "no train.py" in bad.stdout


def _git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


def _repo(root: Path) -> str:
    _write(root, SYNTHETIC)
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "synthetic")
    return _git(root, "rev-parse", "HEAD")


def test_keys_for_merges_caches_and_follows_edits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    head = _repo(tmp_path / "dp")
    k = dp_keys.keys_for(tmp_path / "dp")
    assert k.commit == head and k.problem is None and k.source == str((tmp_path / "dp").resolve())
    assert dp_scan.git_commit(tmp_path / "dp/models") is None  # a folder inside a repo is not its checkout
    assert k.reads("model", "foo_path", "foo") and k.model_keys("foo")["foo_path"].required
    # built-in keys stay known, but are required only where the checkout itself subscripts them
    assert k.reads("adapter", "exclude_modules") and k.reads("model", "llm_path", "anima")
    assert not k.model_keys("sdxl")["checkpoint_path"].required
    assert k.tables["main"]["output_dir"].required
    assert set(k.enums["main.lr_scheduler"]) == {"constant", "cosine", "linear"}  # built-in's, kept
    assert k.enums["main.brand_new_scheduler"] == ("wavy",)  # the checkout's
    new = dp_keys.lacking(dp_keys.scan_checkout(tmp_path / "dp"), dp_keys.builtin())
    assert ("model.new_knob", "models/foo.py:7") in new and ("model.foo_path", "models/foo.py:6") in new
    assert not [name for name, _w in new if name.startswith("main.output_dir")]
    assert ("model.type = 'foo'", "models/foo.py") in new  # a model type 8f83dbf does not have
    assert ("model.bar_path for sdxl", "models/bar.py:7") in new  # a type 8f83dbf has, reading a new key
    assert "model.type = 'sdxl'" not in dict(new)

    # a fresh process would read the cache: prove it by making a rescan impossible
    dp_keys._memo.clear()
    dp_keys._merged.clear()

    def no_scan(*_a: object, **_k: object) -> None:
        raise AssertionError("scanned again although nothing changed")

    monkeypatch.setattr(dp_scan, "scan", no_scan)
    assert dp_keys.keys_for(tmp_path / "dp").reads("model", "foo_path", "foo")
    started = time.perf_counter()
    for _ in range(5):
        dp_keys.keys_for(tmp_path / "dp")
    warm_ms = (time.perf_counter() - started) * 1000 / 5
    assert warm_ms < 20, f"keys_for of a cached checkout took {warm_ms:.1f} ms"
    monkeypatch.undo()

    # an edit (new mtime) is a new scan
    foo = tmp_path / "dp/models/foo.py"
    foo.write_text(foo.read_text() + "\n        def more(self):\n            return self.model_config['later_key']\n")
    os.utime(foo, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert dp_keys.keys_for(tmp_path / "dp").model_keys("foo")["later_key"].where == "models/foo.py:10"


def test_keys_for_without_a_usable_checkout_is_builtin_with_a_reason(tmp_path: Path) -> None:
    assert dp_keys.keys_for(None) is dp_keys.builtin()
    started = time.perf_counter()
    dp_keys.keys_for(None)
    assert (time.perf_counter() - started) * 1000 < 20
    missing = dp_keys.keys_for(tmp_path / "absent")
    assert "does not exist" in (missing.problem or "") and missing.tables == dp_keys.builtin().tables
    (tmp_path / "other").mkdir()
    foreign = dp_keys.keys_for(tmp_path / "other")
    assert "no train.py" in (foreign.problem or "") and foreign.reads("adapter", "rank_dropout")


def test_a_syntax_error_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    _write(tmp_path, {**SYNTHETIC, "models/broken.py": "def (:\n"})
    k = dp_keys.keys_for(tmp_path)
    assert "models/broken.py: not scanned" in (k.problem or "")
    assert k.reads("model", "foo_path", "foo")


def _dpdeck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300, env=os.environ.copy())


def test_doctor_reports_commit_and_keys_builtin_lacks(tmp_path: Path) -> None:
    from engine import doctor

    head = _repo(tmp_path / "dp")
    set_ = _dpdeck("config", "set", "diffusion_pipe.path", str(tmp_path / "dp"))
    assert set_.returncode == 0, set_.stderr
    checks = {c.name: c for c in doctor.diffusion_pipe_checks(str(tmp_path / "dp"))}
    assert checks["diffusion-pipe"].status == "ok"
    assert f"commit {head[:12]}, clean" in checks["diffusion-pipe"].detail
    detail = checks["diffusion-pipe keys"].detail
    assert "built-in knowledge (8f83dbf) lacks" in detail
    assert "model.new_knob (models/foo.py:7)" in detail
    assert "main.brand_new_scheduler (train.py:15)" in detail
    assert "directory.sparkle (utils/dataset.py:3)" in detail
    assert "main.output_dir" not in detail  # built-in knows it

    (tmp_path / "dp/train.py").write_text((tmp_path / "dp/train.py").read_text() + "# local edit\n")
    out = _dpdeck("doctor")
    assert f"commit {head[:12]}, local changes" in out.stdout, out.stdout + out.stderr
    assert "[info] diffusion-pipe keys: keys this checkout reads" in out.stdout


def test_doctor_on_upstream_itself_lacks_nothing(tmp_path: Path) -> None:
    from engine import doctor

    checks = {c.name: c for c in doctor.diffusion_pipe_checks(str(_need_upstream()))}
    assert "not a git checkout" in checks["diffusion-pipe"].detail
    assert checks["diffusion-pipe keys"].status == "ok"
    assert "none: dpdeck's built-in knowledge (8f83dbf)" in checks["diffusion-pipe keys"].detail


def test_a_damaged_cache_is_rescanned_not_trusted(tmp_path: Path) -> None:
    _write(tmp_path / "dp", SYNTHETIC)
    dp_keys.keys_for(tmp_path / "dp")
    cached = list((dp_keys.paths.cache_dir() / dp_keys.CACHE_SUBDIR).glob("*.json"))
    assert len(cached) == 1
    cached[0].write_text('{"checkout": "x", "stamp": [')  # a torn or foreign file
    dp_keys._memo.clear()
    assert dp_keys.keys_for(tmp_path / "dp").model_keys("foo")["foo_path"].required
    assert json.loads(cached[0].read_text())["checkout"] == str((tmp_path / "dp").resolve())
