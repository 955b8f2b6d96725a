"""`dpdeck profile ...` and `dpdeck secrets ...`.

Exit codes: 0 ok; 1 the profile is invalid or the operation failed; 2 usage errors, including a profile
name or file that does not exist. The `profiles` modules are imported inside the handlers so that
`dpdeck --version` does not pay for tomlkit and pydantic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from tui import units
from tui.cli.output import error, print_json, table, warn

Handler = Callable[[argparse.Namespace], int]

EXIT_HELP = """exit status:
  0  ok (for validate: valid, warnings allowed)
  1  invalid profile or the operation failed (nothing stored was changed)
  2  usage error, including a profile name or file that does not exist"""


def _guard(handler: Handler) -> Handler:
    """Turn the profile layer's errors into a message and an exit code; never a traceback."""

    def run(args: argparse.Namespace) -> int:
        from profiles.errors import ProfileError, ProfileNotFound
        from profiles.secrets import redact
        from profiles.store import InvalidName

        try:
            return handler(args)
        except (ProfileNotFound, InvalidName) as exc:
            error(redact(str(exc)))
            return 2
        except ProfileError as exc:
            error(redact(str(exc)))
            return 1
        except BrokenPipeError:
            raise  # the reader of our output left (`| head`): main ends quietly
        except OSError as exc:  # e.g. exporting into a folder we cannot write
            from tui.cli.output import state_write_error

            state = state_write_error(exc)
            if state:
                error(state)  # the state dir itself: what main says for every command
                return 2
            where = f"{exc.filename}: " if exc.filename else ""
            error(redact(f"{where}{exc.strerror or exc}"))
            return 1

    return run


def _warn_all(lines: list[str]) -> None:
    from profiles.secrets import redact

    for line in lines:
        warn(redact(line))


# profile list / show / templates


def _cmd_list(args: argparse.Namespace) -> int:
    from profiles import store

    infos = store.list_profiles()
    if args.json:
        print_json([i.to_dict() for i in infos])
        return 0
    if not infos:
        print("no profiles stored yet; create one with: dpdeck profile new NAME")
        return 0
    rows = [[i.name, i.model_type or "?", str(i.versions), units.when_iso(i.modified)] for i in infos]
    print(table(rows, ["NAME", "TYPE", "VERSIONS", "MODIFIED"]))
    return 0


def _redact_data(node: Any) -> Any:
    from profiles.secrets import MASK, PROFILE_SECRET_KEYS, redact

    if isinstance(node, dict):
        return {
            k: MASK if str(k).lower() in PROFILE_SECRET_KEYS else _redact_data(v) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_redact_data(v) for v in node]
    if isinstance(node, str):
        return redact(node)
    return node


def _redact_toml(text: str) -> str:
    """Mask the values of secret keys (kept as keys, so the user sees one is there) and secret-shaped text."""
    import re

    from profiles.secrets import PROFILE_SECRET_KEYS, redact

    keys = "|".join(re.escape(k) for k in PROFILE_SECRET_KEYS)
    masked = re.sub(rf"(?im)^(\s*(?:{keys})\s*=\s*).*$", r"\1'***'", text)
    return redact(masked)


def _cmd_show(args: argparse.Namespace) -> int:
    from profiles import store

    profile = store.resolve(args.profile)
    parts = [("main", profile.main)]
    if profile.dataset is not None:
        parts.append(("dataset", profile.dataset))
    parts.extend((f"eval:{n}", t) for n, t in profile.eval_datasets.items())
    if args.file != "all":
        parts = [p for p in parts if p[0] == args.file]
        if not parts:
            error(f"{args.profile}: has no {args.file} TOML")
            return 2
    if args.json:
        print_json(
            {
                "name": profile.name,
                "files": {
                    role: {"path": str(t.path) if t.path else None, "data": _redact_data(t.data())}
                    for role, t in parts
                },
            }
        )
        return 0
    for index, (role, toml) in enumerate(parts):
        if len(parts) > 1:
            print(f"{'' if index == 0 else chr(10)}# ==> {role}: {toml.path or toml.source} <==")
        sys.stdout.write(_redact_toml(toml.dumps()))
    return 0


def _default_template() -> str:
    from profiles.templates import list_templates

    infos = list_templates()
    for info in infos:
        if getattr(info, "default", False):
            return str(info.name)
    return str(infos[0].name)


def _template_dict(info: Any) -> dict[str, Any]:
    keys = ("name", "description", "model_type", "backend", "essential", "default")
    return {k: getattr(info, k, None) for k in keys}


