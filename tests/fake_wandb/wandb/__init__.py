"""A stand-in for the `wandb` package, for the fake train.py: records what it was given, sends nothing.

`login(key=...)` behaves as wandb 0.31's does for the key: an explicit non-empty key is used, an empty one falls
back to the WANDB_API_KEY environment variable (wandb/sdk/wandb_login.py `_login`: `if key:` ... else
`_find_or_prompt_for_key` -> wbauth/authenticate.py `_try_env_auth`). Each call appends one JSON line to the
file named by FAKE_WANDB_RECORD.
"""

from __future__ import annotations

import json
import os
from typing import Any


def _record(event: str, **fields: Any) -> None:
    path = os.environ.get("FAKE_WANDB_RECORD")
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"event": event, **fields}, default=str) + "\n")


def login(key: str | None = None, **_: Any) -> bool:
    used = key if key else os.environ.get("WANDB_API_KEY")
    _record("login", explicit=bool(key), key=used)
    return bool(used)


def init(**kwargs: Any) -> None:
    monitoring = (kwargs.get("config") or {}).get("monitoring", {})
    _record("init", project=kwargs.get("project"), name=kwargs.get("name"),
            config_key=monitoring.get("wandb_api_key"))


def log(data: dict[str, Any]) -> None:
    _record("log", data=data)
