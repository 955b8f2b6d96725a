"""The git side of a checkout: clone or fetch, check out a ref with its submodules, and read its status."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from engine.jobs.checkout.steps import StepError, run


def is_local(url: str) -> bool:
    """A path or file:// url: git refuses submodules over the file protocol unless told to allow it."""
    return url.startswith("file://") or url.startswith("/") or url.startswith(".") or Path(url).exists()


def git(url: str | None = None) -> list[str]:
    """`git` with the options every call needs; file-protocol submodules allowed for a local url."""
    argv = ["git", "-c", "advice.detachedHead=false"]
    if url is not None and is_local(url):
        argv += ["-c", "protocol.file.allow=always"]
    return argv


def _out(cwd: Path, *args: str) -> str | None:
    """A read-only git query's stdout, or None when it fails (not a repo, no such ref)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def is_repo(path: Path) -> bool:
    return path.is_dir() and _out(path, "rev-parse", "--git-dir") is not None


def head(path: Path) -> str | None:
    return _out(path, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")


def origin_url(path: Path) -> str | None:
    return _out(path, "remote", "get-url", "origin")


# ---- step 1 -------------------------------------------------------------------------------------------


def clone_or_fetch(url: str, dest: Path, reference: Path | None = None) -> str:
    """Clone `url` into `dest`, or fetch into a clone left there by an earlier, interrupted run."""
    fix_net = (
        f"check the url ({url}) and the network (`git ls-remote {url}` must list its refs); "
        "run the command again to resume"
    )
    if is_repo(dest):
        run(1, [*git(url), "remote", "set-url", "origin", url], cwd=dest, what="set the remote url",
            fix=f"remove {dest} and run again")
        run(1, [*git(url), "fetch", "--tags", "--force", "--prune", "--recurse-submodules=no", "origin"], cwd=dest,
            what=f"fetch {url} into the partial clone {dest}", fix=fix_net)
        run(1, [*git(url), "remote", "set-head", "origin", "--auto"], cwd=dest,
            what="read the remote's default branch", fix=fix_net)
        return "fetched into the partial clone"
    if dest.exists():
        import shutil

        shutil.rmtree(dest)  # our own staging folder, left half-written by a killed clone
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Submodules come in step 2, for the ref being installed (cloning the default branch's ones here would
    # fetch them twice for a pin, and a broken submodule is step 2's failure to name).
    argv = [*git(url), "clone", "--no-checkout"]
    if reference is not None and is_repo(reference):
        argv += ["--reference-if-able", str(reference), "--dissociate"]
    run(1, [*argv, url, str(dest)], what=f"clone {url}", fix=fix_net)
    return "cloned"


# ---- step 2 -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolved:
    commit: str
    branch: str | None  # the remote branch the ref names (tracked by update), None for a tag or commit


def default_branch(repo: Path) -> str | None:
    ref = _out(repo, "symbolic-ref", "--quiet", "refs/remotes/origin/HEAD")
    return ref.removeprefix("refs/remotes/origin/") if ref else None


def resolve(repo: Path, ref: str | None) -> Resolved | None:
    """The commit `ref` names (a remote branch, a tag or a commit); None for the default branch's absence."""
    if ref is None:
        branch = default_branch(repo)
        commit = _out(repo, "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}^{{commit}}") \
            if branch else None
        return Resolved(commit, branch) if commit and branch else None
    branch_commit = _out(repo, "rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{ref}^{{commit}}")
    if branch_commit:
        return Resolved(branch_commit, ref)
    for spec in (f"refs/tags/{ref}^{{commit}}", f"{ref}^{{commit}}"):
        commit = _out(repo, "rev-parse", "--verify", "--quiet", spec)
        if commit:
            return Resolved(commit, None)
    return None


def checkout(url: str, repo: Path, commit: str) -> None:
    """Detach at `commit`, then bring every submodule (recursively) to the commit it records."""
    run(2, [*git(url), "checkout", "--force", "--detach", commit], cwd=repo, what=f"check out {commit[:12]}",
        fix=f"remove {repo} and run again (it is dpdeck's staging folder)")
    run(2, [*git(url), "submodule", "sync", "--recursive"], cwd=repo, what="sync submodule urls",
        fix="check .gitmodules in the repository")
    run(2, [*git(url), "submodule", "update", "--init", "--recursive", "--force"], cwd=repo,
        what="update the submodules",
        fix="check that every submodule url in .gitmodules is reachable (`git ls-remote URL`); run again")
    missing = missing_submodules(repo)
    if missing:
        raise StepError(
            2, f"submodule(s) not checked out at their recorded commit: {', '.join(missing)}",
            "run `git submodule update --init --recursive` in the checkout to see why, then run again",
            "git submodule status --recursive", _out(repo, "submodule", "status", "--recursive") or "",
        )


def missing_submodules(repo: Path) -> list[str]:
    """Submodules that are not initialised ('-'), at another commit ('+') or conflicted ('U')."""
    text = _out(repo, "submodule", "status", "--recursive")
    if text is None:
        return []
    out = []
    for line in text.splitlines():
        if line[:1] in ("-", "+", "U"):
            parts = line[1:].split()
            out.append(parts[1] if len(parts) > 1 else line.strip())
    return out


def declared_submodules(repo: Path) -> list[str]:
    text = _out(repo, "config", "--file", ".gitmodules", "--get-regexp", r"submodule\..*\.path")
    return [line.split(None, 1)[1] for line in (text or "").splitlines() if " " in line]


# ---- status -------------------------------------------------------------------------------------------


def dirty(repo: Path) -> list[str]:
    """Changed or untracked files (`git status --porcelain` lines), submodules included."""
    text = _out(repo, "status", "--porcelain")
    return text.splitlines() if text else []


def describe(repo: Path) -> str | None:
    return _out(repo, "describe", "--tags", "--always", "--dirty")


def behind(repo: Path, upstream: str) -> int | None:
    """Commits `upstream` has that HEAD lacks (None when the ref is unknown here)."""
    text = _out(repo, "rev-list", "--count", f"HEAD..{upstream}")
    return int(text) if text and text.isdigit() else None


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    return _out(repo, "merge-base", "--is-ancestor", older, newer) is not None


def upstream_of_head(repo: Path) -> str | None:
    """The remote branch an unmanaged checkout's current branch tracks (`@{upstream}`)."""
    return _out(repo, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}")


def fetch(repo: Path) -> str | None:
    """`git fetch origin`; None when done, else one line saying why (no network, no such remote)."""
    url = origin_url(repo)
    try:
        done = subprocess.run(
            [*git(url), "fetch", "--tags", "--force", "--recurse-submodules=no", "origin"], cwd=repo, capture_output=True, text=True,
            timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"git fetch exited {done.returncode}"