def _cmd_templates(args: argparse.Namespace) -> int:
    from profiles.templates import list_templates

    infos = list_templates()
    if args.json:
        print_json([_template_dict(i) for i in infos])
        return 0
    rows = [
        [str(i.name) + (" *" if getattr(i, "default", False) else ""), str(i.model_type), str(i.description)]
        for i in infos
    ]
    print(table(rows, ["TEMPLATE (* default)", "TYPE", "DESCRIPTION"]))
    return 0


# validate


def _problem_dict(problem: Any) -> dict[str, Any]:
    keys = ("severity", "file", "key", "line", "found", "expected", "message", "code")
    return {k: getattr(problem, k, None) for k in keys} | {"text": str(problem)}


def _cmd_validate(args: argparse.Namespace) -> int:
    from profiles import store
    from profiles.backend_choice import choose_for_model
    from profiles.errors import ProfileParseError
    from profiles.secrets import redact
    from profiles.validate import has_errors, validate_profile

    try:
        profile = store.resolve(args.profile)
    except ProfileParseError as exc:
        # Unparseable content is an invalid profile (1), not a usage error.
        if args.json:
            print_json({"valid": False, "errors": 1, "warnings": 0, "problems": [{"text": str(exc)}]})
        else:
            print(redact(str(exc)))
        return 1
    try:
        chosen = choose_for_model(profile.main.data().get("model"), profile.model_type, args.backend)
    except ValueError as exc:
        error(str(exc))
        return 2
    problems = validate_profile(
        profile,
        backend=chosen.backend or "diffusion-pipe",
        check_paths="warn" if args.away else "error",
        num_gpus=args.gpus,
    )
    n_err = sum(1 for p in problems if getattr(p, "severity", "") == "error")
    n_warn = len(problems) - n_err
    valid = not has_errors(problems)
    if args.json:
        print_json(
            {
                "valid": valid,
                "backend": chosen.backend,
                "backend_reason": chosen.reason,
                "errors": n_err,
                "warnings": n_warn,
                "problems": [_problem_dict(p) for p in problems],
            }
        )
    else:
        for p in problems:
            print(redact(str(p)))
        where = profile.name or str(profile.main.path or profile.main.source)
        status = "valid" if valid else "INVALID"
        print(f"{where}: {status} ({n_err} error(s), {n_warn} warning(s)); {chosen.describe()}", file=sys.stderr)
    return 0 if valid else 1


# new / delete / rename / copy


def _cmd_new(args: argparse.Namespace) -> int:
    import difflib

    from profiles import store
    from profiles.templates import list_templates

    known = [str(i.name) for i in list_templates()]
    template = args.template or _default_template()
    if template not in known:
        close = difflib.get_close_matches(template, known, n=3, cutoff=0.4)
        hint = f"did you mean: {', '.join(close)}?" if close else f"templates: {', '.join(known)}"
        error(f"unknown template {template!r}; {hint}")
        return 2
    result = store.create_from_template(template, args.name)
    path = store.profile_dir(args.name)
    if args.json:
        print_json(
            {"name": args.name, "template": template, "path": str(path), "version": result.version.version}
        )
    else:
        print(f"created profile {args.name!r} from template {template!r} in {path}")
        print(f"next: dpdeck profile edit {args.name}   then: dpdeck profile validate {args.name}")
    _warn_all(result.warnings)
    return 0


def _cmd_delete(args: argparse.Namespace) -> int:
    from profiles import store

    where = store.delete(args.name)
    if args.json:
        print_json({"name": args.name, "trash": str(where)})
    else:
        print(
            f"deleted {args.name!r} (moved to {where}; bring it back with: dpdeck profile undelete {args.name})"
        )
    return 0


def _cmd_undelete(args: argparse.Namespace) -> int:
    from profiles import store

    where = store.undelete(args.name)
    print(f"restored {args.name!r} to {where}")
    return 0


def _cmd_rename(args: argparse.Namespace) -> int:
    from profiles import store

    where = store.rename(args.old, args.new)
    print(f"renamed {args.old!r} to {args.new!r} ({where})")
    return 0


def _cmd_copy(args: argparse.Namespace) -> int:
    from profiles import store

    result = store.copy(args.source, args.dest)
    print(f"copied {args.source!r} to {args.dest!r} (v{result.version.version})")
    return 0


# diff / history / rollback


