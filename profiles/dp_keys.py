"""What diffusion-pipe reads from a config: built-in knowledge (a scan of upstream 8f83dbf, shipped as data) or,
when `diffusion_pipe.path` names a checkout, that checkout's own scan merged over it.

The merge only ever widens: a key either side knows is known, an enum accepts either side's values, so a newer
upstream never turns a valid config into an error. A key is `required` only where the code in use (the checkout
when there is one) subscripts it unguarded. Scans of a checkout are cached under the state dir's cache, keyed by
its git HEAD and its source files' mtimes, so validation stays fast.

Regenerate the built-in data after moving the pin (docs/diffusion_pipe.md):
    python -m profiles.dp_scan ../shared/upstream/diffusion-pipe --commit 8f83dbf \\
        --source tdrussell/diffusion-pipe --json > profiles/data/diffusion_pipe_8f83dbf.json
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from statefiles import atomic, paths

BUILTIN_COMMIT = "8f83dbf"
DATA = Path(__file__).with_name("data") / f"diffusion_pipe_{BUILTIN_COMMIT}.json"
CACHE_SUBDIR = "dp_keys"


@dataclass(frozen=True)
class KeyInfo:
    required: bool
    default: object | None
    where: str  # "models/flux.py:123": the first read


@dataclass(frozen=True)
class DpKeys:
    commit: str | None
    source: str  # "built-in knowledge of diffusion-pipe 8f83dbf" or the checkout path
    tables: dict[str, dict[str, KeyInfo]]  # "main", "model" (every type), "adapter", "dataset", "directory", ...
    model_types: dict[str, dict[str, KeyInfo]]  # model type -> [model] keys its own code reads
    enums: dict[str, tuple[str, ...]]  # "main.lr_scheduler" -> ("constant", "cosine", "linear")
    problem: str | None = None  # why a configured checkout could not be used (the knowledge is then built-in)
    open_tables: frozenset[str] = frozenset()  # handed on whole (optimizer kwargs): any key may mean something
    model_files: dict[str, str] = field(default_factory=dict)  # model type -> "models/flux.py"

    def reads(self, table: str, key: str, model_type: str | None = None) -> bool:
        if table == "model":
            if model_type is not None and model_type in self.model_types:
                return key in self.model_keys(model_type)
            # an unknown type is reported elsewhere; here any type's key counts
            return key in self.tables.get("model", {}) or any(key in keys for keys in self.model_types.values())
        return key in self.tables.get(table, {})

    def model_keys(self, model_type: str) -> dict[str, KeyInfo]:
        return {**self.tables.get("model", {}), **self.model_types.get(model_type, {})}

    def key(self, table: str, key: str, model_type: str | None = None) -> KeyInfo | None:
        if table == "model" and model_type is not None:
            return self.model_keys(model_type).get(key)
        return self.tables.get(table, {}).get(key)


def _infos(raw: dict[str, Any]) -> dict[str, KeyInfo]:
    return {k: KeyInfo(bool(v["required"]), v.get("default"), str(v["where"])) for k, v in raw.items()}


def from_json(data: dict[str, Any], source: str, problem: str | None = None) -> DpKeys:
    return DpKeys(
        commit=data.get("commit"),
        source=source,
        tables={t: _infos(keys) for t, keys in data["tables"].items()},
        model_types={t: _infos(keys) for t, keys in data["model_types"].items()},
        enums={k: tuple(v) for k, v in data["enums"].items()},
        problem=problem,
        open_tables=frozenset(data.get("open_tables", ())),
        model_files=dict(data.get("model_files", {})),
    )


@functools.lru_cache(maxsize=1)
def builtin() -> DpKeys:
    data = json.loads(DATA.read_text(encoding="utf-8"))
    return from_json(data, f"built-in knowledge of diffusion-pipe {data.get('commit') or BUILTIN_COMMIT}")


def _merge_infos(base: dict[str, KeyInfo], ours: dict[str, KeyInfo]) -> dict[str, KeyInfo]:
    merged = {k: replace(v, required=False) for k, v in base.items()}  # required only where the checkout says
    for k, v in ours.items():
        old = base.get(k)
        merged[k] = v if v.default is not None or old is None else replace(v, default=old.default)
    return dict(sorted(merged.items()))


def merge(checkout: DpKeys, base: DpKeys) -> DpKeys:
    """The checkout's knowledge widened by `base`: keys and enum values of either, requiredness of the checkout."""
    tables = {t: _merge_infos(base.tables.get(t, {}), checkout.tables.get(t, {}))
              for t in sorted(set(base.tables) | set(checkout.tables))}
    types = {t: _merge_infos(base.model_types.get(t, {}), checkout.model_types.get(t, {}))
             for t in sorted(set(base.model_types) | set(checkout.model_types))}
    enums = {k: tuple(sorted(set(base.enums.get(k, ())) | set(checkout.enums.get(k, ()))))
             for k in sorted(set(base.enums) | set(checkout.enums))}
    return DpKeys(checkout.commit, checkout.source, tables, types, enums, checkout.problem,
                  base.open_tables | checkout.open_tables, {**base.model_files, **checkout.model_files})


