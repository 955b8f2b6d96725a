"""`dpdeck backend install` and `update`: the six steps, resumable, switching the settings only at the end.

Layout under the backend's home (`--path`, default `$DPDECK_HOME/backend/diffusion-pipe`):
`checkouts/incoming` is the staging clone a run works in, renamed to `checkouts/<commit>` once it has
been verified; `venvs/<hash>` is a venv per interpreter + requirements, so an update whose
requirements.txt did not change reuses its venv without running pip. Until step 6 the settings keep
pointing at the checkout that was in use, and older checkouts stay on disk (jobs started from them keep
running from them).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.jobs.checkout import configure, gitops, requirements, state, venv, verify
from engine.jobs.checkout.steps import STEP_NAMES, StepError, run
from statefiles import paths

# (step number, step name, state: running|done|skipped|failed, detail)
OnStep = Callable[[int, str, str, str], None]


class BackendError(Exception):
    """Not a step's failure: nothing to update, or another install running."""


@dataclass(frozen=True)
class Outcome:
    install: state.Install
    changed: bool  # a new checkout or venv was put in use
    summary: str


class _Steps:
    """Each step's state to the terminal (the callback) and to the progress file (the System screen)."""

    def __init__(self, action: str, on_step: OnStep | None) -> None:
        self.progress = state.Progress(action)
        self.on_step = on_step

    def __call__(self, n: int, st: str, detail: str = "") -> None:
        self.progress.step(n, STEP_NAMES[n], st, detail)
        if self.on_step is not None:
            self.on_step(n, STEP_NAMES[n], st, detail)


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    path = state.backend_dir() / f"{state.BACKEND}.lock"
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BackendError(
                f"another `dpdeck backend install|update` is running (lock {path}); wait for it to finish"
            ) from None
        yield


def intact(inst: state.Install) -> bool:
    """The recorded install is still there as it was left: same commit, submodules, venv, verified."""
    if not (inst.checkout and inst.commit and inst.venv and inst.requirements_sha and inst.verified):
        return False
    repo, env = Path(inst.checkout), Path(inst.venv)
    return (
        gitops.head(repo) == inst.commit
        and not gitops.missing_submodules(repo)
        and venv.works(venv.python_of(env))
        and requirements.installed(env, inst.requirements_sha)
    )


def install(
    url: str | None = None,
    ref: str | None = None,
    home: str | os.PathLike[str] | None = None,
    base_python: str | None = None,
    on_step: OnStep | None = None,
) -> Outcome:
    url = url or state.DEFAULT_URL
    if gitops.is_local(url) and "://" not in url:
        url = str(paths.canonical(url))  # the clone's origin must not depend on the current directory
    where = paths.canonical(home) if home else state.default_home()
    python = base_python or sys.executable
    with _exclusive():
        steps = _Steps("install", on_step)
        try:
            cur = state.load().current
            if cur and (cur.url, cur.home, cur.ref) == (url, str(where), ref) and intact(cur):
                return _already(cur, steps)
            # The checkout in use lends its objects to the clone (--reference-if-able), if there is one.
            lend = Path(cur.checkout) if cur and cur.checkout else None
            return _run(url, ref, where, python, None, lend, steps)
        except StepError as exc:
            steps(exc.step, "failed", exc.message)
            steps.progress.finish(False, str(exc))
            raise


def update(ref: str | None = None, on_step: OnStep | None = None) -> Outcome:
    """Fetch; a pinned ref stays put (unless `ref` moves it), a tracked branch is fast-forwarded."""
    with _exclusive():
        cur = state.load().current
        if cur is None or not cur.checkout:
            raise BackendError("no dpdeck-managed diffusion-pipe checkout to update: "
                               "install one with `dpdeck backend install diffusion-pipe`")
        steps = _Steps("update", on_step)
        try:
            return _update(cur, ref, steps)
        except StepError as exc:
            steps(exc.step, "failed", exc.message)
            steps.progress.finish(False, str(exc))
            raise


def _update(cur: state.Install, ref: str | None, steps: _Steps) -> Outcome:
    repo = Path(cur.checkout or "")
    if not gitops.is_repo(repo):
        raise StepError(1, f"the managed checkout {repo} is gone or is no git repository",
                        "install it again: dpdeck backend install diffusion-pipe")
    steps(1, "running", f"fetch {cur.url}")
    run(1, [*gitops.git(cur.url), "fetch", "--tags", "--force", "--recurse-submodules=no", "origin"], cwd=repo,
        what=f"fetch {cur.url}",
        fix=f"check the network (`git ls-remote {cur.url}`); nothing was changed, run again to retry")
    run(1, [*gitops.git(cur.url), "remote", "set-head", "origin", "--auto"], cwd=repo,
        what="read the remote's default branch", fix="check the network; nothing was changed")
    record = state.load()
    record.last_fetch = time.time()
    state.save(record)
    wanted = ref if ref is not None else cur.ref
    target = gitops.resolve(repo, wanted)
    if target is None:
        raise StepError(2, f"ref {wanted!r} not found in {cur.url}", _ref_fix(cur.url))
    if target.branch is not None and ref is None and not gitops.is_ancestor(repo, cur.commit or "", target.commit):
        raise StepError(
            2, f"origin/{target.branch} is not a fast-forward of {str(cur.commit)[:12]} (history rewritten)",
            "move to it explicitly: dpdeck backend update --ref " + target.branch,
        )
    if target.commit == cur.commit and wanted == cur.ref and intact(cur):
        why = f"pinned at {cur.ref} (move it with --ref)" if cur.pinned else f"origin/{target.branch} has nothing new"
        steps(1, "done", "fetched")
        for n in (2, 3, 4):
            steps(n, "skipped", why if n == 2 else "unchanged")
        python = venv.python_of(Path(cur.venv or ""))
        steps(5, "running")
        try:
            steps(5, "done", verify.imports(python, repo))
        except StepError:
            record = state.load()
            if record.current is not None:
                record.current.verified = False  # `backend status` says so until a run verifies it again
                state.save(record)
            raise
        changed = configure.point_at(repo, python)
        steps(6, "done" if changed else "skipped", "re-pointed the settings" if changed else "already in use")
        summary = f"up to date: {cur.commit[:12] if cur.commit else '?'}; {why}"
        steps.progress.finish(True, summary)
        return Outcome(cur, changed, summary)
    return _run(cur.url, wanted, Path(cur.home), cur.base_python or sys.executable, target, repo, steps,
                note="fetched the checkout in use, then ")


