"""`dpdeck models ...`: the base-model registry, local discovery, Hub downloads, and filling profiles."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from tui.cli.output import error, print_json, require_paths, table, warn


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="base models: registry, scan, downloads, use in a profile")
    sub = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    def add(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(func=func)
        return sp

    sp = add("list", _list, "registry entries with their local status (present / partial / missing)")
    sp.add_argument("--type", dest="model_type", help="only this model type (e.g. chroma, sdxl)")
    sp = add("scan", _scan, "find diffusers folders and .safetensors files (configured folders + HF cache)")
    sp.add_argument("folders", nargs="*", type=Path, help="folders to scan instead of the configured ones")
    sp = add("info", _info, "what a .safetensors file is (family, kind, dtype; header only), or a registry entry")
    sp.add_argument("target", help="a .safetensors file, a model folder, or a registry entry id")
    sp = add("pull", _pull, "download a registry entry's missing parts, or files from a Hub repo, in the background")
    sp.add_argument("target", help="registry entry id, or OWNER/NAME repo id")
    sp.add_argument("--file", action="append", default=[], help="file in the repo (repeatable)")
    sp.add_argument("--include", action="append", default=[], help="glob of repo files for a folder pull")
    sp.add_argument("--revision", default="main")
    sp.add_argument("--no-wait", action="store_true", help="start and return (progress: `dpdeck models downloads`)")
    sp.add_argument("--wait", action="store_true", help="with --json: wait and print the final state")
    sp = add("downloads", _downloads, "downloads (run by the daemon) with bytes, speed, ETA, retries, reasons")
    sp.add_argument("--active", action="store_true", help="only queued / running / interrupted / failed ones")
    sp.add_argument("--watch", action="store_true", help="follow live until all are finished")
    sp = add("cancel", _cancel, "stop a download and delete its partial files")
    sp.add_argument("id")
    sp = add("resume", _resume, "continue an interrupted or failed download from its partial files")
    sp.add_argument("id")
    sp = add("use", _use, "fill a profile's [model] paths from a registry entry or a file/folder on disk")
    sp.add_argument("target", help="registry entry id, .safetensors file, or model folder")
    sp.add_argument("--profile", required=True, help="stored profile name or path to a main TOML")
    sp.add_argument("--key", help="the [model] key to set (default: worked out from the file)")
    sp.add_argument("--force", action="store_true", help="allow switching the profile's model.type")
    sp = add("check", _check, "which model files a profile needs are missing, and which entry provides them")
    sp.add_argument("--profile", required=True, help="stored profile name or path to a main TOML")


# ---- formatting --------------------------------------------------------------------------------

def human(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _fail(exc: Exception) -> int:
    """1 for a failed operation; 2 when the command named something that does not exist (a profile, a
    registry entry, a download id), as every dpdeck command does for an unknown job or path."""
    from engine.models.errors import DownloadError, UnknownEntry
    from profiles.errors import ProfileNotFound

    error(str(exc))
    unknown = isinstance(exc, (UnknownEntry, ProfileNotFound)) or (
        isinstance(exc, DownloadError) and exc.code == "not_found"
    )
    return 2 if unknown else 1


def _models_errors() -> tuple[type[Exception], ...]:
    from engine.models.errors import ModelsError
    from profiles.errors import ProfileError

    return (ModelsError, ProfileError)


# ---- list / scan / info ---------------------------------------------------------------------------

def _list(args: argparse.Namespace) -> int:
    from engine.models.registry import component_status, entry_status, load_registry

    reg = load_registry()
    entries = reg.for_type(args.model_type) if args.model_type else reg.entries
    if args.json:
        out = []
        for e in entries:
            comps = []
            for c in e.components:
                st, where = component_status(c)
                comps.append({**c.model_dump(), "status": st, "local_path": str(where or c.local_path())})
            out.append({**e.model_dump(exclude={"components"}), "status": entry_status(e), "components": comps})
        print_json(out)
        return 0
    rows = [[e.id, e.model_type, entry_status(e), f"~{e.approx_gb:g} GB",
             {True: "gated", False: "open", None: "?"}[e.gated], e.licence[:40]] for e in entries]
    print(table(rows, ["ENTRY", "TYPE", "STATUS", "SIZE", "ACCESS", "LICENCE"]))
    return 0


def _scan(args: argparse.Namespace) -> int:
    from engine.models.discovery import scan

    require_paths(*args.folders)
    for f in args.folders:
        if not f.is_dir():
            error(f"{f}: not a folder")
            return 2
    items = scan(args.folders or None)
    if args.json:
        print_json([i.model_dump() for i in items])
        return 0
    rows = [[i.family or "-", i.kind + (f" ({i.variant})" if i.variant else ""), i.dtype or "-", human(i.size),
             i.path + (f"  !! {i.error}" if i.error else "")] for i in items]
    print(table(rows, ["FAMILY", "KIND", "DTYPE", "SIZE", "PATH"]) if rows else "no models found")
    return 0


def _info(args: argparse.Namespace) -> int:
    from engine.models.discovery import inspect_file, inspect_folder
    from engine.models.errors import HeaderError, RegistryError
    from engine.models.registry import component_status, load_registry
    from engine.models.safetensors_header import read_header

    path = Path(args.target).expanduser()
    if not path.exists():
        try:
            e = load_registry().get(args.target)
        except RegistryError:
            error(f"{args.target}: no such file or folder, and not a registry entry id")
            return 2
        comps = [(c, *component_status(c)) for c in e.components]
        if args.json:
            print_json({**e.model_dump(), "status": [s for _c, s, _w in comps]})
            return 0
        print(f"{e.id}: {e.title}\n  type {e.model_type}, licence {e.licence}, "
              f"{'gated' if e.gated else 'open' if e.gated is False else 'access unknown'}")
        if e.notes:
            print(f"  {e.notes}")
        for c, st, where in comps:
            src = f"{c.repo}:{c.file}" if c.kind == "file" else f"{c.repo} ({', '.join(c.include)})"
            print(f"  model.{c.key:<18} {st:<8} {where or c.local_path()}  <- {src}")
        return 0
    if path.is_dir():
        item = inspect_folder(path)
        if item is None:
            error(f"{path}: is a directory, not a diffusers or checkpoint folder; give a .safetensors file")
            return 1
        if args.json:
            print_json(item.model_dump())
        else:
            print(f"{path}\n  {item.kind} folder, family {item.family or 'unknown'}, {human(item.size)}")
        return 0
    try:
        header = read_header(path)
    except HeaderError as exc:
        return _fail(exc)
    item = inspect_file(path)
    if args.json:
        print_json({**item.model_dump(), "metadata": header.metadata, "dtypes": dict(header.dtypes),
                    "parameters": header.parameters})
        return 0
    print(f"{path}\n  family   {item.family or 'unknown'}\n  kind     {item.kind}"
          + (f" ({item.variant})" if item.variant else "")
          + f"\n  dtype    {item.dtype}  ({', '.join(sorted(header.dtypes))})\n  size     {human(item.size)}, "
          f"{item.tensors} tensors, {header.parameters / 1e9:.2f} B parameters")
    for ev in item.evidence:
        print(f"  because  {ev}")
    return 0


# ---- downloads ------------------------------------------------------------------------------------

def _bar(frac: float | None, width: int = 24) -> str:
    if frac is None:
        return "[" + "?" * width + "]"
    n = int(max(0.0, min(1.0, frac)) * width)
    return "[" + "#" * n + "." * (width - n) + "]"


def _line(dl: Any) -> str:
    name = dl.key or Path(dl.dest).name
    pct = f"{dl.progress * 100:5.1f}%" if dl.progress is not None else "   ?%"
    if dl.state in ("failed", "interrupted") and dl.error:
        tail = f"[{dl.code}] {dl.error}" if dl.code else dl.error
    elif dl.state == "completed":
        tail = f"verified, in {dl.timings['transfer_s']:.1f} s" if "transfer_s" in dl.timings else "verified"
    elif dl.state == "cancelled":
        tail = "partial files deleted"
    elif dl.state == "queued":
        tail = dl.wait_reason or "starting"
    else:
        tail = f"{human(dl.speed)}/s ETA {eta(dl.eta_s)}"
    if dl.state in ("running", "completed") and any("xet" in (f.via or "") for f in dl.files):
        tail += " (xet)"  # moved by hf_xet, not read as one HTTP stream (docs/models.md)
    if dl.retries and dl.state in ("queued", "running", "completed"):
        tail += f" (retry {dl.retries}: the last worker {dl.last_death})"
    return (f"{dl.id} {name[:22]:<22} {dl.state:<11} {_bar(dl.progress)} {pct} "
            f"{human(dl.bytes_done)}/{human(dl.bytes_total)} {tail}")


def _watch(ids: list[str]) -> list[Any]:
    """Redraw one line per download until all end. Ctrl-C stops watching, not downloading."""
    from engine.jobs.client import daemon_pid
    from engine.models import downloads

    tty = sys.stdout.isatty()
    drawn = 0
    last_print = 0.0
    try:
        while True:
            dls = [downloads.get(i) for i in ids]
            daemon = daemon_pid() is not None
            done = all(downloads.settled(d, daemon) for d in dls)
            if tty:
                if drawn:
                    sys.stdout.write(f"\x1b[{drawn}F")
                for d in dls:
                    sys.stdout.write("\x1b[2K" + _line(d) + "\n")
                drawn = len(dls)
                sys.stdout.flush()
            elif done or time.monotonic() - last_print > 10:
                for d in dls:
                    print(_line(d), flush=True)
                last_print = time.monotonic()
            if done:
                return dls
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopped watching; downloads continue in the background (`dpdeck models downloads`)")
        return [downloads.get(i) for i in ids]


def _pull(args: argparse.Namespace) -> int:
    from engine.models import downloads
    from engine.models.errors import RegistryError
    from engine.models.registry import Component, Entry, load_registry

    try:
        started: list[Any] = []
        if "/" not in args.target:
            try:
                entry = load_registry().get(args.target)
            except RegistryError as exc:
                return _fail(exc)
            if args.file or args.include:
                warn("--file/--include are ignored for a registry entry (it lists its own files)")
            started = downloads.pull_entry(entry)
            if not started:
                print(f"{entry.id}: every part is already present")
        elif args.file:
            for f in args.file:
                started.append(downloads.pull_file(args.target, f, revision=args.revision))
        else:
            comp = Component(key="diffusers_path", repo=args.target, kind="folder", revision=args.revision,
                             include=args.include or ["*"], check=[])
            adhoc = Entry(id=args.target, title=args.target, model_type="?", licence="?", components=[comp])
            started = [downloads.pull_component(adhoc, comp)]
    except _models_errors() as exc:
        return _fail(exc)
    if args.json and not args.wait:
        print_json([d.model_dump() for d in started])
        return 0
    if not started:
        return 0
    if args.no_wait:
        for d in started:
            print(f"started {d.id}: {d.repo} -> {d.dest}")
        print("follow with `dpdeck models downloads --watch`; it keeps going if this terminal closes")
        return 0
    final = _watch([d.id for d in started])
    if args.json:
        print_json([d.model_dump() for d in final])
    bad = [d for d in final if d.state in ("failed", "cancelled", "interrupted")]
    for d in bad:
        error(f"{d.id}: {d.error or d.state}")
    return 1 if bad else 0


def _downloads(args: argparse.Namespace) -> int:
    from engine.models import downloads

    dls = downloads.list_downloads(include_finished=not args.active)
    if any(d.state in ("queued", "interrupted") for d in dls):
        from engine.jobs.client import ensure_daemon

        ensure_daemon()  # after a reboot nobody else may have started it: the daemon resumes them
    if args.json:
        print_json([{**d.model_dump(), "progress": d.progress} for d in dls])
        return 0
    if args.watch:
        live = [d.id for d in dls if d.state in (*downloads.LIVE, "interrupted")]
        if live:
            _watch(live)
            return 0
    if not dls:
        print("no downloads")
    for d in dls:
        print(_line(d))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from engine.models import downloads

    try:
        dl = downloads.cancel(args.id)
        if dl.state in downloads.LIVE:
            dl = downloads.wait(args.id, timeout=15)
    except (*_models_errors(), TimeoutError) as exc:
        return _fail(exc)
    if args.json:
        print_json(dl.model_dump())
    else:
        print(f"{dl.id}: {dl.state}")
    return 0 if dl.state in ("cancelled", "completed") else 1


def _resume(args: argparse.Namespace) -> int:
    from engine.models import downloads

    try:
        dl = downloads.resume(args.id)
    except _models_errors() as exc:
        return _fail(exc)
    if args.json:
        print_json(dl.model_dump())
        return 0
    final = _watch([dl.id])[0]
    return 0 if final.state == "completed" else 1


# ---- profiles -------------------------------------------------------------------------------------

def _load_profile(ref: str) -> tuple[Any, str | None]:
    """(profile, stored name or None when it is a plain file)."""
    from profiles import store
    from profiles.errors import ProfileNotFound

    path = Path(ref).expanduser()
    if path.exists():
        return store.resolve(ref), None
    if store.exists(ref):
        return store.load_stored(ref), ref
    raise ProfileNotFound(f"{ref}: no stored profile of that name and no such file")


def _save_profile(profile: Any, name: str | None, message: str) -> None:
    from statefiles.atomic import atomic_write_text

    if name is not None:
        from profiles import store

        store.save_profile(name, profile, message)
    else:
        atomic_write_text(profile.main.path, profile.main.dumps())


def _use(args: argparse.Namespace) -> int:
    from engine.models.fill import use_entry, use_file
    from engine.models.registry import load_registry

    try:
        profile, name = _load_profile(args.profile)
        path = Path(args.target).expanduser()
        if path.exists():
            changes, what = use_file(profile, path, key=args.key, force=args.force)
        else:
            if "/" in args.target or args.target.endswith(".safetensors"):
                error(f"{args.target}: no such file or folder")
                return 2
            entry = load_registry().get(args.target)
            changes, what = use_entry(profile, entry, force=args.force), entry.title
        if changes:
            _save_profile(profile, name, f"models use {args.target}")
    except _models_errors() as exc:
        return _fail(exc)
    if args.json:
        print_json({"what": what, "changes": [c.__dict__ for c in changes]})
        return 0
    print(f"{what}:")
    for c in changes:
        print(f"  {c.key} = {c.new!r}" + (f"   (was {c.old!r})" if c.old not in (None, "") else ""))
    if not changes:
        print("  nothing to change")
    return 0


def _check(args: argparse.Namespace) -> int:
    from engine.models.fill import missing_model_files

    try:
        profile, _name = _load_profile(args.profile)
    except _models_errors() as exc:
        return _fail(exc)
    issues = missing_model_files(profile)
    if args.json:
        print_json([i.__dict__ for i in issues])
        return 1 if issues else 0
    if not issues:
        print("all model files are in place")
        return 0
    src = profile.main.source
    for i in issues:
        print(f"{src}:{i.line or '?'}: {i.message}")
    return 1
