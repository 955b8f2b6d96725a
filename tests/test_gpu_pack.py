"""The GPU check pack (bench/gpu/) between GPU runs: its pins cannot rot, its driver loses nothing when a check
raises, hangs or dies, and its whole flow passes as a CPU dry run with tiny models.

The dry run is the real thing on the CPU: `bash bench/gpu/run.sh --cpu-dry-run OUT`, real daemon, queue,
deepspeed launcher and built-in trainer, the checks that need a GPU skipped with their reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
GPU = REPO / "bench" / "gpu"
sys.path.insert(0, str(GPU))

import checks  # noqa: E402
import driver  # noqa: E402
import pack  # noqa: E402

NO_GPU = {"ok": False, "reason": "NVML failed to initialise: test"}


# ---- the pins ----------------------------------------------------------------------------------------------


def test_pins_cover_every_dpdeck_dependency() -> None:
    assert pack.check_pins_cover_dpdeck(pack.read_pins()) == []


def test_a_dependency_neither_carried_nor_in_the_image_is_named() -> None:
    pins = [p for p in pack.read_pins() if p.name != "textual"]
    problems = pack.check_pins_cover_dpdeck(pins)
    assert len(problems) == 1 and "textual" in problems[0] and "neither carried" in problems[0]


def test_a_pin_outside_pyprojects_range_is_named() -> None:
    pins = [pack.Pin(p.name, "7.0.0", False) if p.name == "textual" else p for p in pack.read_pins()]
    (problem,) = pack.check_pins_cover_dpdeck(pins)
    assert "textual 7.0.0 carried does not satisfy it" in problem


def test_every_requirement_of_the_pinned_versions_is_carried_or_in_the_image() -> None:
    """The pins' own Requires-Dist, read from the installed distributions where they are the pinned version."""
    from importlib.metadata import PackageNotFoundError, distribution

    pins = pack.read_pins()
    carried = {p.name: p.version for p in pins}
    metadata: dict[str, str] = {}
    for pin in pins:
        try:
            dist = distribution(pin.name)
        except PackageNotFoundError:
            continue
        if dist.version == pin.version:
            metadata[pin.name] = dist.read_text("METADATA") or ""
    if "diffusers" not in metadata:  # the oldest-Python lane installs dpdeck without its train extra
        pytest.skip(f"the train extra is not installed here; pins found: {sorted(metadata)}")
    assert len(metadata) >= len(pins) - 4, f"too few pins installed here to check: {sorted(metadata)}"
    assert pack.check_closure(metadata, carried) == []


def test_closure_names_an_uncarried_requirement() -> None:
    meta = "Metadata-Version: 2.1\nName: a\nVersion: 1\nRequires-Dist: nowhere-pkg>=2\nRequires-Dist: x; extra == 'y'\n"
    assert pack.check_closure({"a": meta}, {"a": "1"}) == [
        "a needs nowhere-pkg>=2 is neither carried (bench/gpu/wheels.txt) nor in the GPU image (pack.py IMAGE)"
    ]
    too_old = "Name: b\nRequires-Dist: torch>=3\n"
    assert "torch 2.11.0 in the image does not satisfy it" in pack.check_closure({"b": too_old}, {})[0]


@pytest.mark.parametrize(
    "text, says",
    [("textual>=8\n", "expected exactly name==version"), ("rich==1\nRich==2\n", "pinned twice")],
)
def test_bad_pin_lines_are_refused(tmp_path: Path, text: str, says: str) -> None:
    (tmp_path / "wheels.txt").write_text(text)
    with pytest.raises(pack.PackError, match=says):
        pack.read_pins(tmp_path / "wheels.txt")


def test_deepspeed_is_built_and_everything_else_downloaded() -> None:
    assert [p.name for p in pack.read_pins() if p.build] == ["deepspeed"]


