"""Character labels and manifests, with real LibriSpeech files in temporary directories."""
import mindaudio  # noqa: F401  (sets the oneDNN ISA before anything imports mindspore)

import json
import os
import shutil

import numpy as np
import pytest
import soundfile

from mindaudio.config import DEFAULT_LABELS
from mindaudio.data.manifest import (ManifestError, Utterance, read_manifest, write_manifest,
                                     write_manifest_with_transcripts)
from mindaudio.data.text import CharTokenizer, check_labels

YAML_LABELS = ["'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [" ", "_"]


@pytest.fixture(scope="module")
def librispeech_utterances(librispeech_mini):
    """(flac path, transcript) for every utterance of the mini set, read from the trans.txt."""
    pairs = []
    for trans in sorted(librispeech_mini.glob("*/*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utterance_id, text = line.split(" ", 1)
            pairs.append((trans.parent / f"{utterance_id}.flac", text))
    assert len(pairs) >= 10
    return pairs


# --- CharTokenizer ----------------------------------------------------------------------------

def test_config_labels_are_the_yaml_labels():
    assert DEFAULT_LABELS == YAML_LABELS


def test_encode_uses_label_positions_and_upper_cases():
    tokenizer = CharTokenizer(YAML_LABELS)
    assert tokenizer.blank_id == 28 == len(YAML_LABELS) - 1
    ids, unknown = tokenizer.encode("don't Go")
    assert ids == [4, 15, 14, 0, 20, 27, 7, 15]  # D O N ' T space G O in the yaml order
    assert unknown == set()


def test_characters_outside_labels_become_spaces_and_are_reported():
    tokenizer = CharTokenizer(YAML_LABELS)
    ids, unknown = tokenizer.encode("It's o'clock!  ÉTÉ_")
    assert unknown == {"!", "_"}  # É is folded to E, not removed
    assert tokenizer.decode(ids) == "IT'S O'CLOCK ETE"
    assert tokenizer.blank_id not in ids


@pytest.mark.parametrize("text,expected", [
    ("ZÉRO—ONE", "ZERO ONE"),                     # em dash: two words, never ZROONE
    ("zéro–one - two", "ZERO ONE TWO"),           # en dash, hyphen, spaces collapsed
    ("Ça va? Oui, très bien.", "CA VA OUI TRES BIEN"),
    ("naïve café\tcrème", "NAIVE CAFE CREME"),     # a tab is a space
    ("  HELLO   ,  WORLD  ", "HELLO WORLD"),
    ("well-known (and) \"quoted\"", "WELL KNOWN AND QUOTED"),
    ("don’t", "DON'T"),                           # typographic apostrophe
])
def test_normalisation_folds_accents_and_never_joins_words(text, expected):
    normalised = CharTokenizer(YAML_LABELS).normalise(text)
    assert normalised.text == expected
    assert not normalised.has_digits


def test_removed_characters_are_counted_each_time():
    normalised = CharTokenizer(YAML_LABELS).normalise("A—B—C!")
    assert sorted(normalised.removed) == ["!", "—", "—"]


@pytest.mark.parametrize("text", ["123 AND MORE", "ROOM 4B", "²"])
def test_digits_are_flagged_not_guessed(text):
    normalised = CharTokenizer(YAML_LABELS).normalise(text)
    assert normalised.has_digits
    assert not any(char.isdigit() for char in normalised.text)


@pytest.mark.parametrize("drop", [False, True])
def test_drop_apostrophes_removes_them_from_the_label_text(drop):
    tokenizer = CharTokenizer(YAML_LABELS, drop_apostrophes=drop)
    ids, unknown = tokenizer.encode("Don't ’tis o'clock")
    assert tokenizer.decode(ids) == ("DONT TIS OCLOCK" if drop else "DON'T 'TIS O'CLOCK")
    assert unknown == set()  # dropped on purpose: not reported as unknown
    assert (0 in ids) is not drop  # label id 0 is the apostrophe, as in the original


def test_apostrophe_outside_the_labels_is_deleted_not_split():
    labels = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [" ", "_"]
    normalised = CharTokenizer(labels).normalise("don't")
    assert normalised.text == "DONT" and normalised.removed == ("'",)


def test_tokenizer_from_config_takes_the_switch():
    from mindaudio.config import config_from_dict
    assert CharTokenizer.from_config(config_from_dict({"drop_apostrophes": True})).drop_apostrophes
    assert not CharTokenizer.from_config(config_from_dict({})).drop_apostrophes


@pytest.mark.parametrize("value", [None, 3, ["A"]])
def test_non_string_transcript_is_a_type_error(value):
    with pytest.raises(TypeError, match="string"):
        CharTokenizer(YAML_LABELS).normalise(value)


def test_round_trip_of_real_transcripts(librispeech_utterances):
    tokenizer = CharTokenizer(YAML_LABELS)
    for _, text in librispeech_utterances:
        ids, unknown = tokenizer.encode(text.lower())
        assert unknown == set(), text
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text


def test_decode_skips_blanks_and_accepts_numpy_ids():
    tokenizer = CharTokenizer(YAML_LABELS)
    ids = np.array([8, 28, 9, 28, 28], dtype=np.int32)
    assert tokenizer.decode(ids) == "HI"


@pytest.mark.parametrize("bad_id", [-1, 29, 1000])
def test_decode_rejects_ids_outside_the_labels(bad_id):
    with pytest.raises(ValueError, match=str(bad_id)):
        CharTokenizer(YAML_LABELS).decode([1, bad_id])


@pytest.mark.parametrize("labels,message", [
    (["A", "B", "A", "_"], "duplicates"),
    (["A", "B", " "], "blank"),
    (["_", "A", "B"], "last"),
    (["A", "BC", "_"], "one character"),
])
def test_invalid_labels_are_rejected(labels, message):
    with pytest.raises(ValueError, match=message):
        CharTokenizer(labels)
    with pytest.raises(ValueError, match=message):
        check_labels(labels)


# --- manifests --------------------------------------------------------------------------------

def make_dataset(root, utterances):
    """Copy the utterances into root/wav and root/txt as the original's preparation lays them out.

    Returns the original-form sample entries (paths relative to root).
    """
    (root / "wav").mkdir(parents=True)
    (root / "txt").mkdir()
    samples = []
    for flac, text in utterances:
        shutil.copyfile(flac, root / "wav" / flac.name)
        (root / "txt" / f"{flac.stem}.txt").write_text(text + "\n", encoding="utf-8")
        samples.append({"wav_path": f"wav/{flac.name}", "txt_path": f"txt/{flac.stem}.txt"})
    return samples


def header_duration(path):
    data, sample_rate = soundfile.read(path)
    return len(data) / sample_rate


def test_read_original_form(tmp_path, librispeech_utterances):
    chosen = librispeech_utterances[:3]
    root = tmp_path / "data"
    samples = make_dataset(root, chosen)
    samples[0]["duration"] = 12.5  # given durations are trusted; absent ones come from the audio
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"root_path": str(root), "samples": samples}))

    utterances = read_manifest(manifest)

    assert [u.id for u in utterances] == [flac.stem for flac, _ in chosen]
    assert [u.transcript for u in utterances] == [text for _, text in chosen]
    for utterance, (flac, _) in zip(utterances, chosen):
        assert isinstance(utterance, Utterance)
        assert os.path.isabs(utterance.audio_path)
        assert utterance.audio_path == str(root / "wav" / flac.name)
    assert utterances[0].duration == 12.5
    for utterance in utterances[1:]:
        assert utterance.duration == pytest.approx(header_duration(utterance.audio_path))


