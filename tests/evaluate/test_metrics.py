from whisper_kdq.evaluate.metrics import normalizer_for, score


def test_english_uses_whisper_english_normaliser():
    name, normalize = normalizer_for("en")
    assert name == "whisper-english"
    assert normalize("Mr. Smith's colour!") == normalize("mister smith's color")
    s = score(["Mr. Smith paid twenty dollars."], ["mister smith paid $20"], "en")
    assert s.wer == 0.0 and s.n == 1


def test_japanese_cer_ignores_punctuation_and_spaces():
    s = score(["東京の天気は晴れです。"], ["東京の 天気は晴れです"], "ja")
    assert s.cer == 0.0
    s = score(["東京の天気は晴れです。"], ["東京の電気は晴れです"], "ja")
    assert abs(s.cer - 1 / 10) < 1e-9  # one substitution in ten characters


def test_corpus_level_rates_weight_by_length_and_skip_empty_references():
    s = score(["a b c d", "e f", "!!!"], ["a b c x", "", "anything"], "de")
    assert s.n == 2 and s.n_empty_reference == 1
    assert abs(s.wer - 3 / 6) < 1e-9  # 1 substitution + 2 deletions over 6 reference words


def test_all_empty_references_give_no_rates():
    s = score(["?! — (uh)"], ["hello"], "en")
    assert s.wer is None and s.cer is None and s.n == 0
