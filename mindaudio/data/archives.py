"""Getting dataset archives onto disk safely: resumable download, cached MD5 check, safe tar extraction.

Nothing here knows about LibriSpeech; `mindaudio.data.librispeech` decides which archives it needs.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath
from typing import Optional, Union

from tqdm import tqdm

from mindaudio.config import UserError
from mindaudio.data.manifest import write_text_atomic

PathLike = Union[str, os.PathLike]

_CHUNK_BYTES = 1 << 20
# tarfile's extraction filters (and their error) exist from Python 3.12 and late 3.8-3.11 patches.
_HAS_TAR_FILTERS = hasattr(tarfile, "data_filter")
_TAR_FILTER_ERRORS = (tarfile.FilterError,) if _HAS_TAR_FILTERS else ()
# HTTP statuses worth retrying; anything else (404, 403, ...) will not fix itself.
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


class ArchiveError(UserError, RuntimeError):
    """A dataset archive could not be downloaded, verified or extracted."""


class ChecksumError(ArchiveError):
    """An archive's MD5 differs from the published one."""


class DownloadError(ArchiveError):
    """A download failed for good (after retries, or with a non-transient HTTP error)."""


class UnsafeArchiveError(ArchiveError):
    """A tar member would be written, or would point, outside the extraction directory."""


class TruncatedTransfer(Exception):
    """The server closed the connection before sending everything it announced."""


def file_md5(path: PathLike, progress: bool = False) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    path = Path(path)
    digest = hashlib.md5()
    with open(path, "rb") as handle, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=f"md5 {path.name}",
                                          disable=not progress, leave=False) as bar:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verification_marker(archive: PathLike) -> Path:
    """Where the result of a successful MD5 check of `archive` is cached."""
    archive = Path(archive)
    return archive.with_name(archive.name + ".md5ok")


