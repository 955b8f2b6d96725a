"""Upstream's requirements.txt, installed into the venv without ever touching the system's torch.

torch, torchvision and torchaudio lines are dropped (the system's CUDA build stays), and the system torch's
exact version is passed as a pip constraint, so a requirement that would need another torch fails here
instead of silently replacing it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from engine.jobs.checkout.steps import quote, run, tail

# Kept from the system interpreter, never installed by dpdeck.
SYSTEM_PACKAGES = ("torch", "torchvision", "torchaudio")
MARKER = "dpdeck-requirements.json"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def split(text: str) -> tuple[list[str], list[str]]:
    """(lines to install, requirement lines left to the system)."""
    keep: list[str] = []
    dropped: list[str] = []
    for line in text.splitlines():
        bare = line.split("#", 1)[0].strip()
        match = _NAME.match(bare) if bare and not bare.startswith("-") else None
        if match and _canon(match.group(1)) in SYSTEM_PACKAGES:
            dropped.append(bare)
            continue
        keep.append(line)
    return keep, dropped


def read(checkout: Path) -> str:
    path = checkout / "requirements.txt"
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def key(base_python: str, text: str) -> str:
    """Names the venv: the same interpreter and requirements share one (update reuses it unchanged)."""
    keep, _ = split(text)
    return hashlib.sha256(f"{base_python}\n{chr(10).join(keep)}".encode()).hexdigest()


def installed(venv: Path, sha: str) -> bool:
    try:
        data = json.loads((venv / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("sha") == sha


def install(venv: Path, python: Path, text: str, sha: str, torch: dict[str, str | None]) -> tuple[str, str]:
    """pip install the kept lines; (summary, the command) for the caller's torch check."""
    keep, dropped = split(text)
    req = venv / "dpdeck-requirements.txt"
    req.write_text("\n".join(keep) + "\n", encoding="utf-8")
    argv = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(req)]
    if torch["version"]:
        constraints = venv / "dpdeck-constraints.txt"
        constraints.write_text(f"torch=={torch['version']}\n", encoding="utf-8")
        argv += ["-c", str(constraints)]
    out = run(
        4, argv, what="pip install -r requirements.txt",
        fix="see pip's message above: a package missing from the index or a wheel that needs building "
        "(install its build tools, or carry the wheel and set PIP_FIND_LINKS); the checkout that was in "
        "use stays configured; run the same command again to resume",
        timeout=7200,
    )
    (venv / MARKER).write_text(json.dumps({"sha": sha, "dropped": dropped}) + "\n", encoding="utf-8")
    note = f"left to the system: {', '.join(dropped)}" if dropped else "no torch pins to leave out"
    lines = [ln for ln in tail(out, 200).splitlines() if ln.startswith("Successfully installed")]
    return (f"{lines[-1] if lines else 'all requirements already satisfied'}; {note}", quote(argv))
