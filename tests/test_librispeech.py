"""LibriSpeech preparer: real archives built from the bundled sample, served over a real local HTTP server."""
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from file_server import FileServer
from mindaudio.data.archives import (ChecksumError, UnsafeArchiveError, check_member, download_archive,
                                     safe_extract, verification_marker, verify_archive)
from mindaudio.data.librispeech import (ARCHIVES, PreparationError, conversion_record, disk_space_needed,
                                        extracted_utterances, main, parse_bool,
                                        prepare_librispeech)

REAL_SUBSETS = ("test-clean", "dev-clean", "train-clean-100")
# The sample has no utterances of these subsets: each gets one real recording under a new id, so
# every split can be prepared and the multi-archive splits really merge several subsets.
SYNTHETIC_SUBSETS = {"dev-other": "9001-1", "test-other": "9002-1", "train-clean-360": "9003-1",
                     "train-other-500": "9004-1"}
NOWHERE = "http://127.0.0.1:9"  # nothing listens there: any download attempt fails loudly
MIRROR_PATH = "/resources/12"  # the archives' URL path on www.openslr.org, and on the local server


# --------------------------------------------------------------------------------------------
# Fixtures: a LibriSpeech/ tree, its seven archives, an HTTP server

def _read_trans(tree: Path):
    """{utt-id: (text, flac path)} straight from the trans.txt files of an extracted tree."""
    found = {}
    for trans in tree.rglob("*.trans.txt"):
        for line in trans.read_text().splitlines():
            uid, text = line.split(" ", 1)
            found[uid] = (text, trans.parent / f"{uid}.flac")
    return found


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, librispeech_mini):
    """A `LibriSpeech/` tree holding all seven subsets (three real, four with one borrowed recording)."""
    tree = tmp_path_factory.mktemp("corpus") / "LibriSpeech"
    for subset in REAL_SUBSETS:
        shutil.copytree(librispeech_mini / subset, tree / subset)
    donor_text, donor_flac = next(iter(sorted(_read_trans(librispeech_mini / "dev-clean").values())))
    for subset, chapter in SYNTHETIC_SUBSETS.items():
        speaker, book = chapter.split("-")
        folder = tree / subset / speaker / book
        folder.mkdir(parents=True)
        shutil.copy(donor_flac, folder / f"{chapter}-0000.flac")
        (folder / f"{chapter}.trans.txt").write_text(f"{chapter}-0000 {donor_text}\n")
    return tree


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archives(tmp_path_factory, corpus):
    """(folder with the seven `<subset>.tar.gz`, {archive name: md5})."""
    folder = tmp_path_factory.mktemp("archives")
    for archive in ARCHIVES:
        with tarfile.open(folder / archive.name, "w:gz") as tar:
            tar.add(corpus / archive.subset, arcname=f"LibriSpeech/{archive.subset}")
    return folder, {archive.name: _md5(folder / archive.name) for archive in ARCHIVES}


@pytest.fixture
def server(tmp_path, archives):
    """A FileServer serving a copy of the seven archives (a test may rewrite one) at MIRROR_PATH."""
    folder = tmp_path / "served"
    shutil.copytree(archives[0], folder)
    served = FileServer(folder=folder, folder_url=MIRROR_PATH)
    yield served
    served.stop()


def served_at(name: str) -> str:
    """The URL path the server records for a request of archive `name`."""
    return f"{MIRROR_PATH}/{name}"


# --------------------------------------------------------------------------------------------
# Checking a prepared split against the source tree, independently of the code under test

EXPECTED_SUBSETS = {"train": ["train-clean-100", "train-clean-360", "train-other-500"],
                    "val": ["dev-clean", "dev-other"], "test_clean": ["test-clean"],
                    "test_other": ["test-other"]}