def test_absolute_paths_are_kept_and_transcript_is_first_line_stripped(tmp_path,
                                                                       librispeech_utterances):
    flac, text = librispeech_utterances[0]
    transcript_file = tmp_path / "elsewhere" / "t.txt"
    transcript_file.parent.mkdir()
    transcript_file.write_text(f"  {text}  \nsecond line is ignored\n", encoding="utf-8")
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"root_path": str(tmp_path / "unused"), "samples": [
        {"wav_path": str(flac), "txt_path": str(transcript_file), "duration": 1.0}]}))

    [utterance] = read_manifest(manifest)

    assert utterance.audio_path == str(flac)
    assert utterance.transcript == text


def test_relative_root_path_is_relative_to_working_directory(tmp_path, monkeypatch,
                                                             librispeech_utterances):
    samples = make_dataset(tmp_path / "corpus", librispeech_utterances[:1])
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "m.json").write_text(json.dumps({"root_path": "corpus", "samples": samples}))
    monkeypatch.chdir(tmp_path)
    [utterance] = read_manifest("manifests/m.json")
    assert utterance.audio_path == str(tmp_path / "corpus" / samples[0]["wav_path"])


def test_write_then_read_round_trip(tmp_path, librispeech_utterances):
    chosen = librispeech_utterances[3:6]
    root = tmp_path / "data"
    samples = make_dataset(root, chosen)
    durations = [header_duration(flac) for flac, _ in chosen]
    for sample, duration in zip(samples, durations):
        sample["duration"] = duration
    manifest = tmp_path / "out" / "libri_manifest.json"

    write_manifest(manifest, root, samples)

    assert sorted(os.listdir(manifest.parent)) == ["libri_manifest.json"]  # no temp left
    document = json.loads(manifest.read_text())
    assert document["root_path"] == str(root)
    assert document["samples"] == samples
    utterances = read_manifest(manifest)
    assert [(u.transcript, u.duration) for u in utterances] == [
        (text, duration) for (_, text), duration in zip(chosen, durations)]


