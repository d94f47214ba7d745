"""Checkpoints given as http(s) URLs: fetched once into a cache folder, then read from there.

The cache is `$MINDAUDIO_CACHE/checkpoints` (default `~/.cache/mindaudio/checkpoints`). A URL's
file is named after the URL's last path part plus a short hash of the whole URL, so two URLs that
end in the same name never share a file, and the next run finds it without touching the network.
Bytes arrive in `<file>.part` (kept if the transfer stops, continued with an HTTP Range request on
the next run) and are renamed into place only when complete. A lock file lets concurrent processes
(data-parallel ranks) fetch a URL once: the others wait, then read the finished file.
"""
import fcntl
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
from pathlib import Path

from mindaudio.checkpoint.errors import CheckpointDownloadError
from mindaudio.host import CACHE_ENV, user_cache_dir
_TIMEOUT_SECONDS = 60.0


def is_url(path_or_url) -> bool:
    return isinstance(path_or_url, str) and path_or_url.lower().startswith(("http://", "https://"))


def cached_path(url: str) -> Path:
    """Where `url`'s file lives in the cache: `<basename without .ckpt>-<10 hex of sha256(url)>.ckpt`."""
    name = urllib.parse.unquote(os.path.basename(urllib.parse.urlparse(url).path)) or "checkpoint.ckpt"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "checkpoint.ckpt"
    stem = name[:-len(".ckpt")] if name.lower().endswith(".ckpt") else name
    digest = hashlib.sha256(url.encode("utf-8")).hexdigest()[:10]
    # Always `.ckpt`: MindSpore reads a checkpoint only under that suffix.
    return user_cache_dir() / "checkpoints" / f"{stem}-{digest}.ckpt"


def describe_source(url: str, local: str) -> str:
    return f"downloaded from {url}; delete {local} to fetch it again"


def resolve_checkpoint(path_or_url: str, progress: bool = True) -> str:
    """A local path for a checkpoint: a path is returned unchanged; a URL is fetched into the cache
    the first time (resuming a partial download) and its cached file returned after that.

    Raises `CheckpointDownloadError` naming the URL when it cannot be fetched (HTTP error status,
    refused or dropped connection, unwritable cache)."""
    if not is_url(path_or_url):
        return path_or_url
    url = path_or_url
    target = cached_path(url)
    if target.is_file():
        return str(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_name(target.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            if not target.is_file():  # another process may have finished it while we waited
                _download(url, target, progress)
    except OSError as err:
        raise CheckpointDownloadError(f"cannot store the checkpoint of {url} in {target.parent}: "
                                      f"{err.strerror or err} (set {CACHE_ENV} to another folder)") from None
    return str(target)


def _download(url: str, target: Path, progress: bool) -> None:
    # The resumable fetch with a progress bar is the dataset downloader's; its public
    # `download_archive` insists on a published MD5, which a checkpoint URL does not come with,
    # so the fetch is used directly.
    from mindaudio.data.archives import fetch_resumable, TruncatedTransfer

    part = target.with_name(target.name + ".part")
    resumed = part.stat().st_size if part.exists() else 0
    print(f"downloading {url} to {target}" + (f" (resuming after {resumed} bytes)" if resumed else ""),
          file=sys.stderr)
    try:
        fetch_resumable(url, part, _TIMEOUT_SECONDS, progress, target.name)
    except urllib.error.HTTPError as err:
        raise CheckpointDownloadError(f"cannot download checkpoint {url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = getattr(err.reason, "strerror", None) or err.reason
        raise CheckpointDownloadError(f"cannot download checkpoint {url}: {reason}") from None
    except (TruncatedTransfer, http.client.HTTPException, OSError) as err:
        kept = part.stat().st_size if part.exists() else 0
        raise CheckpointDownloadError(f"cannot download checkpoint {url}: {err or type(err).__name__} "
                                      f"({kept} bytes kept in {part}; run again to resume)") from None
    os.replace(part, target)
