"""Labels, batches, rank slices and the teacher cache (encoder and decoder hidden states)."""

from __future__ import annotations

import torch

from whisper_kdq.data.manifest import load_dataset
from whisper_kdq.distill.cache import TeacherCache
from whisper_kdq.distill.data import PROMPT_LEN, FeatureMemo, length_batches, make_batch, rank_slice
from tests.conftest import tiny_model


def test_rank_slices_are_disjoint_and_cover_the_global_batch():
    batch = list(range(10, 17))
    parts = [rank_slice(batch, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == batch
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1:])


def test_length_batches_are_deterministic_per_epoch(fixture_manifest):
    utts = load_dataset(fixture_manifest).utterances
    assert length_batches(utts, 2, 0, 0) == length_batches(utts, 2, 0, 0)
    epochs = {tuple(map(tuple, length_batches(utts, 2, 0, e))) for e in range(6)}
    assert len(epochs) > 1  # reshuffled each epoch


def test_make_batch_labels_and_frames(fixture_manifest, tiny_processor):
    utts = load_dataset(fixture_manifest).utterances[:3]
    batch = make_batch(utts, tiny_processor)
    tok = tiny_processor.tokenizer
    for i, u in enumerate(utts):
        assert batch.decoder_input_ids[i, 1] == tok.convert_tokens_to_ids(f"<|{u.language}|>")
        labels = batch.labels[i][batch.mask[i]].tolist()
        assert labels[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
        assert batch.labels[i, :PROMPT_LEN - 1].eq(-100).all()  # the prompt is given, not predicted
        assert int(batch.frames[i]) == -(-len(u.load()) // 320)
    fm = batch.frame_mask()
    assert fm.shape == (3, int(batch.frames.max())) and fm.sum(1).tolist() == batch.frames.tolist()


def test_feature_memo_computes_each_clip_once_and_gives_the_same_batch(fixture_manifest, tiny_processor, monkeypatch):
    utts = load_dataset(fixture_manifest).utterances[:3]
    plain = make_batch(utts, tiny_processor)
    memo = FeatureMemo(tiny_processor)
    calls = []
    extract = tiny_processor.feature_extractor.__class__.__call__
    monkeypatch.setattr(tiny_processor.feature_extractor.__class__, "__call__",
                        lambda self, audio, **kw: calls.append(len(audio)) or extract(self, audio, **kw))
    first = make_batch(utts[:2], tiny_processor, features=memo)
    again = make_batch(list(reversed(utts)), tiny_processor, features=memo)  # only the third clip is new
    assert calls == [2, 1] and len(memo) == 3
    assert all(f.untyped_storage().nbytes() == f.nbytes for f, _ in memo._kept.values())  # no batch kept alive
    assert torch.equal(again.features, plain.features.flip(0)) and torch.equal(again.frames, plain.frames.flip(0))
    assert torch.equal(first.features, plain.features[:2])
    full = FeatureMemo(tiny_processor, max_bytes=plain.features[0].nbytes)  # room for one clip: the rest recomputed
    assert torch.equal(make_batch(utts, tiny_processor, features=full).features, plain.features) and len(full) == 1


def test_teacher_cache_keeps_encoder_and_decoder_states(fixture_manifest, tiny_processor, tmp_path):
    teacher = tiny_model(seed=3)
    utts = load_dataset(fixture_manifest).utterances[:2]
    batch = make_batch(utts, tiny_processor)
    cache = TeacherCache(teacher, top_k=8, keep_hidden=True, keep_encoder_hidden=True)
    cache.fill(batch, "cpu")
    assert all(u.id in cache for u in utts)
    got = cache.stack(batch, "cpu")
    L = teacher.config.decoder_layers
    assert got["decoder_hidden"].shape[:3] == (L, 2, batch.decoder_input_ids.shape[1])
    assert got["encoder_hidden"].shape[:3] == (teacher.config.encoder_layers, 2, int(batch.frames.max()))
    with torch.no_grad():
        ref = teacher.model.encoder(batch.features, output_hidden_states=True).hidden_states[1]
    f = int(batch.frames[0])
    assert torch.allclose(got["encoder_hidden"][0, 0, :f], ref[0, :f], atol=2e-2, rtol=1e-2)  # fp16 storage
    # Saved and reloaded: reused when it holds what is needed, ignored when it does not.
    cache.save(tmp_path / "c.pt")
    again = TeacherCache(teacher, top_k=8, keep_hidden=True, keep_encoder_hidden=True)
    assert again.load(tmp_path / "c.pt") == 2 and torch.equal(again.stack(batch, "cpu")["encoder_hidden"],
                                                            got["encoder_hidden"])
    plain = TeacherCache(teacher, top_k=8, keep_hidden=False)
    plain.fill(batch, "cpu")
    plain.save(tmp_path / "p.pt")
    assert TeacherCache(teacher, top_k=8, keep_hidden=True, keep_encoder_hidden=True).load(tmp_path / "p.pt") == 0


def test_a_run_without_teacher_shares_the_encoder_outputs_and_keeps_the_teacher_part(fixture_manifest, tiny_processor,
                                                                                      tmp_path):
    """CE only (no teacher) over the teacher's frozen encoder leaves that encoder's outputs in the file; a KD run
    then runs only the teacher's decoder, and a later CE-only save keeps the KD run's teacher outputs."""
    teacher = tiny_model(seed=3)
    utts = load_dataset(fixture_manifest).utterances[:2]
    batch = make_batch(utts, tiny_processor)
    path = tmp_path / "shared.pt"
    ce_only = TeacherCache(None, top_k=8, keep_hidden=False, student_encoder=teacher.model.encoder, share_encoder=True)
    ce_only.fill(batch, "cpu")
    ce_only.save(path)

    calls = []
    teacher.model.encoder.register_forward_hook(lambda *a: calls.append(1))
    kd = TeacherCache(teacher, top_k=8, keep_hidden=True, student_encoder=teacher.model.encoder, share_encoder=True)
    assert kd.load(path) == 2 and all(u.id not in kd for u in utts)  # encoder outputs only: teacher still to run
    kd.fill(batch, "cpu")
    assert calls == [] and all(u.id in kd for u in utts)
    with torch.no_grad():
        enc = teacher.model.encoder(batch.features).last_hidden_state
        ref = teacher(encoder_outputs=(enc,), decoder_input_ids=batch.decoder_input_ids).logits
    n = kd.outputs[utts[0].id].topk_ids.shape[0]
    assert torch.equal(kd.outputs[utts[0].id].topk_ids[:, 0].long(), ref[0, :n].argmax(-1))
    kd.save(path)

    again = TeacherCache(None, top_k=8, keep_hidden=False, student_encoder=teacher.model.encoder, share_encoder=True)
    assert again.load(path) == 2
    again.save(path)
    kept = TeacherCache(teacher, top_k=8, keep_hidden=True, student_encoder=teacher.model.encoder, share_encoder=True)
    assert kept.load(path) == 4 and all(u.id in kept for u in utts)

    # A student with its own frozen encoder (e.g. a cut one) adds teacher outputs and keeps the shared ones.
    other = tiny_model(seed=4).model.encoder
    own = TeacherCache(teacher, top_k=8, keep_hidden=True, student_encoder=other, share_encoder=False)
    assert own.load(path) == 2 and not own.encoder_out  # the teacher's encoder outputs are not this student's
    extra = make_batch(load_dataset(fixture_manifest).utterances[2:3], tiny_processor)
    own.fill(extra, "cpu")
    own.save(path)
    assert TeacherCache(teacher, top_k=8, keep_hidden=True, student_encoder=teacher.model.encoder,
                        share_encoder=True).load(path) == 5


def test_pseudo_labels_keep_close_and_unlabelled_drop_far(monkeypatch):
    import numpy as np

    from whisper_kdq.data.manifest import Utterance
    from whisper_kdq.distill import data as data_mod
    from whisper_kdq.evaluate import decode
    from whisper_kdq.evaluate.decode import Transcripts

    silent = np.zeros(16000, dtype=np.float32)
    utts = [Utterance("close", "the cat sat on the mat", "en", samples=silent),
            Utterance("far", "the cat sat on the mat", "en", samples=silent),
            Utterance("ja", "今日はいい天気です", "ja", samples=silent),
            Utterance("unlabelled", "", "en", samples=silent),
            Utterance("empty", "hello", "en", samples=silent)]
    hyps = ["the cat sat on a mat", "a dog ran far away from home", "今日はいい天気でした", "some words", ""]
    monkeypatch.setattr(decode, "transcribe", lambda *a, **k: Transcripts(hyps, 1.0, 5.0))
    from types import SimpleNamespace

    teacher = SimpleNamespace(model=None, processor=None)
    texts, dropped = data_mod.pseudo_labels(teacher, utts, max_wer=0.3, batch_size=2, device="cpu")
    assert set(texts) == {"close", "ja", "unlabelled"} and set(dropped) == {"far", "empty"}
    assert texts["close"] == "the cat sat on a mat"  # trained on the teacher's words, not the reference
    texts, _ = data_mod.pseudo_labels(teacher, utts, max_wer=None, batch_size=2, device="cpu")
    assert set(texts) == {"close", "far", "ja", "unlabelled"}


def test_windowed_batches_pad_to_the_window_and_refuse_a_longer_clip(fixture_manifest, tiny_processor):
    utts = load_dataset(fixture_manifest).utterances[:3]  # clips of 1.9-2.3 s
    full = make_batch(utts, tiny_processor)
    short = make_batch(utts, tiny_processor, window_s=3)
    assert short.features.shape[-1] == 300 and full.features.shape[-1] == 3000  # 10-ms mel frames
    assert torch.equal(short.frames, full.frames)  # the audio frames are the same, only the padding is cut
    assert torch.allclose(short.features[..., :200], full.features[..., :200], atol=1e-5)
    memo = FeatureMemo(tiny_processor, window_s=3)
    assert torch.equal(make_batch(utts, tiny_processor, features=memo).features, short.features)
    import pytest

    from whisper_kdq.errors import UserError

    with pytest.raises(UserError, match=r"manifest.jsonl:2: --window 2: the longest clip is 2\.3 s"):
        make_batch(utts, tiny_processor, window_s=2)


def test_teacher_cache_file_of_another_window_is_refused_not_overwritten(fixture_manifest, tiny_processor, tmp_path):
    import pytest

    from whisper_kdq.errors import UserError

    teacher = tiny_model(seed=3)
    utts = load_dataset(fixture_manifest).utterances[:2]
    cache = TeacherCache(teacher, top_k=8, keep_hidden=False, window_s=30.0)  # 30 s is Whisper's own window
    cache.fill(make_batch(utts, tiny_processor), "cpu")
    path = tmp_path / "teacher.pt"
    cache.save(path)
    assert TeacherCache(teacher, top_k=8, keep_hidden=False).load(path) == 2
    stamp = path.stat().st_mtime_ns
    with pytest.raises(UserError, match="30-s window, this run reads a 10-s window"):
        TeacherCache(teacher, top_k=8, keep_hidden=False, window_s=10).load(path)
    assert path.stat().st_mtime_ns == stamp
