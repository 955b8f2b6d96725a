"""The wheels of the GPU check pack: which ones, fetched how, and whether they suffice (bench/gpu/prepare.sh).

    python3 bench/gpu/pack.py prepare [--dest .whl]   # download + build the pinned wheels, check them, size them
    python3 bench/gpu/pack.py check                   # resolve the pins for the GPU machine, download nothing
    python3 bench/gpu/pack.py verify [--dest .whl]    # only the offline checks of what is in .whl

The GPU machine runs Python 3.12 on x86-64 with no network; its image holds torch, transformers, peft and
the rest of IMAGE. bench/gpu/wheels.txt pins what it lacks. Three things keep the pack from rotting: every
dpdeck dependency (pyproject.toml) is pinned or in IMAGE at a version its specifier allows; every
Requires-Dist of a carried wheel is carried or in IMAGE; and the working tree plus the wheels fit the 64 MiB
that travels to the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from statefiles import toml  # noqa: E402

PINS = HERE / "wheels.txt"
PYTHON_VERSION = "3.12"
# pip matches a manylinux tag exactly: the tags the machine's glibc accepts that wheels are published under.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TRAVEL_LIMIT = 64 * 2**20  # the working tree plus carried paths that travel to the device machine
# What the GPU image holds (its `pip list`, read 2026-11 and 2026-11-17): version, or None where it was not read.
IMAGE: dict[str, str | None] = {
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "huggingface-hub": "1.33.0",
    "accelerate": "1.15.0",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "sentencepiece": "0.2.2",
    "numpy": "2.5.2",
    "triton": "3.6.0",
    "torchvision": "0.26.0",
    # present, version not read
    **dict.fromkeys(
        """peft psutil nvidia-ml-py pillow tensorboard einops msgpack ninja py-cpuinfo tqdm packaging requests
        filelock regex mdurl pyyaml httpx fsspec jinja2 networkx sympy setuptools protobuf certifi idna urllib3
        charset-normalizer hf-xet typer click shellingham anyio httpcore h11""".split()
    ),
}
# The environment the pins' markers are evaluated in: the GPU machine's.
MARKER_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": PYTHON_VERSION + ".3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    build: bool  # no wheel on the registry: built here

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


class PackError(RuntimeError):
    """A pin, a wheel or the pack's size is wrong; the message says which and what to do."""


def read_pins(path: Path = PINS) -> list[Pin]:
    pins: list[Pin] = []
    seen: set[str] = set()
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        text, _, comment = raw.partition("#")
        text = text.strip()
        if not text:
            continue
        req = Requirement(text)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or req.marker or req.extras:
            raise PackError(f"{path.name}:{number}: {text!r}: expected exactly name==version")
        name = canonicalize_name(req.name)
        if name in seen:
            raise PackError(
                f"{path.name}:{number}: {name} is pinned twice (two versions stop the whole install)"
            )
        seen.add(name)
        pins.append(Pin(name, specs[0].version, comment.strip() == "build"))
    return pins


def dpdeck_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[Requirement]:
    """dpdeck's runtime dependencies and its train extra, those that apply on the GPU machine."""
    data = toml.load_file(pyproject)
    raw = [*data["project"]["dependencies"], *data["project"]["optional-dependencies"]["train"]]
    reqs = [Requirement(r) for r in raw]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(MARKER_ENV)]


def _satisfied(req: Requirement, carried: dict[str, str]) -> str | None:
    """None when `carried` (name -> version) or IMAGE satisfies req, else why not."""
    name = canonicalize_name(req.name)
    have = carried.get(name)
    where = "carried"
    if have is None and name in IMAGE:
        have, where = IMAGE[name], "in the image"
        if have is None:
            return None  # present there at a version nobody read: trusted
    if have is None:
        return f"{req} is neither carried (bench/gpu/wheels.txt) nor in the GPU image (pack.py IMAGE)"
    if not req.specifier.contains(Version(have), prereleases=True):
        return f"{req}: {name} {have} {where} does not satisfy it"
    return None


def check_pins_cover_dpdeck(pins: list[Pin]) -> list[str]:
    carried = {p.name: p.version for p in pins}
    problems = [_satisfied(r, carried) for r in dpdeck_requirements()]
    return [f"dpdeck needs {p}" for p in problems if p]


def requires_dist(metadata: str) -> list[Requirement]:
    """The Requires-Dist lines of a METADATA text that apply on the GPU machine (extras left out)."""
    reqs = [Requirement(line) for line in Parser().parsestr(metadata).get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(MARKER_ENV)]


