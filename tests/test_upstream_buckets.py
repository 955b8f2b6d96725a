"""Conformance: `dpdeck dataset buckets` against diffusion-pipe's own bucketing, run on the same generated data.

Runs upstream's utils/dataset.py (tdrussell/diffusion-pipe at commit 8f83dbf, kept in ../shared/upstream/
diffusion-pipe; GPL-3.0, executed here as the other side, never copied into dpdeck) the way train.py drives it:
Dataset(...) per dataset config, cache_metadata, cache_latents, then post_init with the per-size batch tables
train.py builds. Stubbed are only what the bucketing never uses: deepspeed's logger and rank (rank 0), ComfyUI
(a git submodule, absent: its video reader is the only user), multiprocess, imageio's extension list (videos
only), and HuggingFace `datasets`, replaced by a small in-memory table with the same map / shuffle / save
semantics (it is not installed here). The latent cache (_map_and_cache: a VAE run in worker processes) is
replaced by one placeholder entry per metadata row, which is all the example counts read from it. Videos are left
out: upstream reads them through ComfyUI's decoder.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import logging
import math
import pickle
import random
import subprocess
import sys
import tarfile
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from statefiles.toml import loads as toml_loads
from tui.cli.cmd_dataset import bucket_preview

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = Path(__file__).resolve().parents[2] / "shared/upstream/diffusion-pipe"
UPSTREAM_COMMIT = "8f83dbf"

pytestmark = pytest.mark.skipif(
    not (UPSTREAM / "utils/dataset.py").is_file(),
    reason=f"../shared/upstream/diffusion-pipe absent: the conformance test runs upstream's code ({UPSTREAM_COMMIT})",
)


# A stand-in for the parts of HuggingFace `datasets` utils/dataset.py calls, rows kept in memory.


def _plain(value: Any) -> Any:
    """What an Arrow round trip gives back: tuples as lists, numpy scalars as Python numbers."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):
        return _plain(value.tolist())
    return value


class _Table:
    def __init__(self, columns: dict[str, list[Any]]) -> None:
        self._cols = {k: [_plain(v) for v in vals] for k, vals in columns.items()}
        self._fingerprint = "stand-in"

    @classmethod
    def from_dict(cls, mapping: dict[str, list[Any]]) -> _Table:
        return cls(dict(mapping))

    @property
    def column_names(self) -> list[str]:
        return list(self._cols)

    def __len__(self) -> int:
        return len(next(iter(self._cols.values()))) if self._cols else 0

    def _row(self, i: int) -> dict[str, Any]:
        return {k: v[i] for k, v in self._cols.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self._row(i) for i in range(len(self)))

    def __getitem__(self, key: str | int) -> Any:
        return self._cols[key] if isinstance(key, str) else self._row(key)

    def select_columns(self, names: list[str]) -> _Table:
        return _Table({k: self._cols[k] for k in names})

    def shuffle(self, seed: int | None = None) -> _Table:
        order = list(range(len(self)))
        random.Random(seed).shuffle(order)
        return _Table({k: [v[i] for i in order] for k, v in self._cols.items()})

    def map(
        self,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        batched: bool = False,
        batch_size: int = 1000,
        remove_columns: list[str] | None = None,
        **_: Any,
    ) -> _Table:
        if not batched:
            rows = [{**row, **fn(row)} for row in self]
            names = list(dict.fromkeys(k for row in rows for k in row)) or self.column_names
            return _Table({k: [row.get(k) for row in rows] for k in names})
        out: dict[str, list[Any]] = {}
        for start in range(0, len(self), batch_size):
            batch = {k: v[start : start + batch_size] for k, v in self._cols.items()}
            result = fn(batch)
            if not remove_columns:
                result = {**batch, **result}
            for k, v in result.items():
                out.setdefault(k, []).extend(v)
        return _Table(out)

    def save_to_disk(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "table.pkl").write_bytes(pickle.dumps(self._cols))


def _load_from_disk(path: str) -> _Table:
    return _Table(pickle.loads((Path(path) / "table.pkl").read_bytes()))


def _stub_modules() -> dict[str, types.ModuleType]:
    mods: dict[str, types.ModuleType] = {}

    def mod(name: str, **attrs: Any) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        mods[name] = m
        return m

    comm = mod("deepspeed.comm.comm", get_rank=lambda: 0, get_world_size=lambda: 1)
    mod("deepspeed.comm", comm=comm, get_rank=lambda: 0)
    mod("deepspeed.utils.logging", logger=logging.getLogger("upstream-diffusion-pipe"))
    mod("deepspeed.utils")
    mod("deepspeed", comm=mods["deepspeed.comm"])
    mod("datasets", Dataset=_Table, load_from_disk=_load_from_disk)
    mod("datasets.fingerprint", Hasher=types.SimpleNamespace(hash=lambda x: "stand-in"))
    video = [types.SimpleNamespace(extension=e) for e in (".mp4", ".mov", ".mkv", ".webm", ".avi")]
    mod("imageio", config=types.SimpleNamespace(video_extensions=video))
    mod("multiprocess")
    mod("comfy_api.latest", InputImpl=None)
    mod("comfy_api")
    mod("comfy.model_management")
    mod("comfy")
    return mods