def test_write_replaces_an_existing_manifest(tmp_path, librispeech_utterances):
    root = tmp_path / "data"
    samples = make_dataset(root, librispeech_utterances[:2])
    manifest = tmp_path / "m.json"
    write_manifest(manifest, root, samples)
    write_manifest(manifest, root, samples[:1])
    assert len(read_manifest(manifest)) == 1


def test_manifest_with_transcripts_lists_the_audio_where_it_is(tmp_path, librispeech_utterances):
    chosen = librispeech_utterances[:2]
    manifest = write_manifest_with_transcripts(tmp_path / "out", [(flac.stem, flac, text) for flac, text in chosen],
                                               "m.json")
    assert manifest == tmp_path / "out" / "m.json"
    assert sorted(os.listdir(tmp_path / "out" / "txt")) == sorted(f"{flac.stem}.txt" for flac, _ in chosen)
    utterances = read_manifest(manifest)
    assert [(u.id, u.audio_path, u.transcript) for u in utterances] == [
        (flac.stem, str(flac.resolve()), text) for flac, text in chosen]
    assert [u.duration for u in utterances] == pytest.approx([header_duration(flac) for flac, _ in chosen])


def test_read_json_lines(tmp_path, librispeech_utterances):
    chosen = librispeech_utterances[:2]
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    lines = []
    for index, (flac, text) in enumerate(chosen):
        shutil.copyfile(flac, audio_dir / flac.name)
        entry = {"audio_filepath": f"audio/{flac.name}", "text": text.lower()}
        if index == 0:
            entry["duration"] = 3.25
        lines.append(json.dumps(entry))
    manifest = tmp_path / "nemo.jsonl"
    manifest.write_text("\n".join(lines) + "\n\n")

    utterances = read_manifest(manifest)

    assert [u.audio_path for u in utterances] == [str(audio_dir / f.name) for f, _ in chosen]
    assert [u.transcript for u in utterances] == [t.lower() for _, t in chosen]
    assert utterances[0].duration == 3.25
    assert utterances[1].duration == pytest.approx(header_duration(audio_dir / chosen[1][0].name))


@pytest.mark.parametrize("missing", ["wav_path", "txt_path"])
def test_missing_audio_or_transcript_names_manifest_and_file(tmp_path, librispeech_utterances, missing):
    samples = make_dataset(tmp_path / "data", librispeech_utterances[:2])
    os.remove(tmp_path / "data" / samples[1][missing])
    manifest = tmp_path / f"broken_{missing}.json"
    manifest.write_text(json.dumps({"root_path": str(tmp_path / "data"), "samples": samples}))
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    assert manifest.name in message and samples[1][missing] in message


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(ManifestError, match="absent.json"):
        read_manifest(tmp_path / "absent.json")


