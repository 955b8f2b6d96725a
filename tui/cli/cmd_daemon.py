"""`dpdeck daemon start|stop|status`, `reclaim`, `gpus`, `config get|set|unset|list`."""

from __future__ import annotations

import argparse

from tui.cli.output import error, print_json, table, warn


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("daemon", help="the background daemon that runs and supervises jobs")
    ds = d.add_subparsers(dest="daemon_cmd", metavar="ACTION", required=True)
    start = ds.add_parser("start", help="start it detached (or --foreground, e.g. under systemd)")
    start.add_argument("--foreground", action="store_true")
    start.set_defaults(func=_start)
    stop = ds.add_parser("stop", help="stop it; running jobs keep running unless --kill-jobs")
    stop.add_argument("--kill-jobs", action="store_true")
    stop.set_defaults(func=_stop)
    status = ds.add_parser("status", help="is it running, and the job counts")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    rec = sub.add_parser("reclaim", help="kill orphaned processes of ours (dpdeck-marked, job not live)")
    rec.add_argument("--dry-run", action="store_true", help="only list what would be killed")
    rec.add_argument("--json", action="store_true")
    rec.set_defaults(func=_reclaim)

    g = sub.add_parser("gpus", help="GPUs with their processes marked ours / foreign")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=_gpus)

    doc = sub.add_parser("doctor", help="check python, torch/CUDA, deepspeed, diffusion-pipe, disk, lingering")
    doc.add_argument("--json", action="store_true")
    doc.add_argument("--fix", action="store_true",
                     help="clear stale torch extension build locks and build deepspeed's op once, then check")
    doc.add_argument("--repair", action="store_true",
                     help="rebuild the job store from the job folders (a damaged one is kept aside)")
    doc.set_defaults(func=_doctor)

    c = sub.add_parser("config", help="dpdeck settings (diffusion_pipe.path, scheduler.cpu_slots, ...)")
    cs = c.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    get = cs.add_parser("get", help="print one setting's value")
    get.add_argument("key")
    get.set_defaults(func=_config_get)
    setp = cs.add_parser("set", help="write one setting into config.toml (checked; comments kept)")
    setp.add_argument("key")
    setp.add_argument("value")
    setp.set_defaults(func=_config_set)
    unsetp = cs.add_parser("unset", help="remove a setting from config.toml (back to its default)")
    unsetp.add_argument("key")
    unsetp.set_defaults(func=_config_unset)
    lst = cs.add_parser("list", help="every setting: value, default, where it comes from, help (docs/config.md)")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_config_list)


def _start(args: argparse.Namespace) -> int:
    if args.foreground:
        from engine import service

        return service.main([])
    from engine.jobs import client

    pid = client.ensure_daemon()
    print(f"daemon running (pid {pid})")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from engine.jobs import client

    if client.stop_daemon(kill_jobs=args.kill_jobs):
        print("daemon stopped" + (" (jobs cancelled)" if args.kill_jobs else " (running jobs keep running)"))
    else:
        print("daemon was not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    from engine.jobs import client

    status = client.daemon_status()
    if args.json:
        print_json(status)
        return 0
    if status["running"]:
        print(f"daemon running (pid {status['pid']}) for {status['state_dir']}")
    else:
        print(f"daemon not running for {status['state_dir']} (it starts on demand)")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status["jobs"].items())) or "no jobs"
    print(f"jobs: {counts}" + ("; queue paused" if status["paused"] else ""))
    for problem in status["problems"]:
        print(f"problem: {problem}")
    return 1 if status["problems"] else 0


def _reclaim(args: argparse.Namespace) -> int:
    from engine.jobs import client

    result = client.reclaim(dry_run=args.dry_run)
    if args.json:
        print_json(result)
        return 0
    if not result["orphans"]:
        print("nothing to reclaim: no orphaned dpdeck processes")
        return 0
    verb = "would kill" if args.dry_run else "killed"
    for o in result["orphans"]:
        print(f"{verb} pid {o['pid']} ({o['name']}) of job {o['job']}")
    if result.get("survivors"):
        error(f"{len(result['survivors'])} process(es) survived: {result['survivors']}")
        return 1
    return 0


def _gpus(args: argparse.Namespace) -> int:
    from engine.jobs import client

    report = client.gpu_report()
    if args.json:
        print_json(report)
        return 0
    if not report:
        print("no NVIDIA GPU found (NVML unavailable): jobs run on the CPU, one slot per scheduler.cpu_slots")
        return 0
    rows = []
    for g in report:
        procs = "; ".join(f"{p['pid']} {p['name']} ({'ours' if p['ours'] else 'FOREIGN'})" for p in g["processes"])
        rows.append([
            str(g["index"]), g["name"], f"{g['util']}%" if g["util"] is not None else "-",
            f"{g['mem_used'] // 2**20}/{g['mem_total'] // 2**20} MiB", procs or "-",
        ])
    print(table(rows, ["GPU", "NAME", "UTIL", "MEMORY", "PROCESSES"]))
    return 0


def _config_get(args: argparse.Namespace) -> int:
    from statefiles import settings

    try:
        value = settings.get(args.key)
    except settings.UnknownSetting as exc:
        error(str(exc))
        return 2
    print(_config_text(value))
    return 0


def _config_set(args: argparse.Namespace) -> int:
    from statefiles import settings

    try:
        value = settings.set_value(args.key, args.value)
    except (settings.UnknownSetting, settings.SettingsError) as exc:
        error(str(exc))
        return 2
    print(f"{args.key} = {_config_text(value)}")
    return 0


def _config_unset(args: argparse.Namespace) -> int:
    from statefiles import settings

    try:
        removed = settings.unset(args.key)
        default = settings.key_info(args.key).default
    except (settings.UnknownSetting, settings.SettingsError) as exc:
        error(str(exc))
        return 2
    note = "" if removed else " (was not set)"
    print(f"{args.key} = {_config_text(default)}    # default{note}")
    return 0


def _config_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from statefiles import settings

    report = settings.load_report()
    if args.json:
        print_json({
            "settings": {
                k.key: {"value": report.value(k.key), "default": k.default, "origin": report.origins[k.key],
                        "type": k.expected(), "help": k.help, "env": k.meta.env}
                for k in settings.iter_keys()
            },
            "problems": [asdict(p) for p in report.problems],
        })
        return 0
    rows = [
        [k.key, _config_text(report.value(k.key)), _config_text(k.default),
         "" if report.origins[k.key] == "default" else report.origins[k.key], k.help]
        for k in settings.iter_keys()
    ]
    print(table(rows, ["KEY", "VALUE", "DEFAULT", "FROM", "HELP"]))
    for problem in report.problems:
        warn(str(problem))
    return 0


def _config_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _doctor(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from engine import doctor

    if getattr(args, "repair", False):
        return _repair()
    if getattr(args, "fix", False):
        import sys

        for line in doctor.fix():
            print(f"fix: {line}", file=sys.stderr if args.json else sys.stdout)  # --json stays parseable
    checks = doctor.run_checks()
    if args.json:
        print_json([asdict(c) for c in checks])
    else:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "info": "info"}
        for c in checks:
            print(f"[{marks[c.status]}] {c.name}: {c.detail}")
            if c.fix:
                print(f"       fix: {c.fix}")
    return 1 if any(c.status == "fail" for c in checks) else 0


def _repair() -> int:
    from engine.jobs import repair

    try:
        report = repair.repair()
    except repair.RepairError as exc:
        error(str(exc))
        return 2
    for line in report.lines():
        print(line)
    return 0