def check_closure(metadata: dict[str, str], carried: dict[str, str]) -> list[str]:
    """Every requirement of every carried distribution (name -> METADATA text) is carried or in the image."""
    problems = []
    for name, text in sorted(metadata.items()):
        for req in requires_dist(text):
            why = _satisfied(req, carried)
            if why:
                problems.append(f"{name} needs {why}")
    return problems


def wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return zf.read(member).decode()


def wheels_in(dest: Path) -> dict[str, tuple[str, Path]]:
    """canonical name -> (version, wheel file)."""
    out: dict[str, tuple[str, Path]] = {}
    for wheel in sorted(dest.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        out[canonicalize_name(name)] = (str(version), wheel)
    return out


def travelling_bytes(repo: Path = REPO) -> int:
    """What travels without carry: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    for rel in filter(None, listed):
        path = repo / os.fsdecode(rel)
        if path.is_file():
            total += path.stat().st_size
    return total


def verify(dest: Path, pins: list[Pin]) -> int:
    """The offline checks of a prepared .whl folder; returns the wheels' total size."""
    found = wheels_in(dest)
    problems = check_pins_cover_dpdeck(pins)
    for pin in pins:
        have = found.get(pin.name)
        if have is None:
            problems.append(f"{pin.spec}: no wheel in {dest}")
        elif have[0] != pin.version:
            problems.append(f"{pin.spec}: {dest} holds {have[1].name} instead")
    for name in sorted(set(found) - {p.name for p in pins}):
        problems.append(f"{found[name][1].name} in {dest} is not pinned (remove it: one version of each)")
    carried = {name: version for name, (version, _) in found.items()}
    problems += check_closure({n: wheel_metadata(w) for n, (_, w) in found.items()}, carried)
    if problems:
        raise PackError("the pack is not complete:\n  " + "\n  ".join(problems))
    return sum(w.stat().st_size for _, w in found.values())


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise PackError(f"pip failed ({done.returncode}): {' '.join(args[:3])} ... (its output is above)")


def _platform_args() -> list[str]:
    out = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp"]
    for tag in PLATFORMS:
        out += ["--platform", tag]
    return out


def prepare(dest: Path, pins: list[Pin]) -> None:
    dest.mkdir(exist_ok=True)
    wanted = {p.name: p for p in pins}
    for name, (version, wheel) in wheels_in(dest).items():
        if name not in wanted or wanted[name].version != version:
            print(f"removing {wheel.name} (not pinned at that version)")
            wheel.unlink()
    have = wheels_in(dest)
    binary = [p.spec for p in pins if not p.build and p.name not in have]
    if binary:
        _pip("download", "--no-deps", *_platform_args(), "-d", str(dest), *binary)
    for pin in pins:
        if pin.build and pin.name not in have:
            _pip("wheel", "--no-deps", "-w", str(dest), pin.spec)
    size = verify(dest, pins)
    tree = travelling_bytes()
    print(f"wheels: {len(pins)} files, {size / 2**20:.1f} MiB in {dest}")
    print(f"tree:   {tree / 2**20:.1f} MiB (tracked and untracked-not-ignored files)")
    print(f"total:  {(size + tree) / 2**20:.1f} MiB of the {TRAVEL_LIMIT // 2**20} MiB that may travel")
    check_size(size, tree)


def check_size(wheels: int, tree: int, limit: int = TRAVEL_LIMIT) -> None:
    if wheels + tree > limit:
        raise PackError(
            f"tree + wheels = {(wheels + tree) / 2**20:.1f} MiB ({tree / 2**20:.1f} + {wheels / 2**20:.1f}), over "
            f"the {limit // 2**20} MiB that travels to the GPU machine: drop a pin the image already satisfies, "
            "or remove large untracked files"
        )


def check(pins: list[Pin]) -> None:
    """Resolve every pin for the GPU machine without downloading a wheel."""
    problems = check_pins_cover_dpdeck(pins)
    if problems:
        raise PackError("\n  ".join(["the pins do not cover dpdeck:", *problems]))
    with tempfile.TemporaryDirectory() as target:
        common = ["install", "--dry-run", "--no-deps", "--ignore-installed", "--quiet", "--target", target]
        _pip(*common, *_platform_args(), *[p.spec for p in pins if not p.build])
        built = [p.spec for p in pins if p.build]
        if built:
            _pip(*common, *built)
    print(f"all {len(pins)} pins resolve for Python {PYTHON_VERSION} x86-64")


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["prepare", "check", "verify"])
    ap.add_argument("--dest", type=Path, default=REPO / ".whl", help="the wheel folder (default .whl)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        pins = read_pins()
        if args.action == "prepare":
            prepare(args.dest, pins)
        elif args.action == "check":
            check(pins)
        else:
            size = verify(args.dest, pins)
            print(f"{args.dest}: {len(pins)} wheels, {size / 2**20:.1f} MiB, complete")
    except PackError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