@pytest.mark.parametrize("content", [
    '{"root_path": "/x", "samples": [',
    '{"audio_filepath": "a.wav", "text": "A"}\n{"audio_filepath": ',
    "not json at all",
])
def test_malformed_json_names_manifest(tmp_path, content):
    manifest = tmp_path / "malformed.json"
    manifest.write_text(content)
    with pytest.raises(ManifestError, match="malformed.json"):
        read_manifest(manifest)


def test_corrupt_audio_without_duration_names_manifest(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"garbage" * 10)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "bad.wav", "text": "A"}) + "\n")
    with pytest.raises(ManifestError, match="m.jsonl.*bad.wav"):
        read_manifest(manifest)


@pytest.mark.parametrize("duration", [-1.0, "long", True])
def test_invalid_duration_is_rejected(tmp_path, librispeech_utterances, duration):
    samples = make_dataset(tmp_path / "data", librispeech_utterances[:1])
    samples[0]["duration"] = duration
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"root_path": str(tmp_path / "data"), "samples": samples}))
    with pytest.raises(ManifestError, match="duration"):
        read_manifest(manifest)


def test_empty_manifest_is_rejected(tmp_path):
    manifest = tmp_path / "empty.json"
    manifest.write_text(json.dumps({"root_path": str(tmp_path), "samples": []}))
    with pytest.raises(ManifestError, match="no utterances"):
        read_manifest(manifest)


# --- manifest robustness (issue 14) -----------------------------------------------------------

def test_manifest_errors_are_user_errors():
    from mindaudio.config import UserError
    assert issubclass(ManifestError, UserError)


@pytest.mark.parametrize("duration", ["NaN", "Infinity", "-1"])
def test_non_finite_or_negative_duration_names_the_line(tmp_path, librispeech_utterances, duration):
    flac, text = librispeech_utterances[0]
    manifest = tmp_path / "durations.jsonl"
    # Python's json reads NaN and Infinity literals: exactly what another tool may have written.
    manifest.write_text(json.dumps({"audio_filepath": str(flac), "text": text}) + "\n"
                        + f'{{"audio_filepath": "{flac}", "text": "A", "duration": {duration}}}\n')
    with pytest.raises(ManifestError, match=r"durations\.jsonl, line 2: 'duration' must be a finite"):
        read_manifest(manifest)


@pytest.mark.parametrize("text", [None, 3, 2.5, ["A"], {"a": 1}])
def test_non_string_text_names_the_manifest_and_line(tmp_path, librispeech_utterances, text):
    flac, good = librispeech_utterances[0]
    manifest = tmp_path / "texts.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in [
        {"audio_filepath": str(flac), "text": good}, {"audio_filepath": str(flac), "text": text}]))
    with pytest.raises(ManifestError, match=r"texts\.jsonl, line 2: 'text' must be a string"):
        read_manifest(manifest)


@pytest.mark.parametrize("path", [None, 3, ["a.wav"], ""])
def test_non_string_audio_path_names_the_line(tmp_path, path):
    manifest = tmp_path / "paths.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": path, "text": "A"}) + "\n")
    with pytest.raises(ManifestError, match=r"paths\.jsonl, line 1: 'audio_filepath' must be a non-empty path"):
        read_manifest(manifest)


def test_non_utf8_manifest_names_the_file(tmp_path, librispeech_utterances):
    flac, _ = librispeech_utterances[0]
    manifest = tmp_path / "latin1.jsonl"
    manifest.write_bytes(json.dumps({"audio_filepath": str(flac), "text": "CAF\u00c9"}).encode("utf-8")
                         .replace("\\u00c9".encode(), "\u00c9".encode("latin-1")))
    with pytest.raises(ManifestError, match=r"latin1\.jsonl is not UTF-8"):
        read_manifest(manifest)


def test_non_utf8_transcript_names_the_transcript_file(tmp_path, librispeech_utterances):
    samples = make_dataset(tmp_path / "data", librispeech_utterances[:1])
    (tmp_path / "data" / samples[0]["txt_path"]).write_bytes("CAF\u00c9\n".encode("latin-1"))
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"root_path": str(tmp_path / "data"), "samples": samples}))
    with pytest.raises(ManifestError, match=r"m\.json, samples\[0\]: transcript file .*\.txt is not UTF-8"):
        read_manifest(manifest)