def test_verify_names_missing_and_unpinned_wheels(tmp_path: Path) -> None:
    _wheel(tmp_path, "strayling", "1.0")
    with pytest.raises(pack.PackError) as err:
        pack.verify(tmp_path, pack.read_pins())
    assert "diffusers==0.42.1: no wheel in" in str(err.value)
    assert "strayling-1.0-py3-none-any.whl" in str(err.value) and "is not pinned" in str(err.value)


def test_prepare_sh_verify_fails_on_an_empty_wheel_folder_and_names_what_is_missing(tmp_path: Path) -> None:
    env = dict(os.environ, WHEELS=str(tmp_path), PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", str(GPU / "prepare.sh"), "--verify"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 1
    assert (
        "prepare: the pack is not complete" in done.stderr and "deepspeed==0.19.8: no wheel in" in done.stderr
    )
    bad = subprocess.run(["bash", str(GPU / "prepare.sh"), "--nope"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "usage: prepare.sh" in bad.stderr


def test_a_pack_over_the_travel_limit_is_refused_with_both_sizes() -> None:
    pack.check_size(40 * 2**20, 23 * 2**20)
    with pytest.raises(
        pack.PackError, match=r"tree \+ wheels = 65\.0 MiB \(25\.0 \+ 40\.0\), over the 64 MiB"
    ):
        pack.check_size(40 * 2**20, 25 * 2**20)


def test_the_tree_leaves_room_for_the_wheels() -> None:
    assert pack.travelling_bytes() < pack.TRAVEL_LIMIT - 20 * 2**20


# ---- the driver: one check's failure loses nothing else ------------------------------------------------------


def _raises(ctx: driver.Ctx) -> dict[str, Any]:
    raise RuntimeError("boom in a check")


def _hangs(ctx: driver.Ctx) -> dict[str, Any]:
    time.sleep(60)
    return {}


def _dies(ctx: driver.Ctx) -> dict[str, Any]:
    os._exit(3)


def _skips(ctx: driver.Ctx) -> dict[str, Any]:
    raise driver.Skip("card too small for this")


def _passes(ctx: driver.Ctx) -> dict[str, Any]:
    return {"home": str(ctx.home), "device": ctx.device}


def test_a_check_that_raises_hangs_or_dies_is_failed_and_the_next_still_runs(tmp_path: Path) -> None:
    table = [
        driver.Check("raises", "", _raises, {"cpu": 30}),
        driver.Check("hangs", "", _hangs, {"cpu": 2}),
        driver.Check("dies", "", _dies, {"cpu": 30}),
        driver.Check("skips", "", _skips, {"cpu": 30}),
        driver.Check("needs_gpu", "", _passes, {"cpu": 30}, needs_gpu="needs an NVIDIA GPU"),
        driver.Check("passes", "", _passes, {"cpu": 30}),
    ]
    t0 = time.time()
    doc = driver.run_checks(
        table,
        device="cpu",
        dry_run=True,
        out=tmp_path / "out",
        work=tmp_path / "work",
        budget_s=120,
        gpu=NO_GPU,
    )
    assert time.time() - t0 < 30  # the hanging check was cut at its own 2 s
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["checks"] == doc["checks"]
    got = {c["name"]: (c["status"], c["reason"]) for c in saved["checks"]}
    assert got["raises"] == ("failed", "RuntimeError: boom in a check")
    assert got["hangs"] == ("failed", "timed out after 2 s (killed)")
    assert got["dies"] == ("failed", "the check exited 3 without a result")
    assert got["skips"] == ("skipped", "card too small for this")
    assert got["needs_gpu"] == (
        "skipped",
        "CPU dry run (NVML here: NVML failed to initialise: test): needs an NVIDIA GPU",
    )
    assert got["passes"] == ("passed", "")
    passed = next(c for c in saved["checks"] if c["name"] == "passes")
    assert passed["figures"] == {"home": str(tmp_path / "work" / "passes" / "home"), "device": "cpu"}
    raised = next(c for c in saved["checks"] if c["name"] == "raises")
    assert any("boom in a check" in line for line in raised["log_tail"])
    assert saved["summary"] == {"passed": 1, "failed": 3, "skipped": 2}


def test_skip_reasons_for_a_missing_gpu_a_small_card_and_a_spent_budget(tmp_path: Path) -> None:
    big = driver.Check("big", "", _passes, {"cuda": 30, "cpu": 30}, min_gpu_gib=40)
    gpu = {"ok": True, "name": "Tiny GPU", "mem_total_gib": 8.0}
    assert (
        driver.skip_reason(big, "cuda", False, gpu)
        == "card too small: needs 40 GiB of GPU memory, Tiny GPU has 8.0 GiB"
    )
    needs = driver.Check("n", "", _passes, {"cpu": 30}, needs_gpu="needs an NVIDIA GPU")
    assert driver.skip_reason(needs, "cpu", False, NO_GPU) == (
        "no usable GPU (NVML failed to initialise: test): needs an NVIDIA GPU"
    )
    doc = driver.run_checks(
        [driver.Check("late", "", _passes, {"cpu": 30})],
        device="cpu",
        dry_run=True,
        out=tmp_path,
        work=tmp_path / "w",
        budget_s=5,
        gpu=NO_GPU,
    )
    assert doc["checks"][0]["status"] == "skipped"
    assert doc["checks"][0]["reason"].startswith("out of time: ")


def test_every_check_has_a_budget_for_both_devices_and_the_gpu_ones_fit_8_minutes() -> None:
    names = [c.name for c in checks.CHECKS]
    assert len(names) == len(set(names))
    assert all(set(c.timeout_s) == {"cuda", "cpu"} for c in checks.CHECKS)
    assert names[-1] == "bench"  # it takes whatever time is left
    assert (
        sum(c.timeout_s["cuda"] for c in checks.CHECKS) < 480 + 240
    )  # the budget clips the tail, not the head


# ---- a wheel that does not install -------------------------------------------------------------------------


def _wheel(folder: Path, name: str, version: str, broken: bool = False) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    if broken:
        path.write_bytes(b"not a zip file")
        return path
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for n, text in files.items():
            zf.writestr(n, text)
    return path


def test_install_records_the_wheel_that_fails_and_installs_the_rest(tmp_path: Path) -> None:
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _wheel(wheels, "gpupack_good", "1.0")
    _wheel(wheels, "gpupack_bad", "1.0", broken=True)
    assert checks.install(wheels, tmp_path / "site", tmp_path / "out") == 0
    record = json.loads((tmp_path / "out" / "install.json").read_text())
    assert record["installed"] == ["gpupack_good-1.0-py3-none-any.whl"]
    assert list(record["failed"]) == ["gpupack_bad-1.0-py3-none-any.whl"] and record["status"] == "partial"
    assert (tmp_path / "site" / "gpupack_good" / "__init__.py").is_file()


def test_install_without_wheels_says_how_to_get_them(tmp_path: Path) -> None:
    checks.install(tmp_path / "absent", tmp_path / "site", tmp_path)
    record = json.loads((tmp_path / "install.json").read_text())
    assert record["status"] == "skipped" and "bench/gpu/prepare.sh" in record["reason"]


# ---- the real-shaped models --------------------------------------------------------------------------------


def test_real_shaped_models_fit_together() -> None:
    """Built on the meta device: the widths the pipelines join agree, and each stays a few GB in bf16."""
    import shapes

    sdxl = shapes.real_shaped_modules("sdxl", "meta")
    te_width = sdxl["text_encoder"].config.hidden_size + sdxl["text_encoder_2"].config.hidden_size
    assert sdxl["unet"].config.cross_attention_dim == te_width == 2048
    unet = sdxl["unet"].config
    assert unet.projection_class_embeddings_input_dim == 6 * unet.addition_time_embed_dim + 1280
    chroma = shapes.real_shaped_modules("chroma", "meta")
    t5 = chroma["flux_schnell/text_encoder_2"].config
    assert chroma["chroma_transformer"].config.joint_attention_dim == t5.d_model == 4096
    assert chroma["flux_schnell/vae"].config.latent_channels == 16
    for mods in (sdxl, chroma):
        for name, module in mods.items():
            assert sum(p.numel() for p in module.parameters()) < 1.0e9, name


# ---- the whole flow, on CPU --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_cpu_dry_run_passes_every_check_a_cpu_can_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, WORK=str(tmp_path / "work"), PYTHONPATH=str(REPO))
    done = subprocess.run(
        ["bash", str(GPU / "run.sh"), "--cpu-dry-run", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=2900,
    )
    results = json.loads((out / "results.json").read_text())
    by_name = {c["name"]: c for c in results["checks"]}
    assert list(by_name) == [c.name for c in checks.CHECKS]
    report = done.stdout[-6000:]
    for name in ("nvml", "foreign_wait"):
        assert by_name[name]["status"] == "skipped", report
        assert by_name[name]["reason"].startswith("CPU dry run"), report
    ran = [c for c in results["checks"] if c["name"] not in ("nvml", "foreign_wait")]
    assert [c["name"] for c in ran if c["status"] != "passed"] == [], report
    assert done.returncode == 0, report
    assert by_name["oom"]["figures"]["evidence_line"].startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert by_name["sigkill_release"]["figures"]["alive_at_next_start"] == []
    for family in ("sdxl", "chroma"):
        figures = by_name[f"train_{family}"]["figures"]
        assert figures["stopped"]["exit_reason"] == "save_quit" and figures["resumed"]["state"] == "completed"
    rows = by_name["bench"]["figures"]["bench"]["rows"]  # bench_trainer_gpu.py's --json document
    assert {r["variant"] for r in rows} >= {"reference", "ours"} and all(r["samples_per_s"] > 0 for r in rows), rows
    log = (out / "run.log").read_text()
    assert all(f"  {c.name} " in log for c in checks.CHECKS)  # each result was printed as it landed


def test_the_builtin_trainers_save_quit_line_ends_a_stop_as_save_quit() -> None:
    """Found by the pack's CPU dry run: a stopped built-in trainer job ended `cancelled`, not `save_quit`."""
    from engine.jobs import classify
    from engine.jobs.progress import MANUAL_QUIT_LINES, Progress, feed_line

    trainer_line = MANUAL_QUIT_LINES[-1]
    assert f'"{trainer_line}"' in (REPO / "engine" / "trainer" / "main.py").read_text()  # the line it prints
    progress = Progress()
    feed_line(progress, trainer_line)
    assert progress.manual_quit
    assert classify.classify(0, [trainer_line], manual_quit=progress.manual_quit) == "save_quit"


def _ctx(tmp_path: Path) -> driver.Ctx:
    return driver.Ctx("t", "cpu", True, tmp_path, tmp_path / "w", tmp_path / "s", NO_GPU, time.time() + 60)


def test_a_wheel_that_did_not_install_fails_the_wheels_check_naming_it(tmp_path: Path) -> None:
    record = {
        "status": "partial",
        "installed": ["a.whl"],
        "failed": {"diffusers-0.42.1-py3-none-any.whl": "bad zip"},
    }
    (tmp_path / "install.json").write_text(json.dumps(record))
    with pytest.raises(checks.CheckFailed, match="diffusers-0.42.1-py3-none-any.whl") as err:
        checks.check_wheels(_ctx(tmp_path))
    assert err.value.figures["installed"] == 1


def test_nvml_probe_says_why_when_there_is_no_usable_gpu() -> None:
    gpu = driver.probe_gpu()
    if gpu["ok"]:
        assert gpu["name"] and gpu["mem_total_gib"] > 0
    else:
        assert gpu["reason"].startswith(("NVML", "nvidia-ml-py")), gpu


def test_an_unknown_check_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        checks.main(["run", "--out", "o", "--work", "w", "--only", "nvml,bogus"])
    assert exit_.value.code == 2
    assert "unknown checks ['bogus']" in capsys.readouterr().err
