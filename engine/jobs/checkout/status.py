"""`dpdeck backend status`: the checkout the settings point at, as git and dpdeck's install record see it.

Works for a checkout the user made by hand too (then `managed` is false and nothing is known about its
verification). Nothing here needs the network unless `fetch=True`; a fetch that fails is reported as
"remote not reachable", never raised.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from engine.jobs.checkout import configure, gitops, state
from engine.jobs.checkout.venv import works


def report(fetch: bool = False) -> dict[str, Any]:
    path, python = configure.current()
    cur = state.load().current
    out: dict[str, Any] = {
        "backend": state.BACKEND,
        "configured": bool(path),
        "path": path,
        "python": python or sys.executable,
        "python_set": python is not None,
        "managed": False,
        "problems": [],
        "progress": state.read_progress(),
    }
    problems: list[str] = out["problems"]
    if not path:
        problems.append("not configured: run `dpdeck backend install diffusion-pipe` "
                        "(or `dpdeck config set diffusion_pipe.path DIR` for a checkout of your own)")
        return out
    repo = Path(path)
    if not (repo / "train.py").is_file():
        problems.append(f"no train.py in {repo}: diffusion_pipe.path must be the folder holding train.py "
                        "(dpdeck backend install diffusion-pipe makes one)")
    if not works(Path(out["python"])):
        problems.append(f"diffusion_pipe.python {out['python']} does not run: "
                        "dpdeck backend install diffusion-pipe makes a venv, or config set it")
    managed = cur is not None and cur.checkout == path
    out["managed"] = managed
    if not gitops.is_repo(repo):
        problems.append(f"{repo} is not a git repository: commit and updates unknown")
        return out
    out["url"] = gitops.origin_url(repo)
    out["commit"] = gitops.head(repo)
    out["describe"] = gitops.describe(repo)
    out["dirty"] = gitops.dirty(repo)
    missing = gitops.missing_submodules(repo)
    out["submodules"] = {"declared": gitops.declared_submodules(repo), "missing": missing}
    if missing:
        problems.append(f"submodule(s) not checked out: {', '.join(missing)} "
                        "(git submodule update --init --recursive in the checkout)")
    if managed and cur is not None:
        out.update(ref=cur.ref, pinned=cur.pinned, branch=cur.branch,
                   verified=cur.verified and cur.commit == out["commit"] and cur.python == python)
        upstream = f"origin/{cur.branch}" if cur.branch else None
        if cur.pinned and upstream is None:
            default = gitops.default_branch(repo)
            upstream = f"origin/{default}" if default else None
    else:
        out.update(ref=None, pinned=False, branch=None, verified=None)
        upstream = gitops.upstream_of_head(repo)
    out["upstream"] = upstream
    if fetch:
        why = gitops.fetch(repo)
        out["remote"] = "reachable" if why is None else f"remote not reachable: {why}"
        if why is None and managed:
            record = state.load()
            record.last_fetch = time.time()
            state.save(record)
    out["last_fetch"] = state.load().last_fetch
    out["behind"] = gitops.behind(repo, upstream) if upstream else None
    return out


def lines(rep: dict[str, Any]) -> list[str]:
    """The report as `dpdeck backend status` prints it (and the System screen shows it)."""
    out = [f"diffusion-pipe: {rep['path'] or 'not configured'}"]
    if rep.get("commit"):
        ref = rep.get("ref")
        how = (f"pinned at {ref}" if rep.get("pinned") else f"tracking origin/{rep.get('branch')}") \
            if rep.get("managed") else "not managed by dpdeck"
        out.append(f"  commit:   {rep['commit'][:12]} ({rep.get('describe') or '?'}); {how}")
        dirty = rep.get("dirty") or []
        out.append(f"  dirty:    {'yes, ' + str(len(dirty)) + ' changed file(s)' if dirty else 'no'}")
        behind = rep.get("behind")
        since = "never fetched" if not rep.get("last_fetch") else "as of the last fetch"
        if rep.get("upstream"):
            count = "?" if behind is None else str(behind)
            out.append(f"  behind:   {count} commit(s) behind {rep['upstream']} ({since}; --fetch to check now)")
        if "remote" in rep:
            out.append(f"  remote:   {rep['remote']}")
    if rep.get("configured"):
        out.append(f"  python:   {rep['python']}" + ("" if rep.get("python_set") else " (dpdeck's own)"))
        verified = rep.get("verified")
        out.append("  verified: " + {True: "yes", False: "no (run dpdeck backend update)", None: "unknown"}[verified])
    out += [f"  problem:  {p}" for p in rep.get("problems") or []]
    progress = rep.get("progress")
    if progress and progress.get("running"):
        out.append(f"  {progress.get('action')} in progress:")
        out += [f"    {s['n']} {s['name']}: {s['state']} {s.get('detail', '')}".rstrip() for s in progress["steps"]]
    return out
