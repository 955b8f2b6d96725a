"""Xet-backed files through huggingface_hub's xet transfer (the hf_xet package).

Most large files on the Hub are stored in xet: the HEAD of `resolve/` says so (X-Xet-Hash and a `xet-auth`
link, which huggingface_hub parses into `xet_file_data`), and its 302 points at a bridge that serves the same
bytes as one plain HTTP stream. hf_xet instead asks the CAS how the file is cut into chunks and fetches them
in many parallel ranges.

dpdeck keeps its own transfer around it: hf_xet's ordered stream (`download_stream`, with `start=` for a
resume) hands over the bytes in file order, and the worker writes them into its own partial file, hashes
them with its own sha256 (checked against the Hub's X-Linked-Etag, as for any LFS file), reports progress
and honours cancel between chunks, under the same queue, retries and `[models] max_downloads`.
huggingface_hub provides the session (one per process, fork-safe) and the CAS token (the xet-read-token
route, cached; hf_xet refreshes it through the same route during a long transfer).

What hf_xet cannot do here (not installed, HF_HUB_DISABLE_XET=1, an hf_xet without the stream API, a CAS or
token error, a stream that ends short) raises XetUnavailable, and the worker carries on over HTTP from the
bridge URL, from the byte where xet stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any


class XetUnavailable(Exception):
    """hf_xet cannot move this file; the message says why. The caller falls back to HTTP."""


def unavailable_reason() -> str | None:
    """None when the xet transfer can be used, else why not (for the worker's log)."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils._runtime import is_package_available
    except ImportError as exc:
        return f"huggingface_hub has moved its xet helpers ({exc})"
    if constants.HF_HUB_DISABLE_XET:
        return "HF_HUB_DISABLE_XET is set"
    if not is_package_available("hf_xet"):
        return "hf_xet is not installed"
    try:
        import hf_xet
    except ImportError as exc:
        return f"hf_xet does not import ({exc})"
    if not hasattr(hf_xet, "XetDownloadStreamGroup"):
        return "this hf_xet has no ordered download stream (hf_xet >= 1.8 has)"
    return None


# One stream group per (token route, Hub auth): it holds the CAS connection pool and the token, so the files
# of one folder download share them instead of fetching a token and connecting once per file.
_GROUPS: dict[tuple[str, str], Any] = {}
_GROUPS_LOCK = threading.Lock()


def _group(xet_hash: str, refresh_route: str, headers: dict[str, str]) -> Any:
    from huggingface_hub.utils._xet import (
        XetFileData,
        get_xet_session,
        refresh_xet_connection_info,
        xet_headers_without_auth,
    )

    key = (refresh_route, headers.get("authorization", headers.get("Authorization", "")))
    with _GROUPS_LOCK:
        if key in _GROUPS:
            return _GROUPS[key]
        # The Hub token goes to the token route only (a Hub URL); the CAS gets the short-lived xet token.
        info = refresh_xet_connection_info(file_data=XetFileData(file_hash=xet_hash, refresh_route=refresh_route),
                                           headers=headers)
        group = get_xet_session().new_download_stream_group(
            endpoint=info.endpoint, token=info.access_token, token_expiry_unix_secs=info.expiration_unix_epoch,
            token_refresh_url=refresh_route, token_refresh_headers=headers,
            custom_headers=xet_headers_without_auth(headers))
        _GROUPS[key] = group
        return group


class XetStream:
    """The bytes of one file from `offset`, in order. Iterate for chunks (bytes); `close()` stops the transfer.

    Every hf_xet failure surfaces as XetUnavailable. `should_stop` is polled on a watcher thread every
    quarter second and cancels the stream, so a cancel is honoured even while a chunk is slow to come.
    """

    def __init__(self, xet_hash: str, refresh_route: str, size: int | None, offset: int, token: str | None,
                 should_stop: Callable[[], bool]):
        why = unavailable_reason()
        if why is not None:
            raise XetUnavailable(why)
        from hf_xet import XetFileInfo
        from huggingface_hub.utils import build_hf_headers

        try:
            group = _group(xet_hash, refresh_route, build_hf_headers(token=token))
            info = XetFileInfo(xet_hash, size) if size is not None else XetFileInfo(xet_hash)
            self._stream = group.download_stream(info, start=offset or None)
        except Exception as exc:  # token route, CAS handshake, unknown hash: all mean "use HTTP"
            raise XetUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self._done = threading.Event()
        self._watch = threading.Thread(target=self._watch_stop, args=(should_stop,), daemon=True)
        self._watch.start()

    def _watch_stop(self, should_stop: Callable[[], bool]) -> None:
        while not self._done.wait(0.25):
            if should_stop():
                self._stream.cancel()
                return

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = next(self._stream)
            except StopIteration:
                return
            except Exception as exc:
                raise XetUnavailable(f"{type(exc).__name__}: {exc}") from exc
            if chunk:
                yield chunk

    def close(self) -> None:
        self._done.set()
        try:
            self._stream.cancel()
        except Exception:  # already finished or cancelled: nothing to stop
            pass

    def __enter__(self) -> XetStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
