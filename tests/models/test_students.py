"""Students cut from a teacher, and the vocabulary check."""

from __future__ import annotations

import pytest
import torch

from whisper_kdq.errors import UserError
from whisper_kdq.models.refs import load_model
from whisper_kdq.models.students import StudentSpec, check_vocabularies, make_student, parse_map, spaced_layers
from tests.conftest import tiny_model


def test_spaced_layers_keep_first_and_last():
    assert spaced_layers(6, 2) == [0, 5] and spaced_layers(6, 6) == list(range(6)) and spaced_layers(12, 4) == [0, 4, 7, 11]
    with pytest.raises(UserError):
        spaced_layers(6, 7)
    assert parse_map("0,2,5", 6, "encoder") == [0, 2, 5]
    for bad in ("0,9", "2,1", "a"):
        with pytest.raises(UserError):
            parse_map(bad, 6, "encoder")


def test_cut_student_copies_the_chosen_layers_and_generates(tiny_model_dir, fixture_manifest):
    teacher = load_model(str(tiny_model_dir))
    student = make_student(teacher, StudentSpec(decoder_map=[1]))
    s, t = student.loaded.model, teacher.model
    assert s.config.decoder_layers == 1 and student.decoder_map == [1] and student.encoder_map == [0, 1]
    assert torch.equal(s.model.decoder.layers[0].fc1.weight, t.model.decoder.layers[1].fc1.weight)
    assert torch.equal(s.model.encoder.conv1.weight, t.model.encoder.conv1.weight)
    out = s.generate(torch.randn(1, 80, 3000), max_new_tokens=4)  # KV cache layer numbering is right
    assert out.shape[1] >= 2


def test_vocabulary_mismatch_is_a_user_error(tiny_model_dir, tmp_path):
    teacher = load_model(str(tiny_model_dir))
    other = tiny_model(vocab_size=51864)
    other.save_pretrained(tmp_path)
    teacher.processor.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="different vocabularies"):
        check_vocabularies(teacher, load_model(str(tmp_path)))
