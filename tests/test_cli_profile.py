"""`dpdeck profile ...` / `dpdeck secrets ...` as real processes: exit codes 0/1/2, output, edit flow."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from test_profiles_archive import WANDB, make_tar, regular, valid_files

from statefiles import toml as tomllib
from statefiles.paths import profiles_dir, secrets_path

EDITOR_SCRIPT = """
import os, re, sys
from pathlib import Path
path = Path(sys.argv[1])
text = path.read_text()
counter = Path(os.environ["ED_COUNTER"])
n = int(counter.read_text()) if counter.exists() else 0
counter.write_text(str(n + 1))
actions = os.environ["ED_ACTIONS"].split(",")
action = actions[min(n, len(actions) - 1)]
if action == "rank16":
    text = re.sub(r"(?m)^rank = \\d+", "rank = 16", text)
elif action == "alpha":
    text = text.replace("[adapter]\\n", "[adapter]\\nalpha = 16\\n")
elif action == "fix":
    text = re.sub(r"(?m)^alpha = .*\\n", "", text)
    text = re.sub(r"(?m)^rank = \\d+", "rank = 8", text)
elif action == "fail":
    sys.exit(3)
elif action == "fill":
    # Replace each '<PATH TO ...>' placeholder of a key named in ED_FILL (key=value;key=value).
    for pair in os.environ["ED_FILL"].split(";"):
        key, value = pair.split("=", 1)
        text = re.sub(rf"(?m)^{key} = '<[^>]*>'", f"{key} = '{value}'", text)
elif action == "rank16+meanwhile":
    text = re.sub(r"(?m)^rank = \\d+", "rank = 16", text)
    other = Path(os.environ["ED_MEANWHILE"])
    other.write_text(other.read_text() + "# saved by someone else\\n")