def test_a_directory_is_named_as_a_directory(tmp_path):
    with pytest.raises(ManifestError, match="is a directory"):
        read_manifest(tmp_path)
    (tmp_path / "audio.wav").mkdir()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "audio.wav", "text": "A"}) + "\n")
    with pytest.raises(ManifestError, match=r"m\.jsonl, line 1: audio path .*audio\.wav is a directory"):
        read_manifest(manifest)


def test_utterances_remember_their_line(tmp_path, librispeech_utterances):
    flac, text = librispeech_utterances[0]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n" + json.dumps({"audio_filepath": str(flac), "text": text}) + "\n")
    [utterance] = read_manifest(manifest)
    assert utterance.source == f"manifest {manifest}, line 2"
    assert utterance[0] == utterance.id  # a named tuple


def test_write_is_atomic_and_skips_unchanged_content(tmp_path):
    from mindaudio.data.manifest import manifest_text, write_text_if_changed
    samples = [{"wav_path": "wav/a.wav", "txt_path": "txt/a.txt", "duration": 1.5}]
    path = tmp_path / "sub" / "m.json"
    assert write_manifest(path, tmp_path, samples) is True
    assert json.loads(path.read_text()) == {"root_path": str(tmp_path), "samples": samples}
    assert path.read_text() == manifest_text(tmp_path, samples)
    assert path.read_text().count("\n") == 4  # one sample a line: diffable
    mtime = path.stat().st_mtime_ns
    assert write_manifest(path, tmp_path, samples) is False and path.stat().st_mtime_ns == mtime
    assert write_text_if_changed(path, "other") is True and path.read_text() == "other"
    assert sorted(os.listdir(path.parent)) == ["m.json"]


# --- python -m mindaudio.data.manifest --check ------------------------------------------------

@pytest.fixture
def checked_manifest(tmp_path, librispeech_utterances):
    """Two good files and three bad ones (truncated WAV, NaN WAV, wrong duration)."""
    (good, good_text), (other, other_text), (third, _) = librispeech_utterances[:3]
    signal, rate = soundfile.read(str(third), dtype="int16")
    whole = tmp_path / "whole.wav"
    soundfile.write(str(whole), signal, rate, subtype="PCM_16")
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    poisoned = tmp_path / "nan.wav"
    values = signal.astype(np.float32) / 32768
    values[10] = np.inf
    soundfile.write(str(poisoned), values, rate, subtype="FLOAT")
    rows = [{"audio_filepath": str(good), "text": good_text},
            {"audio_filepath": str(other), "text": other_text, "duration": header_duration(other) + 0.5},
            {"audio_filepath": str(truncated), "text": "A", "duration": 1.0},
            {"audio_filepath": str(poisoned), "text": "A"},
            {"audio_filepath": str(whole), "text": "A"}]
    manifest = tmp_path / "check.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return manifest, {str(other): "wrong duration", str(truncated): "truncated", str(poisoned): "NaN or infinite"}


def test_check_manifest_reads_every_file_and_names_each_problem(checked_manifest):
    from mindaudio.data.manifest import check_manifest
    manifest, expected = checked_manifest
    problems = check_manifest(manifest)
    assert {problem.path for problem in problems} == set(expected)
    for problem in problems:
        assert expected[problem.path] in f"{problem.kind} {problem.detail}"


def test_check_command_prints_problems_and_exits_non_zero(checked_manifest, repo_root, tmp_path,
                                                           librispeech_utterances):
    import subprocess
    import sys
    manifest, expected = checked_manifest
    done = subprocess.run([sys.executable, "-m", "mindaudio.data.manifest", "--check", str(manifest)],
                          cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    for path in expected:
        assert path in done.stdout
    assert "3 problem(s)" in done.stdout
    clean = tmp_path / "clean.jsonl"
    clean.write_text(json.dumps({"audio_filepath": str(librispeech_utterances[0][0]), "text": "A"}) + "\n")
    ok = subprocess.run([sys.executable, "-m", "mindaudio.data.manifest", "--check", str(clean)],
                        cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "0 problem(s)" in ok.stdout
    missing = subprocess.run([sys.executable, "-m", "mindaudio.data.manifest", "--check",
                              str(tmp_path / "absent.json")],
                             cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "absent.json" in missing.stderr
    assert "Traceback" not in missing.stderr