@pytest.fixture
def upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    for name, module in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in [n for n in sys.modules if n == "utils" or n.startswith("utils.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(UPSTREAM))
    import utils.dataset as dataset_util  # upstream's, from UPSTREAM

    assert Path(dataset_util.__file__).resolve().is_relative_to(UPSTREAM.resolve())
    # The latent cache: one placeholder entry per metadata row (the VAE itself never runs).
    monkeypatch.setattr(
        dataset_util, "_map_and_cache", lambda dataset, map_fn, cache_dir, **kw: list(range(len(dataset)))
    )
    yield dataset_util
    for name in [n for n in sys.modules if n == "utils" or n.startswith("utils.")]:
        del sys.modules[name]


def _pipeline_attr(model_type: str, attr: str, default: Any) -> Any:
    """A class attribute of the upstream pipeline whose `name` is model_type (models/*.py), read with ast."""
    for path in sorted((UPSTREAM / "models").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            values = {
                t.id: s.value
                for s in node.body
                if isinstance(s, ast.Assign)
                for t in s.targets
                if isinstance(t, ast.Name)
            }
            name = values.get("name")
            if isinstance(name, ast.Constant) and name.value == model_type:
                value = values.get(attr)
                return value.value if isinstance(value, ast.Constant) else default
    raise AssertionError(f"no upstream pipeline named {model_type}")


def _batch_dict(raw: Any) -> dict[Any, int]:
    # train.py: a number -> {None: n}; a list of [size, batch] -> {size: batch}.
    return {None: raw} if isinstance(raw, int) else {x[0]: x[1] for x in raw}


def run_upstream(
    dataset_util: types.ModuleType, dataset_cfg: dict[str, Any], main_cfg: dict[str, Any], model_type: str
) -> dict[str, Any]:
    model = types.SimpleNamespace(
        name=model_type,
        framerate=None,
        pixels_round_to_multiple=_pipeline_attr(model_type, "pixels_round_to_multiple", 16),
        model_specific_dataset_config_validation=lambda cfg: None,
    )
    data = dataset_util.Dataset(copy.deepcopy(dataset_cfg), model)
    data.cache_metadata(regenerate_cache=True)
    data.cache_latents(None, regenerate_cache=True)
    micro = _batch_dict(main_cfg.get("micro_batch_size_per_gpu", 1))
    image_micro = _batch_dict(
        main_cfg.get("image_micro_batch_size_per_gpu", main_cfg.get("micro_batch_size_per_gpu", 1))
    )
    data.post_init(0, 1, micro, main_cfg.get("gradient_accumulation_steps", 1), image_micro)
    buckets = {}
    for bucket in data.buckets:
        key = tuple(int(v) for v in bucket.datasets[0].size_bucket[-3:])
        buckets[key] = buckets.get(key, 0) + len(bucket.iteration_order)
    return {"buckets": buckets, "steps": len(data), "pixel_multiple": model.pixels_round_to_multiple}


def run_dpdeck(toml: Path, main: Path, cli: bool = False) -> dict[str, Any]:
    if cli:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tui.cli",
                "dataset",
                "buckets",
                str(toml),
                "--profile",
                str(main),
                "--json",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        preview = json.loads(out.stdout)
    else:
        preview = bucket_preview(toml, str(main), 1)
    buckets: dict[tuple[int, int, int], int] = {}
    for b in preview["buckets"]:
        key = (b["width"], b["height"], b["frames"])
        buckets[key] = buckets.get(key, 0) + b["items"]
    return {
        "buckets": {k: v for k, v in buckets.items() if v},
        "steps": preview["steps_per_epoch"],
        "preview": preview,
    }


# The generated dataset.


def _img(path: Path, w: int, h: int, caption: str | None) -> None:
    Image.new("RGB", (w, h), (w % 256, h % 256, 90)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def _png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def make_dataset(root: Path) -> dict[str, Path]:
    txt = root / "txt"
    txt.mkdir()
    sizes = [(512, 512), (640, 480), (480, 640), (1024, 576), (300, 900), (700, 500), (512, 512), (900, 300)]
    for i, (w, h) in enumerate(sizes):
        _img(txt / f"img{i}.png", w, h, f"tag{i}, red, blue, green")
    _img(txt / "empty.jpg", 600, 400, "")  # an empty caption: upstream trains it
    _img(txt / "nocap.png", 400, 600, None)  # no caption: skipped (skip_empty_caption)
    (txt / "notes.md").write_text("not an image", encoding="utf-8")

    js = root / "json"
    js.mkdir()
    _img(js / "a.png", 800, 600, "ignored: captions.json wins")
    _img(js / "b.png", 600, 800, None)
    _img(js / "c.png", 512, 512, None)
    _img(js / "d.png", 1000, 500, "no entry: skipped although the .txt exists")
    (js / "captions.json").write_text(
        json.dumps({"a.png": ["one", "two"], "b.png": ["three"], "c.png": ["", "four", "five"]}),
        encoding="utf-8",
    )

    tar_dir = root / "tar"
    tar_dir.mkdir()
    with tarfile.open(tar_dir / "images.tar", "w") as tar:
        for name, (w, h) in {"t1.png": (640, 360), "sub/t2.png": (360, 640), "t3.png": (500, 500)}.items():
            payload = _png_bytes(w, h)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        note = b"an archive member that is not an image"
        info = tarfile.TarInfo("t1.txt")
        info.size = len(note)
        tar.addfile(info, io.BytesIO(note))
    (tar_dir / "captions.json").write_text(
        json.dumps({"t1.png": ["tar one"], "sub/t2.png": ["tar two", "tar two b"]}), encoding="utf-8"
    )
    return {"txt": txt, "json": js, "tar": tar_dir}


CASES: dict[str, tuple[str, str, str]] = {
    # name: (dataset TOML body after the directories' paths are filled in, main TOML extras, model type)
    "geomspace, cache_shuffle_num, per-size batch": (
        "resolutions = [512, [640, 480], 512.0004]\nenable_ar_bucket = true\nmin_ar = 0.5\nmax_ar = 2.0\n"
        "num_ar_buckets = 7\n"
        '[[directory]]\npath = "{txt}"\ncache_shuffle_num = 3\n'
        '[[directory]]\npath = "{json}"\nnum_repeats = 2\n'
        '[[directory]]\npath = "{tar}"\nnum_repeats = 1.5\n',
        "micro_batch_size_per_gpu = [[512, 2], [600, 3]]\n",
        "flux",
    ),
    "explicit ar_buckets rounded, shuffle_tags, accumulation": (
        "resolutions = [448]\nenable_ar_bucket = true\nar_buckets = [[4, 3], 1.3333, 0.5, [16, 9], 1.7777]\n"
        "shuffle_tags = true\nsubsample_ratio = 0.5\n"
        '[[directory]]\npath = "{txt}"\nskip_empty_caption = false\n'
        '[[directory]]\npath = "{json}"\n',
        "micro_batch_size_per_gpu = 1\ngradient_accumulation_steps = 2\n",
        "ltx-video",
    ),
    "size_buckets (examples/cosmos_dataset.toml)": (
        "size_buckets = [[960, 960, 1], [960, 704, 1], [704, 960, 1], [1280, 704, 1], [704, 1280, 1]]\n"
        '[[directory]]\npath = "{txt}"\nnum_repeats = 3\n'
        '[[directory]]\npath = "{tar}"\n',
        "micro_batch_size_per_gpu = 2\n",
        "cosmos",
    ),
    "size_buckets with a video entry first": (
        "size_buckets = [[512, 768, 1], [512, 512, 33], [512, 512, 1], [768, 512, 1]]\n"
        '[[directory]]\npath = "{txt}"\n'
        '[[directory]]\npath = "{json}"\n',
        "micro_batch_size_per_gpu = 1\n",
        "cosmos",
    ),
}


@pytest.fixture(autouse=True)
def diffusion_pipe_configured() -> None:
    """A diffusion-pipe user's box: with a checkout configured, `dataset buckets` counts by upstream's rules (without
    one, flux and chroma would run on the built-in trainer, and the preview would say so)."""
    from statefiles import settings

    settings.set_value("diffusion_pipe.path", str(UPSTREAM))


def _write_case(tmp_path: Path, dirs: dict[str, Path], case: tuple[str, str, str]) -> tuple[Path, Path]:
    body, main_extra, model_type = case
    toml = tmp_path / "dataset.toml"
    toml.write_text(body.format(**{k: str(v) for k, v in dirs.items()}), encoding="utf-8")
    main = tmp_path / "main.toml"
    main.write_text(
        f'output_dir = "{tmp_path / "out"}"\ndataset = "dataset.toml"\nepochs = 1\n{main_extra}'
        f'[model]\ntype = "{model_type}"\ndtype = "bfloat16"\n',
        encoding="utf-8",
    )
    return toml, main


@pytest.mark.parametrize("name", list(CASES))
def test_buckets_and_example_counts_equal_upstream(
    tmp_path: Path, upstream: types.ModuleType, name: str
) -> None:
    dirs = make_dataset(tmp_path)
    toml, main = _write_case(tmp_path, dirs, CASES[name])
    mine = run_dpdeck(toml, main)
    assert mine["preview"]["backend"] == "diffusion-pipe"
    theirs = run_upstream(
        upstream,
        toml_loads(toml.read_text(encoding="utf-8")),
        toml_loads(main.read_text(encoding="utf-8")),
        CASES[name][2],
    )
    assert mine["preview"]["round_to"] == theirs["pixel_multiple"]
    assert mine["buckets"] == {k: v for k, v in theirs["buckets"].items() if v}
    assert mine["steps"] == theirs["steps"]
    assert mine["steps"] > 0


def test_cli_json_equals_upstream_and_names_the_rules(tmp_path: Path, upstream: types.ModuleType) -> None:
    dirs = make_dataset(tmp_path)
    name = "geomspace, cache_shuffle_num, per-size batch"
    toml, main = _write_case(tmp_path, dirs, CASES[name])
    mine = run_dpdeck(toml, main, cli=True)
    theirs = run_upstream(
        upstream,
        toml_loads(toml.read_text(encoding="utf-8")),
        toml_loads(main.read_text(encoding="utf-8")),
        "flux",
    )
    assert mine["buckets"] == {k: v for k, v in theirs["buckets"].items() if v}
    preview = mine["preview"]
    assert preview["global_batch_by_size"] == [[512, 2], [600, 3]]
    assert {b["batch"] for b in preview["buckets"]} == {2, 3}


def test_cache_shuffle_num_multiplies_examples_as_upstream(
    tmp_path: Path, upstream: types.ModuleType
) -> None:
    """The issue's report: a set dpdeck counted 2 examples on and upstream trains 9 (cache_shuffle_num)."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        _img(d / f"{i}.png", 512, 512, "a, b, c")
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        f'resolutions = [512]\ncache_shuffle_num = 3\n[[directory]]\npath = "{d}"\n', encoding="utf-8"
    )
    main = tmp_path / "main.toml"
    main.write_text(
        f'output_dir = "{tmp_path}"\ndataset = "dataset.toml"\nepochs = 1\n[model]\ntype = "flux"\n',
        encoding="utf-8",
    )
    mine = run_dpdeck(toml, main)
    theirs = run_upstream(upstream, toml_loads(toml.read_text(encoding="utf-8")), {}, "flux")
    assert mine["buckets"] == theirs["buckets"] == {(512, 512, 1): 9}


def test_size_buckets_quirk_is_reproduced_and_warned(tmp_path: Path, upstream: types.ModuleType) -> None:
    """Upstream 8f83dbf indexes size_buckets by the sorted aspect-ratio list: with the cosmos example's order a
    square image trains at 704x960. dpdeck shows the same and says why."""
    d = tmp_path / "sq"
    d.mkdir()
    _img(d / "square.png", 600, 600, "square")
    toml = tmp_path / "dataset.toml"
    toml.write_text(
        "size_buckets = [[960, 960, 1], [960, 704, 1], [704, 960, 1], [1280, 704, 1], [704, 1280, 1]]\n"
        f'[[directory]]\npath = "{d}"\n',
        encoding="utf-8",
    )
    main = tmp_path / "main.toml"
    main.write_text(
        f'output_dir = "{tmp_path}"\ndataset = "dataset.toml"\nepochs = 1\n[model]\ntype = "cosmos"\n',
        encoding="utf-8",
    )
    mine = run_dpdeck(toml, main)
    theirs = run_upstream(upstream, toml_loads(toml.read_text(encoding="utf-8")), {}, "cosmos")
    assert mine["buckets"] == theirs["buckets"] == {(704, 960, 1): 1}
    assert any("size_buckets" in w and "ascending" in w for w in mine["preview"]["warnings"])


def test_geomspace_equals_numpy() -> None:
    np = pytest.importorskip("numpy")
    from engine.datasets.buckets import ar_bucket_list

    for lo, hi, n in [(0.5, 2.0, 7), (0.25, 4.0, 9), (0.6, 1.8, 11), (0.333, 3.0, 16), (1.0, 1.0, 3)]:
        expected = sorted({float(x) for x in np.round(np.geomspace(lo, hi, num=n), 3)})
        got = ar_bucket_list({"enable_ar_bucket": True, "min_ar": lo, "max_ar": hi, "num_ar_buckets": n}, "t")
        assert got == expected
    assert math.isclose(ar_bucket_list({"enable_ar_bucket": True, "ar_buckets": [[16, 9]]}, "t")[0], 1.778)
