"""The cut encoder trained by regression: cut resolution, teacher targets, the distance, training, resume."""

from __future__ import annotations

import pytest
import torch

from whisper_kdq.data.manifest import load_dataset
from whisper_kdq.distill.data import FeatureMemo
from whisper_kdq.distill.encoder import EncoderCut, EncoderTargets, frame_distance, student_loss, teacher_states
from whisper_kdq.distill.encoder_trainer import EncoderTrainer, EncoderTraining, batch_ids
from whisper_kdq.errors import UserError
from whisper_kdq.models.refs import LoadedModel
from whisper_kdq.models.students import cut_student
from tests.conftest import tiny_model


def _teacher(tiny_processor) -> LoadedModel:
    return LoadedModel(tiny_model(seed=3, encoder_layers=4), tiny_processor, "tiny4", "transformers", None, 0)


def test_cut_resolution_spreads_targets_and_refuses_bad_cuts():
    assert EncoderCut(1, [5]).resolve(6).targets == [5]
    assert EncoderCut(1, [3, 5]).resolve(6).targets == [3, 5]
    assert EncoderCut(0, [0, 5]).resolve(6).targets == [2, 5]
    assert EncoderCut(2, [3, 5]).resolve(6).encoder_map == [0, 1, 3, 5]
    for bad in (EncoderCut(1, [7]), EncoderCut(1, [2, 5], [4, 3]), EncoderCut(3, [4, 5], [1, 5])):
        with pytest.raises(UserError):
            bad.resolve(6)
    with pytest.raises(UserError):
        EncoderCut(1, [])


def test_teacher_states_match_the_model_and_a_full_copy_has_no_loss(tiny_processor, fixture_manifest):
    teacher = _teacher(tiny_processor)
    utts = load_dataset(fixture_manifest).utterances[:3]
    feats, frames = FeatureMemo(tiny_processor)(utts)
    full = EncoderCut(1, [1, 2, 3], [1, 2, 3]).resolve(4)
    start, targets = teacher_states(teacher.model.model.encoder, feats, full)
    with torch.no_grad():
        reference = teacher.model.model.encoder(feats).last_hidden_state
    assert torch.allclose(targets[-1], reference, atol=1e-5)
    copy = cut_student(teacher, full.encoder_map, [0, 1]).model.model.encoder
    loss = student_loss(copy.layers[1:], copy.layer_norm, start, torch.stack(targets, 1), frames)
    assert float(loss.detach()) < 1e-8
    # A cut (one block in place of three) is far from the teacher.
    cut = EncoderCut(1, [3]).resolve(4)
    s2, t2 = teacher_states(teacher.model.model.encoder, feats, cut)
    short = cut_student(teacher, cut.encoder_map, [0, 1]).model.model.encoder
    assert float(student_loss(short.layers[1:], short.layer_norm, s2, torch.stack(t2, 1), frames).detach()) > 1e-3


def test_frame_distance_weighs_audio_frames_twice():
    t = torch.ones(1, 10, 4)
    s = t.clone()
    s[0, 8:] = 0  # the padding frames wrong: counted once (all frames)
    assert float(frame_distance(s, t, torch.tensor([4]))) == pytest.approx(0.2)
    s = t.clone()
    s[0, :2] = 0  # audio frames wrong: counted in both means
    assert float(frame_distance(s, t, torch.tensor([4]))) == pytest.approx(0.2 + 0.5)


def test_batches_cover_each_epoch_once_in_a_seeded_order():
    ids = [f"u{i}" for i in range(7)]
    epoch0 = [u for step in range(3) for u in batch_ids(ids, 3, 0, step)]
    assert sorted(epoch0) == sorted(ids)
    assert batch_ids(ids, 3, 0, 4) == batch_ids(ids, 3, 0, 4)
    assert [batch_ids(ids, 3, 0, s) for s in range(3)] != [batch_ids(ids, 3, 0, s) for s in range(3, 6)]


def _setup(tiny_processor, fixture_manifest):
    teacher = _teacher(tiny_processor)
    utts = load_dataset(fixture_manifest).utterances
    cut = EncoderCut(1, [3]).resolve(4)
    targets = EncoderTargets(cut)
    targets.fill(teacher.model.model.encoder, utts, FeatureMemo(tiny_processor))
    return teacher, cut, targets, [u.id for u in utts]