def check_split(root: Path, split: str, corpus: Path, skip=()):
    expected = {}
    for subset in EXPECTED_SUBSETS[split]:
        expected.update(_read_trans(corpus / subset))
    for uid in skip:
        expected.pop(uid)
    split_dir = root / split
    manifest = json.loads((split_dir / f"libri_{split}_manifest.json").read_text())
    assert manifest["root_path"] == str(split_dir.resolve())
    ids = [Path(sample["wav_path"]).stem for sample in manifest["samples"]]
    assert ids == sorted(expected)
    for sample, uid in zip(manifest["samples"], ids):
        assert sample["wav_path"] == f"wav/{uid}.wav" and sample["txt_path"] == f"txt/{uid}.txt"
        text, flac = expected[uid]
        assert (split_dir / sample["txt_path"]).read_text() == text
        wav_path = split_dir / sample["wav_path"]
        info = sf.info(str(wav_path))
        assert (info.format, info.subtype, info.samplerate, info.channels) == ("WAV", "PCM_16", 16000, 1)
        reference, rate = sf.read(str(flac), dtype="int16")
        assert rate == 16000
        written, _ = sf.read(str(wav_path), dtype="int16")
        np.testing.assert_array_equal(written, reference)
        assert sample["duration"] == pytest.approx(len(reference) / 16000, abs=1e-9)
        assert isinstance(sample["duration"], float)
    return manifest


