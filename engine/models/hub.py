"""The Hub, through huggingface_hub: repo listings, file metadata (size, commit, sha256) and errors turned
into messages a user can act on. HF_ENDPOINT is read on every call so mirrors (and tests) work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.models.errors import DownloadError
from engine.models.settings import hub_endpoint
from statefiles.paths import subdir

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
GIT_SHA1_RE = re.compile(r"^[0-9a-f]{40}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def token_path(download_id: str) -> Path:
    """The HF token of the client that asked for the download (0600, beside its state in the downloads folder,
    removed when it ends): the daemon that runs the worker holds no credentials of its own."""
    return subdir("downloads") / f"{download_id}.token"


def hf_token() -> str | None:
    """The HF token: in a download worker the token its client handed over, then dpdeck's secrets store
    (it also reads HF_TOKEN), else the environment.

    Never logged or printed; passed only to huggingface_hub for the Authorization header.
    """
    serving = os.environ.get("DPDECK_DOWNLOAD")
    if serving:
        try:
            handed = token_path(serving).read_text(encoding="utf-8").strip()
        except (OSError, ValueError):
            handed = ""
        if handed:
            return handed
    try:
        from profiles.secrets import get_secret
    except ImportError:
        get_secret = None  # type: ignore[assignment]
    if get_secret is not None:
        try:
            value = get_secret("hf_token")
        except Exception:  # an unsafe secrets file is reported by `dpdeck secrets`, not here
            value = None
        if value:
            return value
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def check_repo_id(repo: str) -> str:
    if not REPO_RE.match(repo) or ".." in repo or repo.endswith((".", "-")):
        raise DownloadError(f"{repo!r} is not a Hub repo id: expected OWNER/NAME (e.g. black-forest-labs/FLUX.1-schnell)",
                            "bad_repo_id")
    return repo


def check_repo_path(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise DownloadError(f"{path!r} is not a file path inside a repo", "bad_path")
    return path


@dataclass
class RemoteFile:
    path: str
    size: int | None
    sha256: str | None  # LFS files: the published sha256 of the content
    git_oid: str | None = None  # small (non-LFS) files: git blob sha1


def translate(exc: BaseException, repo: str, path: str | None = None, revision: str = "main") -> DownloadError:
    """huggingface_hub / network exceptions -> one specific, actionable DownloadError."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint = hub_endpoint()
    if isinstance(exc, GatedRepoError):
        status = exc.response.status_code if exc.response is not None else None
        page = f"{endpoint}/{repo}"
        if status == 401 or not hf_token():
            return DownloadError(
                f"{repo} is a gated repo and no valid HF token was sent: accept its licence at {page}, then store "
                "a read token with `dpdeck secrets set hf_token` (or export HF_TOKEN)", "gated_no_token")
        return DownloadError(
            f"{repo} is a gated repo and your HF token has no access to it (403): accept the licence at {page} "
            "with the account that owns the token, or wait for the authors to approve your request",
            "gated_no_access")
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(f"{repo}: revision {revision!r} does not exist", "revision_not_found")
    if isinstance(exc, EntryNotFoundError):
        return DownloadError(f"{repo}: file {path!r} is not in the repo (revision {revision})", "file_not_found")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(
            f"{repo}: repository not found on {endpoint} (check the spelling; a private repo also needs a token "
            "with access)", "repo_not_found")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 403:
            return DownloadError(f"{repo}: access forbidden (403) for {path or 'the repo'}", "forbidden")
        return DownloadError(f"{repo}: the Hub answered HTTP {status} for {path or 'the repo'}", f"http_{status}")
    import httpx2

    if isinstance(exc, httpx2.ConnectError):
        return DownloadError(f"cannot reach {endpoint}: {exc} (no network? set HF_ENDPOINT for a mirror)", "offline")
    if isinstance(exc, httpx2.TimeoutException):
        return DownloadError(f"{endpoint} did not answer in time ({type(exc).__name__})", "timeout")
    return DownloadError(f"{repo}: {type(exc).__name__}: {exc}", "error")


def list_repo_files(repo: str, revision: str = "main") -> tuple[str | None, list[RemoteFile]]:
    """(commit sha, files with size and sha256) from the model-info endpoint."""
    from huggingface_hub import HfApi

    check_repo_id(repo)
    api = HfApi(endpoint=hub_endpoint())
    try:
        info = api.model_info(repo, revision=revision, files_metadata=True, token=hf_token())
    except Exception as exc:
        raise translate(exc, repo, None, revision) from exc
    files = []
    for s in info.siblings or []:
        sha = s.lfs.sha256 if s.lfs else None
        files.append(RemoteFile(path=s.rfilename, size=s.size, sha256=sha, git_oid=None if s.lfs else s.blob_id))
    return info.sha, files


@dataclass
class FileMeta:
    url: str  # where to GET the bytes (after Hub redirects)
    size: int | None
    commit: str | None
    etag: str | None
    same_host: bool
    # Xet-backed files (X-Xet-Hash + the xet-auth link of the HEAD answer): what hf_xet needs to move the bytes.
    xet_hash: str | None = None
    xet_refresh: str | None = None

    @property
    def sha256(self) -> str | None:
        return self.etag if self.etag and SHA256_RE.match(self.etag) else None

    @property
    def git_oid(self) -> str | None:
        return self.etag if self.etag and GIT_SHA1_RE.match(self.etag) else None


def file_metadata(repo: str, path: str, revision: str = "main", *, retry: bool = True) -> FileMeta:
    """HEAD the resolve URL: access check (gated, missing), size, commit and ETag (sha256 for LFS files).

    `retry=False` for checks a user waits on: an offline box should hear so at once, not after ~25 s of
    huggingface_hub's backoff; the worker retries (it has time and its own loop).
    """
    from urllib.parse import urlparse

    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    check_repo_id(repo)
    check_repo_path(path)
    endpoint = hub_endpoint()
    url = hf_hub_url(repo, path, revision=revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, token=hf_token(), endpoint=endpoint, retry_on_errors=retry)
    except Exception as exc:
        raise translate(exc, repo, path, revision) from exc
    location = meta.location or url
    same = urlparse(location).netloc == urlparse(url).netloc
    xet = getattr(meta, "xet_file_data", None)
    return FileMeta(url=location, size=meta.size, commit=meta.commit_hash, etag=meta.etag, same_host=same,
                    xet_hash=xet.file_hash if xet else None, xet_refresh=xet.refresh_route if xet else None)