def lacking(checkout: DpKeys, base: DpKeys) -> list[tuple[str, str]]:
    """Keys `checkout` reads that `base` does not know, as ("model.foo", "models/x.py:12"), sorted."""
    found: dict[str, str] = {}
    for table, keys in checkout.tables.items():
        for key, info in keys.items():
            if not base.reads(table, key):
                found[f"{table}.{key}"] = info.where
    for mtype, keys in checkout.model_types.items():
        if mtype not in base.model_types:
            found[f"model.type = {mtype!r}"] = checkout.model_files.get(mtype, "train.py")
        for key, info in keys.items():
            if mtype in base.model_types and not base.reads("model", key, mtype):
                # known for other types perhaps, but new for this one
                found[f"model.{key} for {mtype}"] = info.where
            elif not base.reads("model", key):
                found.setdefault(f"model.{key}", info.where)
    return sorted(found.items())


# -- a user's checkout ----------------------------------------------------------------------------------------
_memo: dict[tuple[str, str], DpKeys] = {}
_merged: dict[int, tuple[DpKeys, DpKeys]] = {}  # id(scan) -> (scan, scan merged over built-in)


def _head_stamp(checkout: Path) -> str:
    """The checkout's git HEAD as its files say (no subprocess: this runs on every validation)."""
    git = checkout / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: PATH"
        text = git.read_text(encoding="utf-8", errors="replace").strip()
        if text.startswith("gitdir:"):
            git = (checkout / text.split(":", 1)[1].strip()).resolve()
    try:
        head = (git / "HEAD").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""
    if head.startswith("ref:"):
        ref = head.split(":", 1)[1].strip()
        try:
            return (git / ref).read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            try:
                packed = (git / "packed-refs").read_text(encoding="utf-8", errors="replace")
            except OSError:
                return head
            return next((line.split()[0] for line in packed.splitlines() if line.endswith(" " + ref)), head)
    return head


@functools.lru_cache(maxsize=1)
def _scanner_version() -> str:
    """A changed scanner makes every cached scan stale (no version number to forget to bump)."""
    from profiles import dp_scan

    return hashlib.sha256(Path(dp_scan.__file__).read_bytes()).hexdigest()[:12]


def _stamp(checkout: Path) -> str:
    from profiles import dp_scan

    newest, count = 0, 0
    for path in dp_scan.source_files(checkout):
        try:
            newest = max(newest, path.stat().st_mtime_ns)
        except OSError:
            continue
        count += 1
    return f"{_scanner_version()}:{_head_stamp(checkout)}:{newest}:{count}"


def _cache_file(checkout: Path) -> Path:
    digest = hashlib.sha256(str(checkout).encode()).hexdigest()[:16]
    return paths.cache_dir() / CACHE_SUBDIR / f"{digest}.json"


def _problem(checkout: Path) -> str | None:
    if not checkout.is_dir():
        return f"diffusion_pipe.path {checkout} does not exist: using dpdeck's built-in knowledge"
    if not (checkout / "train.py").is_file():
        return (f"diffusion_pipe.path {checkout} has no train.py (not a diffusion-pipe checkout): "
                f"using dpdeck's built-in knowledge")
    return None


def scan_checkout(checkout: Path | str) -> DpKeys:
    """The checkout's own knowledge (not merged), from the cache when its HEAD and files are unchanged.

    A missing or foreign folder gives the built-in knowledge with `problem` saying why."""
    root = paths.canonical(checkout)
    problem = _problem(root)
    if problem:
        return replace(builtin(), problem=problem)
    stamp = _stamp(root)
    memo = _memo.get((str(root), stamp))
    if memo is not None:
        return memo
    data: dict[str, Any] | None = None
    try:
        cache: Path | None = _cache_file(root)
    except OSError:
        cache = None  # no usable state dir: scan every process, still memoised within it
    try:
        if cache is not None:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("stamp") == stamp and cached.get("checkout") == str(root):
                data = cached["scan"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        data = None
    if data is None:
        from profiles import dp_scan

        data = dp_scan.scan(root).to_json()
        if cache is not None:
            try:
                atomic.atomic_write_text(cache, json.dumps({"checkout": str(root), "stamp": stamp, "scan": data}))
            except OSError:
                pass  # a read-only state dir only costs the next process a rescan
    problems = data.get("problems") or []
    result = from_json(data, str(root), "; ".join(problems) if problems else None)
    _memo[(str(root), stamp)] = result
    return result


def keys_for(checkout: Path | str | None) -> DpKeys:
    """What the diffusion-pipe in use reads: built-in for None, else the checkout's scan merged over built-in."""
    if checkout is None or not os.fspath(checkout):
        return builtin()
    own = scan_checkout(checkout)
    if own.source == builtin().source:  # the checkout could not be scanned; `problem` says why
        return own
    merged = _merged.get(id(own))
    if merged is None or merged[0] is not own:
        merged = (own, merge(own, builtin()))
        _merged[id(own)] = merged
    return merged[1]


def configured() -> DpKeys:
    """keys_for the checkout `diffusion_pipe.path` names (settings), or built-in when none is set."""
    from statefiles import settings

    return keys_for(settings.load().diffusion_pipe.path or None)