def snapshot(root: Path):
    """{relative path: (mtime_ns, size)} of every file and folder under root."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            stat = path.lstat()
            found[str(path.relative_to(root))] = (stat.st_mtime_ns, stat.st_size)
    return found


# --------------------------------------------------------------------------------------------
# Download

def test_download_resumes_after_dropped_connection(tmp_path, server, archives):
    name = "test-clean.tar.gz"
    size = (archives[0] / name).stat().st_size
    server.drop_after[served_at(name)] = size // 2
    path = download_archive(server.url(served_at(name)), tmp_path / name, archives[1][name],
                            retries=2, retry_delay=0, progress=False)
    assert path.read_bytes() == (archives[0] / name).read_bytes()
    assert server.requests == [(served_at(name), None), (served_at(name), f"bytes={size // 2}-")]
    assert not (tmp_path / f"{name}.part").exists()
    assert json.loads(verification_marker(path).read_text())["md5"] == archives[1][name]


def test_corrupt_download_is_rejected_then_fetched_again(tmp_path, server, archives):
    name = "test-clean.tar.gz"
    good = (archives[0] / name).read_bytes()
    corrupted = bytearray(good)
    corrupted[len(good) // 2] ^= 0xFF
    (server.folder / name).write_bytes(bytes(corrupted))
    target = tmp_path / "downloads"
    target.mkdir()
    with pytest.raises(ChecksumError, match=name):
        download_archive(server.url(served_at(name)), target / name, archives[1][name], progress=False)
    assert list(target.iterdir()) == []  # neither the archive nor the .part is kept
    (server.folder / name).write_bytes(good)
    download_archive(server.url(served_at(name)), target / name, archives[1][name], progress=False)
    assert (target / name).read_bytes() == good


def test_download_gives_up_on_missing_file(tmp_path, server):
    with pytest.raises(Exception, match="404"):
        download_archive(server.url(served_at("nope.tar.gz")), tmp_path / "nope.tar.gz", "0" * 32,
                         progress=False)


def test_verification_is_cached_by_size_and_mtime(tmp_path, archives):
    name = "dev-clean.tar.gz"
    path = tmp_path / name
    shutil.copy(archives[0] / name, path)
    verify_archive(path, archives[1][name])
    stat = path.stat()
    # Same size and mtime but different bytes: a cached check must not re-read the file ...
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    verify_archive(path, archives[1][name])
    # ... while any change of mtime makes it hash again and notice.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ChecksumError, match=name):
        verify_archive(path, archives[1][name])
    assert not verification_marker(path).exists()


# --------------------------------------------------------------------------------------------
# Whole preparation

def test_prepare_over_http_then_second_run_changes_nothing(tmp_path, server, archives, corpus, capsys):
    root = tmp_path / "data"
    dropped = served_at("dev-clean.tar.gz")
    server.drop_after[dropped] = (archives[0] / "dev-clean.tar.gz").stat().st_size // 2
    summary = prepare_librispeech(root, splits=["test_clean", "val"], workers=2,
                                  base_url=server.url(MIRROR_PATH), archive_md5s=archives[1], progress=False)
    # Only the archives of the requested splits, and the dropped one resumed.
    fetched = [path for path, _ in server.requests]
    assert sorted(set(fetched)) == [served_at(name) for name in
                                    ("dev-clean.tar.gz", "dev-other.tar.gz", "test-clean.tar.gz")]
    assert (dropped, None) in server.requests
    assert any(path == dropped and rng and rng != "bytes=0-" for path, rng in server.requests)
    for split in ("test_clean", "val"):
        check_split(root, split, corpus)
    assert summary.problems == []
    assert [s.utterances for s in summary.splits] == [6, 8]
    assert summary.utterances == 14 and summary.splits[1].converted == 8
    assert "test_clean: 6 utterances" in capsys.readouterr().out

    before = snapshot(root)
    server.requests.clear()
    again = prepare_librispeech(root, splits=["test_clean", "val"], workers=2,
                                base_url=server.url(MIRROR_PATH), archive_md5s=archives[1], progress=False)
    assert server.requests == []
    assert snapshot(root) == before
    assert [s.converted for s in again.splits] == [0, 0]
    assert again.utterances == summary.utterances
    assert again.audio_seconds == pytest.approx(summary.audio_seconds)


def test_data_ready_with_archives_prepares_all_splits(tmp_path, archives, corpus):
    root = tmp_path / "data"
    shutil.copytree(archives[0], root)
    summary = prepare_librispeech(root, data_ready=True, workers=1, base_url=NOWHERE,
                                  archive_md5s=archives[1], progress=False, verbose=False)
    assert [s.split for s in summary.splits] == ["train", "val", "test_clean", "test_other"]
    for split in EXPECTED_SUBSETS:
        check_split(root, split, corpus)
    assert [s.utterances for s in summary.splits] == [3, 8, 6, 1]

    before = snapshot(root)
    prepare_librispeech(root, data_ready=True, workers=1, base_url=NOWHERE, archive_md5s=archives[1],
                        progress=False, verbose=False)
    assert snapshot(root) == before


def test_data_ready_with_extracted_tree(tmp_path, corpus):
    root = tmp_path / "data"
    shutil.copytree(corpus, root / "LibriSpeech")
    prepare_librispeech(root, splits=["test_clean", "train"], data_ready=True, workers=1,
                        base_url=NOWHERE, progress=False, verbose=False)
    check_split(root, "test_clean", corpus)
    check_split(root, "train", corpus)
    assert not (root / "val").exists()


def test_data_ready_names_every_missing_input(tmp_path, corpus):
    root = tmp_path / "data"
    shutil.copytree(corpus / "dev-clean", root / "LibriSpeech" / "dev-clean")
    with pytest.raises(PreparationError) as raised:
        prepare_librispeech(root, splits=["val", "test_other"], data_ready=True, base_url=NOWHERE,
                            progress=False, verbose=False)
    message = str(raised.value)
    assert "dev-other.tar.gz" in message and "LibriSpeech/dev-other" in message
    assert "test-other.tar.gz" in message
    assert "dev-clean" not in message
    assert not (root / "val").exists()


def test_corrupt_archive_in_root_is_set_aside(tmp_path, archives):
    root = tmp_path / "data"
    root.mkdir()
    name = "test-clean.tar.gz"
    data = bytearray((archives[0] / name).read_bytes())
    data[100] ^= 0x01
    (root / name).write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=name):
        prepare_librispeech(root, splits=["test_clean"], data_ready=True, archive_md5s=archives[1],
                            base_url=NOWHERE, progress=False, verbose=False)
    assert not (root / name).exists()
    assert (root / f"{name}.corrupt").read_bytes() == bytes(data)
    assert not (root / "LibriSpeech").exists()


def test_bad_audio_and_unpaired_transcripts_are_reported(tmp_path, corpus, capsys):
    root = tmp_path / "data"
    subset = root / "LibriSpeech" / "test-clean"
    shutil.copytree(corpus / "test-clean", subset)
    chapter = subset / "1089" / "134686"
    truncated = chapter / "1089-134686-0001.flac"
    truncated.write_bytes(truncated.read_bytes()[:5000])
    garbage = chapter / "1089-134686-0002.flac"
    garbage.write_bytes(b"not a flac file " * 500)
    trans = chapter / "1089-134686.trans.txt"
    trans.write_text(trans.read_text() + "1089-134686-0099 A LINE WITH NO RECORDING\n")
    orphan = chapter / "1089-134686-0050.flac"
    shutil.copy(chapter / "1089-134686-0000.flac", orphan)

    summary = prepare_librispeech(root, splits=["test_clean"], data_ready=True, workers=2,
                                  base_url=NOWHERE, progress=False)
    problems = {(p.kind, Path(p.path).name) for p in summary.problems}
    assert problems == {("unreadable audio", truncated.name), ("unreadable audio", garbage.name),
                        ("transcript without audio", trans.name),
                        ("audio without transcript", orphan.name)}
    assert any("1089-134686-0099" in p.detail for p in summary.problems)
    check_split(root, "test_clean", corpus, skip=["1089-134686-0001", "1089-134686-0002"])
    assert summary.utterances == 4
    out = capsys.readouterr().out
    assert "problems: 4" in out
    for path in (truncated, garbage, trans, orphan):
        assert str(path) in out
    assert sorted(p.name for p in (root / "test_clean" / "wav").iterdir()) == [
        "1089-134686-0000.wav", "1089-134686-0037.wav", "1089-134691-0000.wav", "1089-134691-0001.wav"]


def test_extracted_tree_is_read_in_place_and_unpaired_audio_is_refused(tmp_path, librispeech_mini):
    expected = _read_trans(librispeech_mini)
    assert [(u.id, u.transcript, Path(u.audio_path)) for u in extracted_utterances(librispeech_mini)] == [
        (uid, *expected[uid]) for uid in sorted(expected)]
    assert [u.id for u in extracted_utterances(librispeech_mini, ["dev-clean"])] == sorted(
        _read_trans(librispeech_mini / "dev-clean"))
    tree = tmp_path / "LibriSpeech"
    shutil.copytree(librispeech_mini / "test-clean", tree / "test-clean")
    chapter = tree / "test-clean" / "1089" / "134686"
    shutil.copy(chapter / "1089-134686-0000.flac", chapter / "1089-134686-0099.flac")
    with pytest.raises(PreparationError, match="audio without transcript.*1089-134686-0099"):
        extracted_utterances(tree)
    with pytest.raises(PreparationError, match="no extracted LibriSpeech tree"):
        extracted_utterances(tmp_path / "absent")


def test_resamples_and_downmixes_other_input(tmp_path, digits_corpus, corpus):
    root = tmp_path / "data"
    chapter = root / "LibriSpeech" / "test-other" / "7" / "1"
    chapter.mkdir(parents=True)
    digit_path = sorted((digits_corpus / "recordings").glob("*.flac"))[0]
    digit, digit_rate = sf.read(str(digit_path), dtype="int16")
    assert digit_rate == 8000
    sf.write(str(chapter / "7-1-0000.flac"), digit, 8000, subtype="PCM_16")
    speech, _ = sf.read(str(next((corpus / "test-clean").rglob("*.flac"))), dtype="int16")
    stereo = np.stack([speech, (speech // 2)], axis=1)
    sf.write(str(chapter / "7-1-0001.flac"), stereo, 16000, subtype="PCM_16")
    (chapter / "7-1.trans.txt").write_text("7-1-0000 ZERO\n7-1-0001 STEREO SPEECH\n")

    summary = prepare_librispeech(root, splits=["test_other"], data_ready=True, workers=1,
                                  base_url=NOWHERE, progress=False, verbose=False)
    assert summary.problems == []
    upsampled, rate = sf.read(str(root / "test_other" / "wav" / "7-1-0000.wav"), dtype="int16")
    assert rate == 16000 and upsampled.ndim == 1
    reference = resample_poly(digit.astype(np.float64), 2, 1)
    assert abs(len(upsampled) - len(reference)) <= 2
    n = min(len(upsampled), len(reference))
    assert np.corrcoef(upsampled[:n], reference[:n])[0, 1] > 0.99
    manifest = json.loads((root / "test_other" / "libri_test_other_manifest.json").read_text())
    assert manifest["samples"][0]["duration"] == pytest.approx(len(digit) / 8000, abs=2e-4)
    mono, _ = sf.read(str(root / "test_other" / "wav" / "7-1-0001.wav"), dtype="int16")
    expected = np.round((stereo[:, 0].astype(np.float64) + stereo[:, 1]) / 2)
    np.testing.assert_array_equal(mono, expected.astype(np.int16))


# --------------------------------------------------------------------------------------------
# Interruptions

def test_interrupted_extraction_and_conversion_resume(tmp_path, archives, corpus):
    """The state a `kill -9` can leave: no extraction marker, a damaged extracted file, a half
    written temporary WAV, missing WAVs and manifest. A rerun repairs all of it."""
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archives[0] / "test-clean.tar.gz", root)
    prepare_librispeech(root, splits=["test_clean"], data_ready=True, workers=1, base_url=NOWHERE,
                        archive_md5s=archives[1], progress=False, verbose=False, keep_flac=True)
    # Killed before the subset's WAVs were all checked: no conversion record, FLAC still there.
    conversion_record(root / "LibriSpeech" / "test-clean").unlink()
    (root / "LibriSpeech" / ".test-clean.extracted").unlink()
    damaged = next((root / "LibriSpeech" / "test-clean").rglob("*.flac"))
    damaged.write_bytes(damaged.read_bytes()[:1000])
    wav_dir = root / "test_clean" / "wav"
    (wav_dir / f"{damaged.stem}.wav").unlink()
    (wav_dir / "1089-134691-0001.wav").unlink()
    (wav_dir / ".1089-134691-0001.wav.tmp").write_bytes(b"RIFF half a file")
    (root / "test_clean" / "libri_test_clean_manifest.json").unlink()

    summary = prepare_librispeech(root, splits=["test_clean"], data_ready=True, workers=1,
                                  base_url=NOWHERE, archive_md5s=archives[1], progress=False,
                                  verbose=False)
    assert summary.problems == [] and summary.splits[0].converted == 2
    check_split(root, "test_clean", corpus)
    assert not list(wav_dir.glob(".*"))


def _wait_for(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_download_killed_with_sigkill_resumes(tmp_path, server, archives, corpus, repo_root):
    name = "test-clean.tar.gz"
    size = (archives[0] / name).stat().st_size
    part = tmp_path / "data" / f"{name}.part"
    server.stall_after[served_at(name)] = size // 2
    process = subprocess.Popen(
        [sys.executable, "mindaudio/data/librispeech.py", "--root_path", str(tmp_path / "data"),
         "--splits", "test_clean", "--base_url", server.url(MIRROR_PATH), "--workers", "1"],
        cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: part.exists() and part.stat().st_size == size // 2)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    server.stall_after.clear()
    server.requests.clear()
    prepare_librispeech(tmp_path / "data", splits=["test_clean"], workers=1, base_url=server.url(MIRROR_PATH),
                        archive_md5s=archives[1], progress=False, verbose=False)
    assert server.requests == [(served_at(name), f"bytes={size // 2}-")]
    check_split(tmp_path / "data", "test_clean", corpus)


# --------------------------------------------------------------------------------------------
# Safe extraction

def _tar_with(path: Path, build):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("LibriSpeech/test-clean/ok.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"ok"))
        build(tar)
    return path


def _file(name):
    def build(tar):
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return build


def _link(name, target, kind=tarfile.SYMTYPE, then_file=None):
    def build(tar):
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = target
        tar.addfile(info)
        if then_file:
            _file(then_file)(tar)
    return build


def _link_chain(tar):
    # Each target alone looks inside, but the second is resolved through the first link: really
    # LibriSpeech/a/here -> LibriSpeech, so here/../.. is the folder above the destination.
    _link("LibriSpeech/a/here", "..")(tar)
    _link("LibriSpeech/a/up", "here/../..")(tar)


MALICIOUS = [
    ("/tmp/evil-absolute.txt", _file("/tmp/evil-absolute.txt")),
    ("LibriSpeech/../../evil.txt", _file("LibriSpeech/../../evil.txt")),
    ("LibriSpeech/abs-link", _link("LibriSpeech/abs-link", "/tmp")),
    ("LibriSpeech/rel-link", _link("LibriSpeech/rel-link", "../../outside", then_file="LibriSpeech/rel-link/x")),
    ("LibriSpeech/hard", _link("LibriSpeech/hard", "../outside/file", kind=tarfile.LNKTYPE)),
    ("LibriSpeech/a/up", _link_chain),
]
MALICIOUS_IDS = ["absolute", "dotdot", "symlink-absolute", "symlink-outside", "hardlink-outside", "link-chain"]


@pytest.mark.parametrize("member, build", MALICIOUS, ids=MALICIOUS_IDS)
def test_malicious_tar_members_are_refused(tmp_path, member, build):
    (tmp_path / "outside").mkdir()
    archive = _tar_with(tmp_path / "evil.tar.gz", build)
    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, tmp_path / "dest", progress=False)
    assert repr(member) in str(raised.value) and "evil.tar.gz" in str(raised.value)
    assert list((tmp_path / "outside").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "evil.tar.gz", "outside"]
    assert not Path("/tmp/evil-absolute.txt").exists()


@pytest.mark.parametrize("member, build", MALICIOUS, ids=MALICIOUS_IDS)
def test_own_member_check_refuses_without_tarfile_filter(tmp_path, member, build):
    """The same members, checked by our own code alone (tarfile's "data" filter is only in newer Pythons)."""
    archive = _tar_with(tmp_path / "evil.tar.gz", build)
    root = tmp_path / "dest"
    (root / "LibriSpeech" / "a").mkdir(parents=True)
    os.symlink("..", root / "LibriSpeech" / "a" / "here")  # what the link-chain's first member makes
    with tarfile.open(archive) as tar:
        infos = {info.name: info for info in tar.getmembers()}
    check_member(archive, infos["LibriSpeech/test-clean/ok.txt"], str(root.resolve()))
    with pytest.raises(UnsafeArchiveError, match="refusing tar member"):
        check_member(archive, infos[member], str(root.resolve()))


def test_links_inside_the_destination_are_extracted(tmp_path):
    archive = _tar_with(tmp_path / "fine.tar.gz", _link("LibriSpeech/alias.txt", "test-clean/ok.txt"))
    assert safe_extract(archive, tmp_path / "dest", progress=False) == 2
    assert (tmp_path / "dest" / "LibriSpeech" / "alias.txt").read_text() == "ok"


def test_malicious_archive_stops_preparation(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    archive = _tar_with(root / "test-clean.tar.gz", _link("LibriSpeech/test-clean/up", "/etc"))
    with pytest.raises(UnsafeArchiveError, match="LibriSpeech/test-clean/up"):
        prepare_librispeech(root, splits=["test_clean"], data_ready=True, base_url=NOWHERE,
                            archive_md5s={"test-clean.tar.gz": _md5(archive)}, progress=False,
                            verbose=False)
    assert not (root / "LibriSpeech" / ".test-clean.extracted").exists()
    assert not (root / "test_clean").exists()


# --------------------------------------------------------------------------------------------
# Command line

def test_cli_from_repo_root(tmp_path, corpus, repo_root):
    root = tmp_path / "data"
    shutil.copytree(corpus / "test-clean", root / "LibriSpeech" / "test-clean")
    done = subprocess.run(
        [sys.executable, "mindaudio/data/librispeech.py", "--root_path", str(root), "--data_ready", "True",
         "--splits", "test_clean"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "test_clean: 6 utterances" in done.stdout
    check_split(root, "test_clean", corpus)

    missing = subprocess.run(
        [sys.executable, "mindaudio/data/librispeech.py", "--root_path", str(root), "--data_ready", "true",
         "--splits", "test_other"], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "test-other.tar.gz" in missing.stderr


def test_main_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["--root_path", str(tmp_path), "--data_ready", "maybe"])
    assert raised.value.code == 2
    assert main(["--root_path", str(tmp_path), "--data_ready", "True", "--splits", "dev"]) == 2
    assert "unknown split 'dev'" in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("True", True), ("false", False), ("1", True), ("No", False)])
def test_parse_bool(text, value):
    assert parse_bool(text) is value


# --------------------------------------------------------------------------------------------
# The original's flags, FLAC deletion, disk space (issue 13) and minor messages (issue 14)

def test_original_data_path_and_download_flags(tmp_path, archives, corpus, capsys):
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archives[0] / "test-clean.tar.gz", root)
    # --download False: the archives are already in --data_path (our --data_ready True); the
    # archive here is locally built, so its published MD5 must not match: the error proves the
    # run used the local archive and did not try the network.
    assert main(["--data_path", str(root), "--download", "False", "--splits", "test_clean"]) == 2
    err = capsys.readouterr().err
    assert "test-clean.tar.gz" in err and "MD5" in err
    assert "put a good copy of the archive there" in err and "fetches it again" not in err
    # Without the archive and with --download False, it names what is missing.
    assert main(["--data_path", str(tmp_path / "empty"), "--download", "False",
                 "--splits", "test_other"]) == 2
    assert "--data_ready True (--download False): nothing is downloaded, but these inputs are missing" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    ([], "--root_path (or the original's --data_path) is required"),
    (["--root_path", "a", "--data_path", "b"], "name different folders"),
    (["--root_path", "a", "--download", "True", "--data_ready", "True"], "contradicts"),
])
def test_flag_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(argv + ["--splits", "test_clean"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_flac_is_deleted_once_wavs_are_checked_and_a_rerun_needs_no_flac(tmp_path, archives, corpus):
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archives[0] / "test-clean.tar.gz", root)
    summary = prepare_librispeech(root, splits=["test_clean"], data_ready=True, workers=1,
                                  base_url=NOWHERE, archive_md5s=archives[1], progress=False,
                                  verbose=False)
    assert summary.problems == []
    check_split(root, "test_clean", corpus)
    subset = root / "LibriSpeech" / "test-clean"
    assert not subset.exists() and conversion_record(subset).is_file()
    assert (root / "test-clean.tar.gz").is_file()  # the archive stays: MD5 cache and re-extraction

    # A rerun (manifest and a transcript lost meanwhile) rebuilds them without the FLAC.
    (root / "test_clean" / "libri_test_clean_manifest.json").unlink()
    next((root / "test_clean" / "txt").glob("*.txt")).unlink()
    again = prepare_librispeech(root, splits=["test_clean"], data_ready=True, workers=1,
                                base_url=NOWHERE, archive_md5s=archives[1], progress=False,
                                verbose=False)
    assert again.problems == [] and again.splits[0].converted == 0 and not subset.exists()
    check_split(root, "test_clean", corpus)

    # A lost WAV cannot be rebuilt without its FLAC: named, with the way out.
    lost = next((root / "test_clean" / "wav").glob("*.wav"))
    lost.unlink()
    third = prepare_librispeech(root, splits=["test_clean"], data_ready=True, workers=1,
                                base_url=NOWHERE, archive_md5s=archives[1], progress=False,
                                verbose=False)
    [problem] = third.problems
    assert problem.kind == "missing WAV" and lost.name in problem.path
    assert str(conversion_record(subset)) in problem.detail


def test_keep_flac_keeps_the_tree_and_a_users_own_tree_is_never_deleted(tmp_path, archives, corpus):
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(archives[0] / "test-clean.tar.gz", root)
    prepare_librispeech(root, splits=["test_clean"], data_ready=True, workers=1, base_url=NOWHERE,
                        archive_md5s=archives[1], progress=False, verbose=False, keep_flac=True)
    assert len(list((root / "LibriSpeech" / "test-clean").rglob("*.flac"))) == 6

    own = tmp_path / "own"
    shutil.copytree(corpus / "test-clean", own / "LibriSpeech" / "test-clean")
    prepare_librispeech(own, splits=["test_clean"], data_ready=True, workers=1, base_url=NOWHERE,
                        progress=False, verbose=False)
    check_split(own, "test_clean", corpus)
    assert len(list((own / "LibriSpeech" / "test-clean").rglob("*.flac"))) == 6


def test_disk_space_is_checked_before_anything_starts(tmp_path, archives):
    root = tmp_path / "data"
    root.mkdir()
    free = shutil.disk_usage(root).free
    too_big = {"test-other.tar.gz": free}  # the download, its FLAC and WAVs: about 4x free
    with pytest.raises(PreparationError, match=r"not enough free disk space .* bytes .* available") as raised:
        prepare_librispeech(root, splits=["test_other"], workers=1, base_url=NOWHERE,
                            archive_bytes=too_big, progress=False, verbose=False)
    assert f"{free:,}".split(",")[0] in str(raised.value)
    assert sorted(os.listdir(root)) == []  # nothing downloaded or created

    # The estimate: download + one FLAC tree (deleted before the next) + 2x for the WAVs.
    sizes = {archive.name: 1000 for archive in ARCHIVES}
    val = [archive for archive in ARCHIVES if archive.split == "val"]
    assert disk_space_needed(root, val, keep_flac=False, archive_bytes=sizes) == 2 * 1000 + 1000 + 2 * 2000
    assert disk_space_needed(root, val, keep_flac=True, archive_bytes=sizes) == 2 * 1000 + 2 * 1000 + 2 * 2000
    # An archive already there is measured, not downloaded again.
    shutil.copy(archives[0] / "dev-clean.tar.gz", root)
    size = (root / "dev-clean.tar.gz").stat().st_size
    assert disk_space_needed(root, val[:1], keep_flac=False, archive_bytes=sizes) == size + 2 * size


def test_download_error_mentions_no_part_file_when_nothing_arrived(tmp_path):
    from mindaudio.data.archives import DownloadError
    with pytest.raises(DownloadError) as raised:
        download_archive("http://127.0.0.1:9/none.tar.gz", tmp_path / "none.tar.gz", "0" * 32,
                         retries=0, progress=False)
    assert "nothing was received" in str(raised.value) and ".part" not in str(raised.value)
    assert not (tmp_path / "none.tar.gz.part").exists() or (tmp_path / "none.tar.gz.part").stat().st_size == 0