path.write_text(text)
"""


def dpdeck(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("dpdeck")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "tui.cli", *args]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=full_env, timeout=120)


def editor_env(tmp_path: Path, actions: str) -> dict[str, str]:
    script = tmp_path / "editor.py"
    script.write_text(EDITOR_SCRIPT)
    counter = tmp_path / f"count-{time.monotonic_ns()}"
    return {
        "EDITOR": f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}",
        "ED_ACTIONS": actions,
        "ED_COUNTER": str(counter),
    }


def stored_valid(tmp_path: Path, name: str) -> dict[str, str]:
    files = valid_files(tmp_path / "box")
    src = tmp_path / f"{name}-src"
    src.mkdir()
    for fname, text in files.items():
        (src / fname).write_text(text)
    result = dpdeck("profile", "import", str(src / "main.toml"), "--name", name)
    assert result.returncode == 0, result.stderr
    return files


def line_of(text: str, pattern: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if re.match(pattern, line))


def test_version_and_help() -> None:
    result = dpdeck("--version")
    assert result.returncode == 0 and result.stdout.startswith("dpdeck ")
    helptext = dpdeck("profile", "validate", "--help").stdout
    assert "2  usage error, including a profile name or file that does not exist" in helptext


def test_templates_new_and_default(tmp_path: Path) -> None:
    templates = json.loads(dpdeck("profile", "templates", "--json").stdout)
    defaults = [t["name"] for t in templates if t["default"]]
    assert len(defaults) == 1
    created = dpdeck("profile", "new", "mine", "--json")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["template"] == defaults[0]
    main = tomllib.loads((profiles_dir() / "mine" / "main.toml").read_text())
    assert main["dataset"] == "dataset.toml"
    assert main["model"]["type"] == next(t["model_type"] for t in templates if t["default"])
    again = dpdeck("profile", "new", "mine")
    assert again.returncode == 1 and "already exists" in again.stderr
    unknown = dpdeck("profile", "new", "other", "--from", defaults[0] + "x")
    assert unknown.returncode == 2 and f"did you mean: {defaults[0]}" in unknown.stderr
    bad = dpdeck("profile", "new", "../escape")
    assert bad.returncode == 2 and "invalid profile name" in bad.stderr
    listed = json.loads(dpdeck("profile", "list", "--json").stdout)
    assert [p["name"] for p in listed] == ["mine"]


def test_validate_exit_codes(tmp_path: Path) -> None:
    files = valid_files(tmp_path / "box")
    good = tmp_path / "good"
    good.mkdir()
    for fname, text in files.items():
        (good / fname).write_text(text)
    ok = dpdeck("profile", "validate", str(good / "main.toml"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (
        json.loads(dpdeck("profile", "validate", str(good / "main.toml"), "--json").stdout)["valid"] is True
    )

    bad_text = files["main.toml"].replace("[adapter]\n", "[adapter]\nalpha = 16\n")
    (good / "main.toml").write_text(bad_text)
    bad = dpdeck("profile", "validate", str(good / "main.toml"))
    assert bad.returncode == 1
    expected_line = line_of(bad_text, r"alpha = 16")
    assert f"{good / 'main.toml'}:{expected_line}: adapter.alpha: " in bad.stdout
    report = json.loads(dpdeck("profile", "validate", str(good / "main.toml"), "--json").stdout)
    assert report["valid"] is False and any(p["key"] == "adapter.alpha" for p in report["problems"])

    (good / "broken.toml").write_text("epochs = 1\n[model\n")
    broken = dpdeck("profile", "validate", str(good / "broken.toml"))
    assert broken.returncode == 1 and f"{good / 'broken.toml'}:2:" in broken.stdout

    missing = dpdeck("profile", "validate", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr
    unknown = dpdeck("profile", "validate", "no-such-profile")
    assert unknown.returncode == 2 and "no stored profile named 'no-such-profile'" in unknown.stderr
    usage = dpdeck("profile", "validate")
    assert usage.returncode == 2


def test_stored_profile_validates_by_name(tmp_path: Path) -> None:
    stored_valid(tmp_path, "v")
    result = dpdeck("profile", "validate", "v")
    assert result.returncode == 0, result.stdout + result.stderr


def test_show_redacts(tmp_path: Path) -> None:
    files = valid_files(tmp_path / "box")
    main = tmp_path / "box" / "main.toml"
    main.write_text(files["main.toml"] + f"\n[monitoring]\nenable_wandb = true\nwandb_api_key = '{WANDB}'\n")
    (tmp_path / "box" / "dataset.toml").write_text(files["dataset.toml"])
    shown = dpdeck("profile", "show", str(main))
    assert shown.returncode == 0 and WANDB not in shown.stdout
    assert "wandb_api_key = '***'" in shown.stdout and "[[directory]]" in shown.stdout
    as_json = dpdeck("profile", "show", str(main), "--json", "--file", "main")
    data = json.loads(as_json.stdout)
    assert (
        WANDB not in as_json.stdout and data["files"]["main"]["data"]["monitoring"]["wandb_api_key"] == "***"
    )


def test_diff_of_the_two_chroma_templates() -> None:
    templates = json.loads(dpdeck("profile", "templates", "--json").stdout)
    chroma = [t["name"] for t in templates if t["model_type"] == "chroma"]
    small = next(t["name"] for t in templates if t["default"])
    large = next(n for n in chroma if "1024" in n)
    assert dpdeck("profile", "new", "a", "--from", small).returncode == 0
    assert dpdeck("profile", "new", "b", "--from", large).returncode == 0
    result = dpdeck("profile", "diff", "a", "b", "--json")
    assert result.returncode == 0, result.stderr
    diffs = {(d["file"], d["key"]): (d["left"], d["right"]) for d in json.loads(result.stdout)["differences"]}
    left = {f: tomllib.loads((profiles_dir() / "a" / f"{f}.toml").read_text()) for f in ("main", "dataset")}
    right = {f: tomllib.loads((profiles_dir() / "b" / f"{f}.toml").read_text()) for f in ("main", "dataset")}
    assert diffs[("main", "model.transformer_path")] == (
        left["main"]["model"]["transformer_path"],
        right["main"]["model"]["transformer_path"],
    )
    assert diffs[("dataset", "resolutions")] == (
        left["dataset"]["resolutions"],
        right["dataset"]["resolutions"],
    )
    ranks = (left["main"]["adapter"]["rank"], right["main"]["adapter"]["rank"])
    assert (("main", "adapter.rank") in diffs) == (ranks[0] != ranks[1])
    assert ("main", "model.type") not in diffs
    text = dpdeck("profile", "diff", "a", "b")
    assert re.search(r"(?m)^dataset\s+resolutions\s", text.stdout)
    same = dpdeck("profile", "diff", "a", "a")
    assert same.returncode == 0 and "are the same" in same.stdout
    assert dpdeck("profile", "diff", "a", "zzz").returncode == 2


def test_edit_history_rollback(tmp_path: Path) -> None:
    files = stored_valid(tmp_path, "p")
    edited = dpdeck("profile", "edit", "p", "-m", "lower rank", env=editor_env(tmp_path, "rank16"))
    assert edited.returncode == 0, edited.stderr
    assert "saved p as v2" in edited.stdout
    assert re.search(r"(?m)^rank = 16$", (profiles_dir() / "p" / "main.toml").read_text())
    history = json.loads(dpdeck("profile", "history", "p", "--json").stdout)
    assert [(v["version"], v["message"]) for v in history][-1] == (2, "lower rank")
    diff = dpdeck("profile", "history", "p", "--diff", "1", "2").stdout
    assert "-rank = 32" in diff and "+rank = 16" in diff
    rolled = dpdeck("profile", "rollback", "p", "1")
    assert rolled.returncode == 0 and "as v3" in rolled.stdout
    current = (profiles_dir() / "p" / "main.toml").read_text()
    assert re.search(r"(?m)^rank = 32$", current)
    shown = dpdeck("profile", "history", "p", "--show", "1", "--file", "main.toml")
    assert shown.stdout == current
    assert dpdeck("profile", "rollback", "p", "99").returncode == 2
    unchanged = dpdeck("profile", "edit", "p", env=editor_env(tmp_path, "noop"))
    assert unchanged.returncode == 0 and "no changes" in unchanged.stdout
    assert len(json.loads(dpdeck("profile", "history", "p", "--json").stdout)) == 3
    assert files["dataset.toml"] == (profiles_dir() / "p" / "dataset.toml").read_text()


def test_edit_invalid_non_interactive_keeps_recovery_file(tmp_path: Path) -> None:
    stored_valid(tmp_path, "p")
    before = (profiles_dir() / "p" / "main.toml").read_text()
    result = dpdeck("profile", "edit", "p", stdin="", env=editor_env(tmp_path, "alpha"))
    assert result.returncode == 1
    assert "adapter.alpha" in result.stderr
    recovery = Path(result.stdout.strip().splitlines()[-1])
    assert recovery.is_file() and "alpha = 16" in recovery.read_text()
    assert stat.S_IMODE(recovery.stat().st_mode) == 0o600
    assert (profiles_dir() / "p" / "main.toml").read_text() == before
    failed = dpdeck("profile", "edit", "p", env=editor_env(tmp_path, "fail"))
    assert failed.returncode == 1 and "editor exited with status 3" in failed.stderr
    missing = dpdeck("profile", "edit", "nope", env=editor_env(tmp_path, "noop"))
    assert missing.returncode == 2


def _run_on_pty(args: list[str], answers: bytes, env: dict[str, str]) -> tuple[int, str]:
    """Run dpdeck with a terminal as stdin (so it may ask), feeding `answers` to its prompts."""
    master, slave = os.openpty()
    exe = shutil.which("dpdeck")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "tui.cli", *args]
    proc = subprocess.Popen(
        cmd, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **env}
    )
    os.close(slave)
    os.write(master, answers)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()  # e.g. it asked a question we did not answer: never leave it behind
        proc.wait()
        raise
    finally:
        os.close(master)
    return proc.returncode, out.decode()


def test_edit_interactive_reedit_then_save(tmp_path: Path) -> None:
    stored_valid(tmp_path, "p")
    rc, out = _run_on_pty(["profile", "edit", "p"], b"e\n", editor_env(tmp_path, "alpha,fix"))
    assert rc == 0, out
    assert "[e]dit again, [s]ave anyway, [d]iscard?" in out
    text = (profiles_dir() / "p" / "main.toml").read_text()
    assert "alpha" not in text and re.search(r"(?m)^rank = 8$", text)


def test_edit_interactive_save_anyway(tmp_path: Path) -> None:
    stored_valid(tmp_path, "p")
    rc, out = _run_on_pty(["profile", "edit", "p"], b"s\n", editor_env(tmp_path, "alpha"))
    assert rc == 0, out
    assert "alpha = 16" in (profiles_dir() / "p" / "main.toml").read_text()
    assert dpdeck("profile", "validate", "p").returncode == 1


def test_export_import_cli(tmp_path: Path) -> None:
    stored_valid(tmp_path, "p")
    out = tmp_path / "p.dpdeck.tar.gz"
    exported = dpdeck("profile", "export", "p", "-o", str(out), "--json")
    assert exported.returncode == 0 and json.loads(exported.stdout)["path"] == str(out)
    assert dpdeck("profile", "export", "p", "-o", str(out)).returncode == 1  # exists, no --force
    imported = dpdeck("profile", "import", str(out), "--name", "q", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["name"] == "q"
    with tarfile.open(out) as tar:
        assert sorted(tar.getnames()) == ["dataset.toml", "main.toml", "manifest.json"]
    evil = make_tar(tmp_path / "evil.tar.gz", [regular("../../evil.toml", b"x = 1\n")])
    refused = dpdeck("profile", "import", str(evil), "--name", "r")
    assert refused.returncode == 1 and "points outside the archive ('../')" in refused.stderr
    assert dpdeck("profile", "import", str(tmp_path / "missing.tar.gz")).returncode == 2
    assert sorted(p["name"] for p in json.loads(dpdeck("profile", "list", "--json").stdout)) == ["p", "q"]


def test_delete_and_undelete(tmp_path: Path) -> None:
    stored_valid(tmp_path, "p")
    deleted = dpdeck("profile", "delete", "p", "--json")
    assert deleted.returncode == 0 and Path(json.loads(deleted.stdout)["trash"]).is_dir()
    assert dpdeck("profile", "show", "p").returncode == 2
    assert dpdeck("profile", "undelete", "p").returncode == 0
    assert dpdeck("profile", "show", "p").returncode == 0


def test_secrets_cli(tmp_path: Path) -> None:
    stored = dpdeck("secrets", "set", "wandb_api_key", stdin=WANDB + "\n")
    assert stored.returncode == 0, stored.stderr
    assert WANDB not in stored.stdout + stored.stderr
    assert stat.S_IMODE(secrets_path().stat().st_mode) == 0o600
    listed = dpdeck("secrets", "list", "--json")
    assert json.loads(listed.stdout) == [{"name": "wandb_api_key", "source": "file"}]
    assert WANDB not in listed.stdout
    assert dpdeck("secrets", "set", "hf_token", stdin="\n").returncode == 1
    bad_name = dpdeck("secrets", "set", "../x", stdin="value\n")
    assert bad_name.returncode == 2 and "invalid secret name" in bad_name.stderr
    os.chmod(secrets_path(), 0o644)
    unsafe = dpdeck("secrets", "list")
    assert unsafe.returncode == 1 and f"chmod 600 {secrets_path()}" in unsafe.stderr


@pytest.mark.parametrize(
    "args", [["profile", "show", "x"], ["profile", "history", "x"], ["profile", "export", "x"]]
)
def test_missing_profile_is_usage_error(args: list[str]) -> None:
    result = dpdeck(*args)
    assert result.returncode == 2 and "no stored profile named 'x'" in result.stderr


def test_cli_module_imports_no_profile_code() -> None:
    # `dpdeck --version` builds the parser, which imports this module: it must stay light.
    code = (
        "import sys, tui.cli.cmd_profile\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('profiles', 'tomlkit', 'pydantic')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_edit_refuses_to_overwrite_a_concurrent_change(tmp_path: Path) -> None:
    stored_valid(tmp_path, "p")
    dataset = profiles_dir() / "p" / "dataset.toml"
    env = editor_env(tmp_path, "rank16+meanwhile") | {"ED_MEANWHILE": str(dataset)}
    result = dpdeck("profile", "edit", "p", env=env)
    assert result.returncode == 1 and "changed elsewhere meanwhile" in result.stderr
    assert dataset.read_text().endswith("# saved by someone else\n")
    assert re.search(r"(?m)^rank = 32$", (profiles_dir() / "p" / "main.toml").read_text())
    assert re.search(r"(?m)^rank = 16$", Path(result.stdout.strip().splitlines()[-1]).read_text())


def test_newcomer_flow_template_to_export(tmp_path: Path) -> None:
    default = next(t for t in json.loads(dpdeck("profile", "templates", "--json").stdout) if t["default"])
    assert dpdeck("profile", "new", "mine").returncode == 0
    flagged = dpdeck("profile", "validate", "mine")
    assert flagged.returncode == 1 and "placeholder" in flagged.stdout
    assert dpdeck("profile", "validate", "mine", "--away").returncode == 0
    box = tmp_path / "box"
    valid_files(box)  # creates real folders and a weights file to point at
    fill = f"output_dir={box / 'output'};diffusers_path={box / 'flux_schnell_diffusers'}"
    fill += f";transformer_path={box / 'chroma.safetensors'};path={box / 'dataset'}"
    env = editor_env(tmp_path, "fill") | {"ED_FILL": fill}
    assert dpdeck("profile", "edit", "mine", env=env).returncode == 0
    assert dpdeck("profile", "edit", "mine", "--dataset", env=env).returncode == 0
    ok = dpdeck("profile", "validate", "mine")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    other = next(
        n
        for n in [t["name"] for t in json.loads(dpdeck("profile", "templates", "--json").stdout)]
        if "1024" in n and n != default["name"]
    )
    diff = json.loads(dpdeck("profile", "diff", "mine", other, "--json").stdout)["differences"]
    assert {"model.transformer_path", "resolutions"} <= {d["key"] for d in diff}
    out = tmp_path / "mine.dpdeck.tar.gz"
    assert dpdeck("profile", "export", "mine", "-o", str(out)).returncode == 0
    assert dpdeck("profile", "import", str(out), "--name", "mine-copy").returncode == 0
    assert dpdeck("profile", "validate", "mine-copy").returncode == 0
    assert [v["message"] for v in json.loads(dpdeck("profile", "history", "mine", "--json").stdout)] == [
        f"created from template {default['name']}",
        "edit main.toml",
        "edit dataset.toml",
    ]