def _stamp(path: Path, md5: str) -> dict:
    stat = path.stat()
    return {"md5": md5.lower(), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read_marker(marker: Path) -> Optional[dict]:
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def verify_archive(archive: PathLike, expected_md5: str, progress: bool = False) -> None:
    """Check `archive` against `expected_md5`, hashing it only if it changed since its last good check.

    A passed check is cached in `<archive>.md5ok` with the file's size and mtime, so a second run
    does not re-read gigabytes. Raises `ChecksumError` naming the file on a mismatch.
    """
    archive = Path(archive)
    marker = verification_marker(archive)
    if _read_marker(marker) == _stamp(archive, expected_md5):
        return
    actual = file_md5(archive, progress=progress)
    if actual != expected_md5.lower():
        marker.unlink(missing_ok=True)
        raise ChecksumError(
            f"{archive}: MD5 is {actual}, expected {expected_md5.lower()} (corrupt or incomplete archive)")
    write_text_atomic(marker, json.dumps(_stamp(archive, expected_md5)))


def set_aside(archive: PathLike) -> Path:
    """Move a rejected archive to `<archive>.corrupt` (so a next run fetches it afresh); returns the new path."""
    archive = Path(archive)
    aside = archive.with_name(archive.name + ".corrupt")
    os.replace(archive, aside)
    verification_marker(archive).unlink(missing_ok=True)
    return aside


def _content_range_start(header: Optional[str]) -> Optional[int]:
    match = re.match(r"\s*bytes\s+(\d+)-", header or "")
    return int(match.group(1)) if match else None


def fetch_resumable(url: str, part: Path, timeout: float, progress: bool, label: str) -> None:
    """Append the rest of `url` to `part` (creating it), asking only for the bytes still missing."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # We already hold every byte the server has; the MD5 check decides whether that is right.
            return
        raise
    with response:
        if offset and response.status == 206 and _content_range_start(
                response.headers.get("Content-Range")) == offset:
            mode = "ab"
        else:
            # The server ignored or mis-answered the range request: start over from the first byte.
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        with open(part, mode) as out, tqdm(total=None if expected is None else offset + expected,
                                           initial=offset, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=label,
                                           disable=not progress, leave=False) as bar:
            while True:
                # read1: whatever has arrived (up to 1 MiB), so .part always holds all received bytes.
                chunk = response.read1(_CHUNK_BYTES)
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns b"" rather than raising when a connection drops mid-body.
    if expected is not None and received < expected:
        raise TruncatedTransfer(f"connection closed after {received} of {expected} bytes")


def download_archive(url: str, destination: PathLike, expected_md5: str, *, retries: int = 5,
                     retry_delay: float = 2.0, timeout: float = 60.0, progress: bool = True) -> Path:
    """Download `url` to `destination`, resuming and retrying, and accept it only if its MD5 matches.

    Bytes go to `<destination>.part` (kept between runs, so an interrupted download resumes with an
    HTTP Range request); only a complete, verified file is renamed to `destination`. A file already
    verified is not downloaded again. A dropped connection is retried `retries` times, resuming each
    time (the first retry at once, later ones after a growing delay). On an MD5 mismatch the `.part`
    file is deleted and `ChecksumError` names the archive.
    """
    destination = Path(destination)
    if destination.exists():
        verify_archive(destination, expected_md5, progress=progress)
        return destination
    part = destination.with_name(destination.name + ".part")
    failures = 0
    while True:
        try:
            fetch_resumable(url, part, timeout, progress, destination.name)
            break
        except urllib.error.HTTPError as error:
            if error.code not in _TRANSIENT_HTTP:
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
            failure = error
        except (OSError, http.client.HTTPException, TruncatedTransfer) as error:
            failure = error
        failures += 1
        if failures > retries:
            kept = (f"{part.stat().st_size} bytes kept in {part}; run again to resume"
                    if part.exists() and part.stat().st_size else "nothing was received")
            raise DownloadError(f"{url}: gave up after {retries} retries: {failure} "
                                f"({kept})") from failure
        time.sleep(retry_delay * (failures - 1))
    actual = file_md5(part, progress=progress)
    if actual != expected_md5.lower():
        part.unlink()
        raise ChecksumError(f"{destination}: downloaded from {url} with MD5 {actual}, expected "
                            f"{expected_md5.lower()}; the corrupt download was deleted, run again to retry")
    os.replace(part, destination)  # a rename keeps size and mtime, so the cached check stays valid
    write_text_atomic(verification_marker(destination), json.dumps(_stamp(destination, expected_md5)))
    return destination


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _refuse(archive: Path, member: tarfile.TarInfo, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{archive}: refusing tar member {member.name!r}: {why}")


def check_member(archive: Path, member: tarfile.TarInfo, root: str) -> None:
    """Raise `UnsafeArchiveError` unless extracting `member` under the real directory `root` stays inside it.

    Paths are resolved with `realpath` against what is already on disk, so a link extracted
    earlier cannot be used to climb out either.
    """
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or os.path.isabs(name):
        raise _refuse(archive, member, "absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise _refuse(archive, member, "path contains '..'")
    parent = os.path.realpath(os.path.join(root, os.path.dirname(name)))
    if not _inside(parent, root):
        raise _refuse(archive, member, "its folder resolves outside the destination through a link")
    if member.issym():
        if os.path.isabs(member.linkname):
            raise _refuse(archive, member, f"symlink to absolute path {member.linkname!r}")
        if not _inside(os.path.realpath(os.path.join(parent, member.linkname)), root):
            raise _refuse(archive, member, f"symlink to {member.linkname!r} points outside the destination")
    elif member.islnk():
        link = member.linkname
        if os.path.isabs(link) or ".." in PurePosixPath(link).parts or not _inside(
                os.path.realpath(os.path.join(root, link)), root):
            raise _refuse(archive, member, f"hard link to {link!r} points outside the destination")
    elif not (member.isfile() or member.isdir()):
        raise _refuse(archive, member, "device, fifo or other special file")


def safe_extract(archive: PathLike, destination: PathLike, progress: bool = True) -> int:
    """Extract a tar archive (any compression) into `destination`; returns the number of members.

    Every member is checked before it is written: absolute paths, `..`, links pointing outside
    `destination` and special files raise `UnsafeArchiveError` naming the member. Where the Python
    has tarfile's "data" filter it is applied as well.
    """
    archive = Path(archive)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(destination)
    extract_options = {"filter": "data"} if _HAS_TAR_FILTERS else {}
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar, tqdm(unit=" files", desc=f"extract {archive.name}",
                                                       disable=not progress, leave=False) as bar:
            for member in tar:
                check_member(archive, member, root)
                try:
                    tar.extract(member, root, **extract_options)
                except _TAR_FILTER_ERRORS as error:
                    raise _refuse(archive, member, str(error)) from error
                count += 1
                bar.update(1)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        raise ArchiveError(f"{archive}: cannot extract: {error}") from error
    return count