def _cmd_diff(args: argparse.Namespace) -> int:
    from profiles import store
    from profiles.diff import diff_profiles, render_value
    from profiles.secrets import MASK, PROFILE_SECRET_KEYS, redact

    left, right = store.resolve(args.left), store.resolve(args.right)
    entries = diff_profiles(left, right)

    def secret(key: str) -> bool:
        return key.rsplit(".", 1)[-1].lower() in PROFILE_SECRET_KEYS

    if args.json:
        out = []
        for e in entries:
            item = e.to_dict()
            for side in ("left", "right"):
                item[side] = MASK if secret(e.key) and item[side] is not None else _redact_data(item[side])
            out.append(item)
        print_json({"left": args.left, "right": args.right, "differences": out})
        return 0
    if not entries:
        print(f"{args.left} and {args.right} are the same (key by key)")
        return 0
    rows = []
    for e in entries:
        lv = render_value(e.left, e.left_present)
        rv = render_value(e.right, e.right_present)
        if secret(e.key):
            lv, rv = (MASK if e.left_present else lv), (MASK if e.right_present else rv)
        rows.append([e.file, e.key, redact(lv), redact(rv)])
    print(table(rows, ["FILE", "KEY", args.left, args.right]))
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from profiles import store
    from profiles.secrets import redact

    if args.show is not None:
        files = store.read_version(args.name, args.show)
        chosen = [args.file] if args.file else sorted(files, key=lambda f: (f != store.MAIN, f))
        for fname in chosen:
            if fname not in files:
                error(
                    f"version {args.show} of {args.name!r} has no {fname} (it has {', '.join(sorted(files))})"
                )
                return 2
        if args.json:
            print_json(
                {"name": args.name, "version": args.show, "files": {f: redact(files[f]) for f in chosen}}
            )
            return 0
        for index, fname in enumerate(chosen):
            if len(chosen) > 1:
                print(f"{'' if index == 0 else chr(10)}# ==> v{args.show}/{fname} <==")
            sys.stdout.write(_redact_toml(files[fname]))
        return 0
    if args.diff is not None:
        text = store.diff_versions(args.name, args.diff[0], args.diff[1])
        if args.json:
            print_json({"name": args.name, "old": args.diff[0], "new": args.diff[1], "diff": redact(text)})
        else:
            sys.stdout.write(redact(text) if text else f"v{args.diff[0]} and v{args.diff[1]} are identical\n")
        return 0
    versions = store.list_versions(args.name)
    if args.json:
        print_json([v.to_dict() for v in versions])
        return 0
    rows = [[f"v{v.version}", units.when_iso(v.timestamp), v.message] for v in reversed(versions)]
    print(table(rows, ["VERSION", "SAVED", "MESSAGE"]))  # local time and age; --json keeps the UTC stamp
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from profiles import store

    result = store.rollback(args.name, args.version)
    if args.json:
        print_json({"name": args.name, "rolled_back_to": args.version, "version": result.version.version})
    else:
        print(
            f"{args.name}: restored the content of v{args.version} as v{result.version.version} "
            f"(undo with: dpdeck profile rollback {args.name} {result.version.version - 1})"
        )
    return 0


# export / import


def _cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from profiles.archive import export_profile

    result = export_profile(args.profile, Path(args.output) if args.output else None, overwrite=args.force)
    if args.json:
        print_json(
            {"name": result.name, "path": str(result.path), "files": result.files, "removed": result.removed}
        )
    else:
        print(f"exported {result.name!r} to {result.path} ({', '.join(result.files)})")
    _warn_all(result.removed)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from profiles.archive import ImportRejected, import_path
    from profiles.secrets import redact

    try:
        result = import_path(Path(args.source), args.name, force=args.force, backend=args.backend)
    except ImportRejected as exc:
        if args.json:
            print_json(
                {"imported": False, "message": redact(str(exc)), "problems": [redact(x) for x in exc.lines]}
            )
        else:
            for line in exc.lines:
                print(redact(line), file=sys.stderr)
            error(redact(str(exc)))
        return 1
    if args.json:
        print_json(
            {
                "imported": True,
                "name": result.name,
                "version": result.version,
                "created": result.created,
                "warnings": [redact(w) for w in result.warnings],
                "problems": [redact(p) for p in result.problems],
            }
        )
    else:
        verb = "imported" if result.created else "updated"
        print(f"{verb} profile {result.name!r} (v{result.version})")
        for line in result.problems:
            print(redact(line))
    _warn_all(result.warnings)
    return 0


# edit


def _editor_command() -> list[str]:
    import os
    import shlex

    return shlex.split(os.environ.get("EDITOR") or os.environ.get("VISUAL") or "vi")


