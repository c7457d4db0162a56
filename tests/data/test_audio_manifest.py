"""Audio loading (decode, mixdown, resampling, refusals) and manifest parsing (errors with line numbers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from whisper_kdq.data.audio import SAMPLE_RATE, AudioError, load_audio, write_flac
from whisper_kdq.data.manifest import ManifestError, load_dataset
from whisper_kdq.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# ---------------------------------------------------------------------------------------------- audio


@pytest.mark.parametrize("name", ["ja1.flac", "ja2.flac", "ja3.flac", "en1.flac", "en2.flac", "en3.flac"])
def test_fixture_clips_load(name):
    audio = load_audio(FIXTURES / name)
    info = sf.info(str(FIXTURES / name))
    assert info.samplerate == SAMPLE_RATE and info.channels == 1
    assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) == info.frames
    assert 1.0 < len(audio) / SAMPLE_RATE < 5.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.02


def test_stereo_24k_is_mixed_down_and_resampled():
    path = FIXTURES / "stereo_24k.wav"
    info = sf.info(str(path))
    assert info.samplerate == 24_000 and info.channels == 2
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(info.frames * SAMPLE_RATE / 24_000, abs=2)
    # The channels are (x, 0.5 x): the mix is 0.75 x, and x is en1.flac.
    reference = load_audio(FIXTURES / "en1.flac")
    n = min(len(reference), len(audio))
    gain = float(np.dot(audio[:n], reference[:n]) / np.dot(reference[:n], reference[:n]))
    assert gain == pytest.approx(0.75, abs=0.02)
    assert np.abs(audio[:n] - 0.75 * reference[:n]).max() < 0.02


def test_corrupt_file_names_its_path():
    path = FIXTURES / "corrupt.flac"
    with pytest.raises(AudioError, match="cannot decode") as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, UserError)


def test_missing_file(tmp_path):
    with pytest.raises(AudioError, match="not found") as info:
        load_audio(tmp_path / "nope.flac")
    assert "nope.flac" in str(info.value)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), 16_000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(path)
    zero_bytes = tmp_path / "zero.flac"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError, match="zero.flac"):
        load_audio(zero_bytes)


def test_clip_over_30_seconds_is_rejected(tmp_path):
    path = tmp_path / "long.flac"
    write_flac(path, np.full(31 * 8_000, 0.01, dtype=np.float32), rate=8_000)  # 31 s at 8 kHz
    with pytest.raises(AudioError, match=r"31\.0 s .*30 s") as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert len(load_audio(path, max_seconds=40)) == 31 * SAMPLE_RATE
    ok = tmp_path / "ok.flac"
    write_flac(ok, np.full(29 * SAMPLE_RATE, 0.01, dtype=np.float32))
    assert len(load_audio(ok)) == 29 * SAMPLE_RATE


def test_non_finite_samples(tmp_path):
    path = tmp_path / "nan.wav"
    data = np.zeros(1600, dtype=np.float32)
    data[100] = np.nan
    sf.write(str(path), data, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_write_flac_round_trip_and_leaves_no_temporary(tmp_path):
    samples = (0.3 * np.sin(np.linspace(0, 200, SAMPLE_RATE))).astype(np.float32)
    path = tmp_path / "x.flac"
    write_flac(path, samples)
    assert [p.name for p in tmp_path.iterdir()] == ["x.flac"]
    assert np.abs(load_audio(path) - samples).max() < 1e-3


# ------------------------------------------------------------------------------------------- manifest


def _copy_clips(tmp_path, *names):
    for name in names:
        shutil.copyfile(FIXTURES / name, tmp_path / name)


def _jsonl(tmp_path, rows, name="manifest.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_fixture_manifest(fixture_manifest):
    dataset = load_dataset(fixture_manifest)
    assert len(dataset) == 6 and dataset.languages() == ["en", "ja"]
    assert len(dataset.split("test")) == 6 and dataset.skipped == []
    first = dataset.utterances[0]
    assert first.id == "ja1" and first.language == "ja" and first.audio == (FIXTURES / "ja1.flac").resolve()
    assert first.source == "manifest.jsonl:1"
    assert first.samples is not None and np.array_equal(first.load(), load_audio(FIXTURES / "ja1.flac"))
    lazy = load_dataset(fixture_manifest, check_audio=False)
    assert lazy.utterances[0].samples is None and len(lazy.utterances[0].load()) == len(first.samples)
    assert len(load_dataset(fixture_manifest, limit=2)) == 2
    with pytest.raises(ManifestError, match="no usable"):
        load_dataset(fixture_manifest, split="train")


def test_language_filter(fixture_manifest):
    japanese = load_dataset(fixture_manifest, split="test", language="JA ")
    assert [u.id for u in japanese.utterances] == ["ja1", "ja2", "ja3"]  # file order kept
    assert [u.id for u in load_dataset(fixture_manifest, language="en", limit=2).utterances] == ["en1", "en2"]
    with pytest.raises(ManifestError, match="no usable utterances of language 'de'"):
        load_dataset(fixture_manifest, language="de")
    with pytest.raises(ManifestError, match="unknown language code 'jp'"):
        load_dataset(fixture_manifest, language="jp")


def test_language_filter_leaves_out_rows_without_language(tmp_path):
    _copy_clips(tmp_path, "en1.flac", "en2.flac")
    path = _jsonl(tmp_path, [{"audio": "en1.flac", "text": "The cat is sleeping."},
                             {"audio": "en2.flac", "text": "Please close the door.", "language": "en"}])
    assert [u.audio.name for u in load_dataset(path, language="en").utterances] == ["en2.flac"]


def test_empty_text_names_the_line(tmp_path):
    _copy_clips(tmp_path, "en1.flac", "en2.flac")
    path = _jsonl(tmp_path, [{"audio": "en1.flac", "text": "The cat is sleeping."}, "",
                             {"audio": "en2.flac", "text": "   "}])
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:3: missing or empty text"):
        load_dataset(path)


def test_unknown_language_code(tmp_path):
    _copy_clips(tmp_path, "ja1.flac")
    path = _jsonl(tmp_path, [{"audio": "ja1.flac", "text": "今日はいい天気ですね。", "language": "jp"}])
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:1: unknown language code 'jp'"):
        load_dataset(path)
    ok = _jsonl(tmp_path, [{"audio": "ja1.flac", "text": "今日はいい天気ですね。", "language": " JA "}], "ok.jsonl")
    assert load_dataset(ok).utterances[0].language == "ja"


def test_bad_json_line(tmp_path):
    _copy_clips(tmp_path, "en1.flac")
    path = _jsonl(tmp_path, [{"audio": "en1.flac", "text": "x"}, '{"audio": "en1.flac", "text": '])
    with pytest.raises(ManifestError, match=r"manifest\.jsonl:2: not valid JSON"):
        load_dataset(path)
    not_object = _jsonl(tmp_path, ['["en1.flac", "x"]'], "list.jsonl")
    with pytest.raises(ManifestError, match=r"list\.jsonl:1: expected an object"):
        load_dataset(not_object)


def test_missing_and_corrupt_audio_name_the_line(tmp_path):
    _copy_clips(tmp_path, "en1.flac", "corrupt.flac")
    missing = _jsonl(tmp_path, [{"audio": "en1.flac", "text": "a"}, {"audio": "gone.flac", "text": "b"}], "m.jsonl")
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: audio file not found: .*gone\.flac"):
        load_dataset(missing)
    no_audio = _jsonl(tmp_path, [{"text": "b"}], "n.jsonl")
    with pytest.raises(ManifestError, match=r"n\.jsonl:1: missing audio path"):
        load_dataset(no_audio)
    corrupt = _jsonl(tmp_path, [{"audio": "corrupt.flac", "text": "b"}], "c.jsonl")
    with pytest.raises(ManifestError, match=r"c\.jsonl:1: cannot decode audio .*corrupt\.flac"):
        load_dataset(corrupt)
    lazy = load_dataset(corrupt, check_audio=False)  # only decoding finds it
    with pytest.raises(AudioError, match=r"c\.jsonl:1: cannot decode"):
        lazy.utterances[0].load()


def test_absolute_audio_paths(tmp_path):
    path = _jsonl(tmp_path, [{"audio": str((FIXTURES / "en2.flac").resolve()), "text": "Please close the door."}])
    assert load_dataset(path).utterances[0].audio == (FIXTURES / "en2.flac").resolve()


def test_skip_bad_counts_the_skipped_rows(tmp_path):
    _copy_clips(tmp_path, "en1.flac", "en2.flac", "ja1.flac", "corrupt.flac")
    rows = [
        {"audio": "en1.flac", "text": "The cat is sleeping.", "language": "en"},
        {"audio": "en2.flac", "text": ""},
        "{oops",
        {"audio": "ja1.flac", "text": "今日はいい天気ですね。", "language": "xx"},
        {"audio": "corrupt.flac", "text": "garbage"},
        {"audio": "missing.flac", "text": "gone"},
        {"audio": "ja1.flac", "text": "今日はいい天気ですね。", "language": "ja"},
    ]
    path = _jsonl(tmp_path, rows)
    dataset = load_dataset(path, skip_bad=True)
    assert [u.source for u in dataset.utterances] == ["manifest.jsonl:1", "manifest.jsonl:7"]
    assert len(dataset.skipped) == 5
    assert [s.split(":")[1] for s in dataset.skipped] == ["2", "3", "4", "5", "6"]
    with pytest.raises(ManifestError, match="skip-bad"):
        load_dataset(path)
    all_bad = _jsonl(tmp_path, rows[1:6], "bad.jsonl")
    with pytest.raises(ManifestError, match=r"no usable utterances \(5 skipped\)"):
        load_dataset(all_bad, skip_bad=True)


def test_csv_manifest(tmp_path):
    _copy_clips(tmp_path, "en1.flac", "ja1.flac")
    path = tmp_path / "data.csv"
    path.write_text("audio,text,language,split\n"
                    "en1.flac,The cat is sleeping.,en,test\n"
                    'ja1.flac,"今日は、いい天気ですね。",ja,dev\n', encoding="utf-8")
    dataset = load_dataset(path)
    assert [u.language for u in dataset.utterances] == ["en", "ja"]
    assert dataset.utterances[1].text == "今日は、いい天気ですね。"
    assert [u.source for u in dataset.utterances] == ["data.csv:2", "data.csv:3"]
    assert len(load_dataset(path, split="dev")) == 1
    tsv = tmp_path / "data.tsv"
    tsv.write_text("audio\ttext\nen1.flac\tThe cat is sleeping.\n", encoding="utf-8")
    assert load_dataset(tsv).utterances[0].language is None


def test_csv_errors_name_the_line(tmp_path):
    _copy_clips(tmp_path, "en1.flac")
    header = tmp_path / "h.csv"
    header.write_text("path,text\nen1.flac,hello\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"h\.csv:1: header lacks column\(s\) audio"):
        load_dataset(header)
    blank = tmp_path / "b.csv"
    blank.write_text("audio,text\nen1.flac,hello\n\nen1.flac,\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"b\.csv:4: missing or empty text"):
        load_dataset(blank)


def test_byte_order_mark_is_accepted(tmp_path):
    """Spreadsheet programs often save UTF-8 with a byte order mark."""
    _copy_clips(tmp_path, "en1.flac")
    csv_path = tmp_path / "excel.csv"
    csv_path.write_text("\ufeffaudio,text\nen1.flac,hello\n", encoding="utf-8")
    assert len(load_dataset(csv_path)) == 1
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text("\ufeff" + json.dumps({"audio": "en1.flac", "text": "hello"}) + "\n", encoding="utf-8")
    assert len(load_dataset(jsonl)) == 1


def test_unknown_format_and_missing_dataset(tmp_path):
    odd = tmp_path / "data.txt"
    odd.write_text("x", encoding="utf-8")
    with pytest.raises(ManifestError, match="unknown dataset format '.txt'"):
        load_dataset(odd)
    with pytest.raises(ManifestError, match="dataset not found"):
        load_dataset(tmp_path / "nothing.jsonl")


def test_spread_takes_each_language_in_turn_and_keeps_file_order():
    data = load_dataset(FIXTURES / "manifest.jsonl", check_audio=False)
    assert [u.id for u in data.spread(4).utterances] == ["ja1", "ja2", "en1", "en2"]
    assert [u.id for u in data.spread(3).utterances] == ["ja1", "ja2", "en1"]
    assert len(data.spread(100).utterances) == len(data.utterances)