def _ref_fix(url: str) -> str:
    return f"`git ls-remote {url}` lists its branches and tags: pass one of them, or a commit, with --ref"


def _already(cur: state.Install, steps: _Steps) -> Outcome:
    for n in (1, 2, 3, 4, 5):
        steps(n, "skipped", "done and verified earlier")
    changed = configure.point_at(Path(cur.checkout or ""), Path(cur.python or ""))
    steps(6, "done" if changed else "skipped", "re-pointed the settings" if changed else "already in use")
    summary = f"already installed: {cur.checkout} at {str(cur.commit)[:12]} (newer commits: dpdeck backend update)"
    steps.progress.finish(True, summary)
    return Outcome(cur, changed, summary)


def _run(
    url: str,
    ref: str | None,
    home: Path,
    base_python: str,
    target: gitops.Resolved | None,
    reference: Path | None,
    steps: _Steps,
    note: str = "",
) -> Outcome:
    staging = home / "checkouts" / "incoming"
    steps(1, "running", url)
    steps(1, "done", note + gitops.clone_or_fetch(url, staging, reference))

    steps(2, "running", ref or "the default branch")
    resolved = gitops.resolve(staging, target.commit if target else ref)
    if resolved is None:
        raise StepError(2, f"ref {ref!r} not found in {url}" if ref else f"{url} has no default branch",
                        _ref_fix(url))
    branch = target.branch if target else resolved.branch
    gitops.checkout(url, staging, resolved.commit)
    steps(2, "done", f"{resolved.commit[:12]} ({gitops.describe(staging) or '?'})")

    text = requirements.read(staging)
    sha = requirements.key(base_python, text)
    env = home / "venvs" / sha[:12]
    steps(3, "running", str(env))
    steps(3, "done", f"{venv.ensure(env, base_python)}: {env}")

    python = venv.python_of(env)
    if requirements.installed(env, sha):
        steps(4, "skipped", "requirements.txt unchanged: already installed in this venv")
    else:
        steps(4, "running", "pip install -r requirements.txt")
        system_torch = venv.torch_identity(base_python)
        summary, command = requirements.install(env, python, text, sha, system_torch)
        venv.check_torch_kept(python, system_torch, command)
        steps(4, "done", summary)

    steps(5, "running", "train.py's imports")
    detail = verify.imports(python, staging)
    steps(5, "done", f"{detail}; {verify.gpu(python)}")

    final = _place(staging, home / "checkouts", resolved.commit)
    record = state.load()
    previous = record.current
    inst = state.Install(
        url=url, home=str(home), ref=ref, pinned=ref is not None and branch is None, branch=branch,
        commit=resolved.commit, checkout=str(final), venv=str(env), python=str(python),
        base_python=base_python, requirements_sha=sha, verified=True, installed_at=time.time(),
    )
    steps(6, "running")
    configure.point_at(final, python)
    if previous is not None and previous.checkout != inst.checkout:
        record.previous.insert(0, previous)
    record.current = inst
    record.last_fetch = time.time()  # the clone was a fetch: status's "behind" is as of now
    state.save(record)
    steps(6, "done", f"diffusion_pipe.path = {final}; diffusion_pipe.python = {python}")
    kept = f"; the previous checkout stays at {previous.checkout}" if previous and previous.checkout != str(final) else ""
    summary = f"installed {resolved.commit[:12]} at {final}{kept}"
    steps.progress.finish(True, summary)
    return Outcome(inst, True, summary)


def _place(staging: Path, checkouts: Path, commit: str) -> Path:
    """Rename the verified staging clone to `checkouts/<commit>` (an intact one already there is reused)."""
    final = checkouts / commit[:12]
    if final.exists():
        if gitops.head(final) == commit and not gitops.dirty(final) and not gitops.missing_submodules(final):
            shutil.rmtree(staging)
            return final
        n = 2
        while (checkouts / f"{commit[:12]}-{n}").exists():
            n += 1
        final = checkouts / f"{commit[:12]}-{n}"
    staging.rename(final)
    return final