def _ask_after_errors() -> str:
    """'e' re-edit, 's' save anyway, 'd' discard; '' when nobody can answer (stdin not a terminal / EOF)."""
    if not sys.stdin.isatty():
        return ""
    while True:
        try:
            answer = input("[e]dit again, [s]ave anyway, [d]iscard? ").strip().lower()
        except EOFError:
            return ""
        if answer[:1] in ("e", "s", "d"):
            return answer[:1]


def _cmd_edit(args: argparse.Namespace) -> int:
    import os
    import subprocess
    from datetime import datetime, timezone

    from profiles import store
    from profiles.secrets import redact
    from statefiles.atomic import atomic_write_text
    from statefiles.paths import state_dir

    fname = store.DATASET if args.dataset else store.MAIN
    files = store.read_files(args.name)
    if fname not in files:
        error(f"profile {args.name!r} has no {fname}")
        return 2
    original = files[fname]
    # The working copy lives in the state dir (not /tmp) and doubles as the recovery file.
    recovery = state_dir() / "recovery"
    recovery.mkdir(mode=0o700, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    work = recovery / f"{args.name}.{fname.removesuffix('.toml')}.{stamp}.{os.getpid()}.toml"
    atomic_write_text(work, original, mode=0o600)
    command = _editor_command()
    while True:
        try:
            rc = subprocess.call([*command, str(work)])
        except FileNotFoundError:
            error(f"editor {command[0]!r} not found; set $EDITOR (your copy is in {work})")
            return 2
        if rc != 0:
            error(f"editor exited with status {rc}; nothing saved, your text is kept in {work}")
            return 1
        text = work.read_text(encoding="utf-8")
        if text == original:
            work.unlink()
            print(f"{args.name}: no changes")
            return 0
        candidate = dict(files)
        candidate[fname] = text
        labels = {f: str(store.profile_dir(args.name) / f) for f in candidate} | {fname: str(work)}
        checked = store.validate_files(candidate, labels=labels, backend=args.backend)
        if checked.errors:
            for line in checked.errors:
                print(redact(line), file=sys.stderr)
            choice = _ask_after_errors()
            if choice == "e":
                continue
            if choice == "d":
                work.unlink()
                print(f"{args.name}: discarded your changes; nothing saved")
                return 1
            if choice != "s":
                error(f"not saved: {len(checked.errors)} error(s). Your text is kept in {work}")
                print(work)
                return 1
        if store.read_files(args.name) != files:
            error(
                f"{args.name}: the profile was changed elsewhere meanwhile; not saved. Your text is in {work}"
            )
            print(work)
            return 1
        try:
            result = store.save(args.name, candidate, args.message or f"edit {fname}")
        except Exception:
            error(f"saving failed; your text is kept in {work}")
            raise
        work.unlink()
        _warn_all(checked.warnings + result.warnings)
        print(f"saved {args.name} as v{result.version.version}")
        return 0


# secrets


def _cmd_secrets_set(args: argparse.Namespace) -> int:
    from profiles.secrets import SecretsError, check_name, set_secret

    try:
        check_name(args.name)
    except SecretsError as exc:
        error(str(exc))
        return 2
    if sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value for {args.name} (input hidden): ")
    else:
        value = sys.stdin.readline()
    value = value.strip()
    if not value:
        error(f"no value given for {args.name}; nothing stored")
        return 1
    path = set_secret(args.name, value)
    print(f"stored {args.name} in {path} (mode 0600)")
    return 0


def _cmd_secrets_list(args: argparse.Namespace) -> int:
    from profiles.secrets import list_secrets

    infos = list_secrets()
    if args.json:
        print_json([{"name": i.name, "source": i.source} for i in infos])
        return 0
    if not infos:
        print("no secrets set (dpdeck secrets set wandb_api_key, or export WANDB_API_KEY / HF_TOKEN)")
        return 0
    print(table([[i.name, i.source] for i in infos], ["NAME", "SOURCE"]))
    return 0


def _cmd_secrets_delete(args: argparse.Namespace) -> int:
    from profiles.secrets import delete_secret

    if not delete_secret(args.name):
        error(f"no secret named {args.name!r} in the secrets file")
        return 2
    print(f"deleted {args.name}")
    return 0


# registration


def _add(
    sub: Any, name: str, handler: Handler, help_text: str, *, json_flag: bool = True
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EXIT_HELP,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    if json_flag:
        parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_guard(handler))
    return parser


def _backend_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["builtin", "diffusion-pipe", "auto"],
        default="auto",
        help="check against this trainer (default auto: the one the queue would run it on)",
    )