def test_training_brings_the_cut_encoder_towards_the_teacher(tiny_processor, fixture_manifest, tmp_path):
    teacher, cut, targets, ids = _setup(tiny_processor, fixture_manifest)
    student = cut_student(teacher, cut.encoder_map, [0, 1]).model.model.encoder
    frozen_before = student.layers[0].fc1.weight.clone()
    trainer = EncoderTrainer(student, cut, targets, ids[:4], ids[4:], EncoderTraining(steps=30, batch_size=2, lr=3e-3,
                                                                                         warmup=2, eval_every=10))
    before = trainer.dev_loss()
    summary = trainer.fit()
    assert trainer.dev_loss() < 0.7 * before and summary["best_dev_loss"] == pytest.approx(trainer.dev_loss(), rel=1e-5)
    assert torch.equal(student.layers[0].fc1.weight, frozen_before)  # the frozen block stays the teacher's
    # Saved and loaded back: the targets round-trip, and another cut's targets are refused.
    targets.save(tmp_path / "t.pt")
    assert EncoderTargets.load(tmp_path / "t.pt", cut).rows.keys() == targets.rows.keys()
    with pytest.raises(UserError, match="another cut"):
        EncoderTargets.load(tmp_path / "t.pt", EncoderCut(1, [2]).resolve(4))
    with pytest.raises(UserError, match="targets of teacher"):
        EncoderTargets.load(tmp_path / "t.pt", cut, teacher="small")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="cannot read encoder targets"):
        EncoderTargets.load(tmp_path / "bad.pt", cut)


def test_resume_from_a_checkpoint_gives_the_same_weights(tiny_processor, fixture_manifest, tmp_path):
    teacher, cut, targets, ids = _setup(tiny_processor, fixture_manifest)
    settings = EncoderTraining(steps=8, batch_size=2, lr=3e-3, warmup=2, save_every=3, eval_every=4)

    def trainer(out):
        out.mkdir()
        student = cut_student(teacher, cut.encoder_map, [0, 1]).model.model.encoder
        return EncoderTrainer(student, cut, targets, ids[:4], ids[4:], settings, out)

    whole = trainer(tmp_path / "whole")
    whole.fit()
    def killed(record):
        if record["step"] == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):  # killed after its step-3 checkpoint…
        trainer(tmp_path / "part").fit(killed)
    second = trainer(tmp_path / "again")
    second.out = tmp_path / "part"
    second.restore(tmp_path / "part" / "checkpoints" / "step-000003")  # …and a new process resumes there
    second.fit()
    for (name, a), b in zip(whole.encoder.state_dict().items(), second.encoder.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert second.best == whole.best


def test_encoder_plan_keeps_only_the_trained_part_quantized(tiny_processor):
    from whisper_kdq.distill.encoder import encoder_plan
    from whisper_kdq.quant.plan import plan_from_options

    state = _teacher(tiny_processor).model.state_dict()
    plan = plan_from_options(bits=3)
    quantized = lambda cut: sorted(n for n, s in encoder_plan(plan, cut).resolve(state).items() if s is not None)
    one_block = quantized(EncoderCut(1, [3]).resolve(4))
    assert one_block and all(n.startswith("model.encoder.layers.1.") for n in one_block)
    whole = quantized(EncoderCut(0, [0, 1, 2, 3]).resolve(4))  # nothing frozen: the convolutions train too
    assert {"model.encoder.conv1.weight", "model.encoder.conv2.weight", "model.encoder.layers.3.fc2.weight"} <= set(whole)
    assert not any(n.startswith("model.decoder.") or "embed" in n for n in whole)


def test_with_no_frozen_block_the_front_end_trains_on_kept_features(tiny_processor, fixture_manifest, tmp_path):
    teacher = _teacher(tiny_processor)
    utts = load_dataset(fixture_manifest).utterances
    cut = EncoderCut(0, [0, 3]).resolve(4)
    targets = EncoderTargets(cut)
    targets.fill(teacher.model.model.encoder, utts, FeatureMemo(tiny_processor))
    start, _, _ = targets.batch([utts[0].id])
    assert start.shape[1] == teacher.model.config.num_mel_bins  # the log-mel features, not hidden states
    student = cut_student(teacher, cut.encoder_map, [0, 1]).model.model.encoder
    conv_before = student.conv2.weight.clone()
    trainer = EncoderTrainer(student, cut, targets, [u.id for u in utts[:4]], [u.id for u in utts[4:]],
                             EncoderTraining(steps=10, batch_size=2, lr=3e-3, warmup=2))
    before = trainer.dev_loss()
    trainer.fit()
    assert trainer.dev_loss() < before and not torch.equal(student.conv2.weight, conv_before)
    # A file whose rows hold the embedding's output (what files written before this kept) is refused.
    targets.save(tmp_path / "t.pt")
    data = torch.load(tmp_path / "t.pt", weights_only=True)
    del data["start"]
    torch.save(data, tmp_path / "old.pt")
    with pytest.raises(UserError, match="needs the features: delete it"):
        EncoderTargets.load(tmp_path / "old.pt", cut)