def register(subparsers: Any) -> None:
    top = subparsers.add_parser(
        "profile", help="training profiles: list, validate, edit, diff, history, share"
    )
    sub = top.add_subparsers(dest="profile_command", metavar="ACTION")
    top.set_defaults(func=lambda args: (top.print_help(), 2)[1])

    _add(sub, "list", _cmd_list, "list stored profiles")

    p = _add(sub, "show", _cmd_show, "print a profile's TOML (secrets redacted)")
    p.add_argument("profile", metavar="NAME_OR_PATH")
    p.add_argument(
        "--file", choices=["all", "main", "dataset"], default="all", help="which file (default all)"
    )

    p = _add(sub, "validate", _cmd_validate, "check a profile; prints file:line: key: message per problem")
    p.add_argument("profile", metavar="PATH_OR_NAME", help="a main TOML path or a stored profile name")
    _backend_arg(p)
    p.add_argument("--away", action="store_true", help="not on the GPU box: missing paths are warnings")
    p.add_argument("--gpus", type=int, default=None, help="GPU count to check pipeline_stages against")

    p = _add(sub, "new", _cmd_new, "create a stored profile from a template")
    p.add_argument("name")
    p.add_argument(
        "--from", dest="template", default=None, help="template name (default: the default template)"
    )

    p = _add(sub, "edit", _cmd_edit, "edit in $EDITOR, validate on save", json_flag=False)
    p.add_argument("name")
    p.add_argument("--dataset", action="store_true", help="edit the dataset TOML instead of the main TOML")
    p.add_argument("-m", "--message", default=None, help="history message for this save")
    _backend_arg(p)

    p = _add(sub, "diff", _cmd_diff, "key-by-key difference of two profiles (main and dataset)")
    p.add_argument("left", metavar="A")
    p.add_argument("right", metavar="B")

    p = _add(sub, "history", _cmd_history, "saved versions of a profile; --show V, --diff V1 V2")
    p.add_argument("name")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--show", type=int, metavar="V", default=None, help="print version V")
    group.add_argument("--diff", type=int, nargs=2, metavar=("V1", "V2"), default=None, help="unified diff")
    p.add_argument("--file", default=None, help="with --show: only this file (main.toml, dataset.toml)")

    p = _add(sub, "rollback", _cmd_rollback, "save an old version's content as a new version")
    p.add_argument("name")
    p.add_argument("version", type=int)

    p = _add(sub, "export", _cmd_export, "write a portable .dpdeck.tar.gz (secrets removed)")
    p.add_argument("profile", metavar="NAME_OR_PATH")
    p.add_argument("-o", "--output", default=None, help="archive path (default ./NAME.dpdeck.tar.gz)")
    p.add_argument("--force", action="store_true", help="overwrite an existing archive")

    p = _add(sub, "import", _cmd_import, "import a .dpdeck.tar.gz or a main TOML (validated first)")
    p.add_argument("source", metavar="ARCHIVE_OR_MAIN_TOML")
    p.add_argument("--name", default=None, help="store under this name")
    p.add_argument("--force", action="store_true", help="if the name exists, store as a new version of it")
    _backend_arg(p)

    _add(sub, "templates", _cmd_templates, "list built-in templates")

    p = _add(sub, "delete", _cmd_delete, "move a profile to the trash (recoverable)")
    p.add_argument("name")
    p = _add(sub, "undelete", _cmd_undelete, "restore the last deleted profile of that name", json_flag=False)
    p.add_argument("name")
    p = _add(sub, "rename", _cmd_rename, "rename a profile (history moves with it)", json_flag=False)
    p.add_argument("old")
    p.add_argument("new")
    p = _add(sub, "copy", _cmd_copy, "copy a profile under a new name", json_flag=False)
    p.add_argument("source")
    p.add_argument("dest")

    sec = subparsers.add_parser("secrets", help="W&B / Hugging Face credentials (never stored in profiles)")
    ssub = sec.add_subparsers(dest="secrets_command", metavar="ACTION")
    sec.set_defaults(func=lambda args: (sec.print_help(), 2)[1])
    p = _add(
        ssub,
        "set",
        _cmd_secrets_set,
        "store a secret; the value is read from stdin, never argv",
        json_flag=False,
    )
    p.add_argument("name", help="e.g. wandb_api_key, hf_token")
    _add(ssub, "list", _cmd_secrets_list, "names of the secrets available (never values)")
    p = _add(ssub, "delete", _cmd_secrets_delete, "remove a secret from the secrets file", json_flag=False)
    p.add_argument("name")
