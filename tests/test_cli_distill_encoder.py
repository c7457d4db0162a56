"""`whisper-kdq distill --encoder-only`: a cut encoder trained by regression, resumable; real whisper-base."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from whisper_kdq.cli import app
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.reader import packed_codes
from tests.conftest import FIXTURES, tiny_model, tiny_processor_obj

runner = CliRunner()
FIXTURE_MANIFEST = FIXTURES / "manifest.jsonl"


@pytest.fixture(scope="module")
def teacher4(tmp_path_factory):
    """A tiny random teacher with four encoder blocks (something to cut)."""
    path = tmp_path_factory.mktemp("tiny4")
    tiny_model(seed=5, encoder_layers=4).save_pretrained(path)
    tiny_processor_obj().save_pretrained(path)
    return path


def _args(teacher, manifest, out, *extra):
    return ["distill", "--encoder-only", "--teacher", str(teacher), "--data", str(manifest), "--out", str(out),
            "--device", "cpu", "--batch-size", "2", "--lr", "3e-3", "--warmup", "1", *extra]


def test_encoder_only_trains_saves_and_resumes(teacher4, fixture_manifest, tmp_path):
    run = tmp_path / "run"
    args = _args(teacher4, fixture_manifest, run, "--student-encoder-map", "0,3", "--steps", "6", "--save-every", "3",
                 "--eval-data", str(fixture_manifest), "--json")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["encoder_map"] == [0, 3] and summary["frozen"] == 1 and summary["steps"] == 6
    assert set(summary["dev"]) == {"en", "ja"} and summary["best_dev_loss"] >= 0
    teacher = load_model(str(teacher4)).model.state_dict()
    student = load_model(summary["model"]).model
    assert student.config.encoder_layers == 2 and student.config.decoder_layers == 2
    state = student.state_dict()
    assert torch.equal(state["model.encoder.layers.0.fc1.weight"], teacher["model.encoder.layers.0.fc1.weight"])
    assert not torch.equal(state["model.encoder.layers.1.fc1.weight"], teacher["model.encoder.layers.3.fc1.weight"])
    assert torch.equal(state["model.decoder.layers.1.fc1.weight"], teacher["model.decoder.layers.1.fc1.weight"])
    assert (run / "targets.pt").is_file() and len(list((run / "checkpoints").glob("step-*"))) == 2
    # The same command again resumes the finished run; another cut in the same directory is refused.
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and json.loads(again.stdout)["steps"] == 6
    other = runner.invoke(app, _args(teacher4, fixture_manifest, run, "--student-encoder-map", "0,2", "--steps", "6"))
    assert other.exit_code == 2 and "holds a different run" in other.output


def test_encoder_only_dry_run_and_one_line_errors(teacher4, fixture_manifest, tmp_path):
    out = tmp_path / "r"
    result = runner.invoke(app, [*_args(teacher4, fixture_manifest, out, "--student-encoder-layers", "3"), "--dry-run",
                                 "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["encoder_map"] == [0, 2, 3] and info["imitates"] == [2, 3] and not out.exists()
    for extra, message in ((["--steps", "2"], "needs --student-encoder-layers"),
                           (["--student-encoder-map", "1,3"], "must be the teacher's first 1"),
                           (["--student-encoder-map", "0,3", "--frozen-encoder-layers", "2"], "leave one to train"),
                           (["--student-encoder-map", "0,3", "--quantize", "4", "--qat-init", "packed"],
                            "give the file as --student"),
                           (["--student-encoder-map", "0,3", "--freeze-encoder"], "drop --freeze-encoder")):
        result = runner.invoke(app, _args(teacher4, fixture_manifest, out, *extra))
        assert result.exit_code == 2, (extra, result.output)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output, result.output


def test_encoder_only_at_a_short_window(teacher4, fixture_manifest, tmp_path):
    """Targets computed at a 3-s window (150 positions) and kept with their window: a run at another window
    refuses the file instead of mixing lengths, and the saved student keeps its whole position table."""
    run, targets = tmp_path / "run", tmp_path / "targets.pt"
    args = _args(teacher4, fixture_manifest, run, "--student-encoder-map", "0,3", "--steps", "2", "--window", "3",
                 "--teacher-cache", str(targets), "--eval-data", str(fixture_manifest), "--json")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["dev"]) == {"en", "ja"}
    saved = torch.load(targets, weights_only=True)
    assert saved["window_s"] == 3 and {r[1].shape[-2] for r in saved["rows"].values()} == {150}
    student = load_model(summary["model"]).model
    teacher = load_model(str(teacher4)).model
    assert student.model.encoder.embed_positions.weight.shape == teacher.model.encoder.embed_positions.weight.shape
    from whisper_kdq.evaluate.window import trained_window

    assert trained_window(student) == 3.0 and trained_window(teacher) is None  # evaluate says so at 30 s
    # The same run directory at another window is another run; the targets file says which window it holds.
    other = runner.invoke(app, [*args[:-1], "--window", "4"])
    assert other.exit_code == 2 and "holds a different run" in other.output
    elsewhere = runner.invoke(app, [*_args(teacher4, fixture_manifest, tmp_path / "b", "--student-encoder-map", "0,3",
                                           "--steps", "1", "--teacher-cache", str(targets))])
    assert elsewhere.exit_code == 2 and "holds targets for a 3-s window, this run reads Whisper's 30-s window" \
        in elsewhere.output and "Traceback" not in elsewhere.output
    short = runner.invoke(app, _args(teacher4, fixture_manifest, tmp_path / "c", "--student-encoder-map", "0,3",
                                     "--steps", "1", "--window", "1"))
    assert short.exit_code == 2 and "longest clip is 2.3 s" in short.output


def test_quantization_aware_encoder_then_its_decoder_on_the_samepacked_codes(teacher4, fixture_manifest, tmp_path):
    """`--encoder-only --quantize 3 --frozen-encoder-layers 0`: the whole encoder, convolutions included, trains
    fake-quantized and is saved packed (decoder float); `distill --student THAT --freeze-encoder --qat-init packed`
    then trains the decoder on it, and the encoder's codes and scales come out exactly as they went in."""
    result = runner.invoke(app, _args(teacher4, fixture_manifest, tmp_path / "enc", "--student-encoder-map", "0,1,2,3",
                                      "--frozen-encoder-layers", "0", "--quantize", "3", "--steps", "4", "--json"))
    assert result.exit_code == 0, result.output
    encoder_file = json.loads(result.stdout)["model"]
    assert encoder_file.endswith(".safetensors")
    codes = packed_codes(encoder_file)
    assert {"model.encoder.conv1.weight", "model.encoder.layers.3.fc2.weight"} <= set(codes)
    assert not any(n.startswith("model.decoder.") for n in codes) and codes["model.encoder.layers.3.fc2.weight"].spec.bits == 3
    teacher = load_model(str(teacher4)).model.state_dict()
    student = load_model(encoder_file).model.state_dict()
    assert torch.equal(student["model.decoder.layers.1.fc1.weight"], teacher["model.decoder.layers.1.fc1.weight"])
    # The decoder trained on it, quantization-aware, from the file's codes.
    decoder_args = ["distill", "--teacher", str(teacher4), "--student", encoder_file, "--freeze-encoder", "--data",
                    str(fixture_manifest), "--device", "cpu", "--batch-size", "2", "--quantize", "3", "--steps", "2",
                    "--json"]
    result = runner.invoke(app, [*decoder_args, "--qat-init", "packed", "--out", str(tmp_path / "dec")])
    assert result.exit_code == 0, result.output
    after = packed_codes(json.loads(result.stdout)["model"])
    for name, q in codes.items():
        assert torch.equal(after[name].codes, q.codes) and torch.equal(after[name].scales, q.scales), name
    assert not torch.equal(after["model.decoder.layers.1.fc1.weight"].codes,
                           packed_codes(_rtn3(teacher4, tmp_path))["model.decoder.layers.1.fc1.weight"].codes)
    wrong = runner.invoke(app, [*decoder_args[:4], str(teacher4), *decoder_args[5:], "--qat-init", "packed", "--out",
                                str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "is not a packed checkpoint" in wrong.output and "Traceback" not in wrong.output


def test_encoder_only_goes_on_from_an_earlier_packed_encoder(teacher4, fixture_manifest, tmp_path):
    """`--encoder-only --student FILE --qat-init packed`: a second encoder run starts from the first one's trained
    blocks and codes (not the teacher's blocks and a new grid): before any step its dev loss is the first run's
    best, and the frozen block stays the teacher's."""
    first = runner.invoke(app, _args(teacher4, fixture_manifest, tmp_path / "a", "--student-encoder-map", "0,3",
                                     "--quantize", "3", "--steps", "4", "--eval-every", "4",
                                     "--eval-data", str(fixture_manifest), "--json"))
    assert first.exit_code == 0, first.output
    a = json.loads(first.stdout)
    args = _args(teacher4, fixture_manifest, tmp_path / "b", "--student-encoder-map", "0,3", "--quantize", "3",
                 "--steps", "2", "--eval-every", "2", "--lr", "1e-9", "--eval-data", str(fixture_manifest),
                 "--student", a["model"], "--qat-init", "packed", "--json")
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    b = json.loads(second.stdout)
    metrics = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert abs(metrics[0]["dev_loss"] - a["best_dev_loss"]) < 1e-4 * a["best_dev_loss"]
    fresh = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()][0]["dev_loss"]
    assert a["best_dev_loss"] < fresh and metrics[0]["dev_loss"] < fresh  # the first run had moved; the second kept it
    codes_a, codes_b = packed_codes(a["model"]), packed_codes(b["model"])
    assert torch.equal(codes_a["model.encoder.layers.1.fc1.weight"].codes, codes_b["model.encoder.layers.1.fc1.weight"].codes)
    teacher = load_model(str(teacher4)).model.state_dict()
    assert torch.equal(load_model(b["model"]).model.state_dict()["model.encoder.layers.0.fc1.weight"],
                       teacher["model.encoder.layers.0.fc1.weight"])
    # A student of another cut is one line.
    wrong = runner.invoke(app, _args(teacher4, fixture_manifest, tmp_path / "c", "--student-encoder-map", "0,2,3",
                                     "--quantize", "3", "--steps", "1", "--student", a["model"], "--qat-init", "packed"))
    assert wrong.exit_code == 2 and "needs 3 of width" in wrong.output and "Traceback" not in wrong.output


def _rtn3(model, tmp_path):
    out = tmp_path / "rtn3.safetensors"
    result = runner.invoke(app, ["quantize", "--model", str(model), "--bits", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _distances_to_teacher(teacher, models, window) -> tuple[list[float], int]:
    """Each model's encoder-output distance to the teacher's on the fixture clips the runs left out (4 and 5),
    all read at `window` (None: 30 s); and the frames of the teacher's output."""
    from contextlib import ExitStack

    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.distill.data import FeatureMemo
    from whisper_kdq.distill.encoder import frame_distance
    from whisper_kdq.evaluate.window import audio_window

    unseen = load_dataset(FIXTURE_MANIFEST).utterances[4:]
    feats, frames = FeatureMemo(teacher.processor, window_s=window)(unseen)
    with torch.no_grad(), ExitStack() as stack:
        for model in (teacher.model, *models) if window else ():
            stack.enter_context(audio_window(model, window))
        target = teacher.model.model.encoder(feats).last_hidden_state
        return [float(frame_distance(m.model.encoder(feats).last_hidden_state, target, frames)) for m in models], \
            target.shape[1]


@pytest.mark.integration
@pytest.mark.parametrize("window", [None, 10])
def test_encoder_only_on_whisper_base_gets_closer_to_the_teacher_on_unseen_clips(fixture_manifest, tmp_path, window):
    """Real whisper-base, real speech: a 2-block encoder (teacher block 0 frozen, one block from teacher block 5)
    trained on four clips reproduces the teacher's encoder output on the two other clips better than before;
    with `--window 10` trained on windowed targets and compared at that window (500 frames, not 1500)."""
    from whisper_kdq.models.students import cut_student

    run = tmp_path / "run"
    result = runner.invoke(app, ["distill", "--encoder-only", "--teacher", "base", "--data", str(fixture_manifest),
                                 "--limit", "4", "--out", str(run), "--student-encoder-map", "0,5", "--steps", "16",
                                 "--batch-size", "2", "--lr", "5e-4", "--warmup", "2", "--device", "cpu", "--json",
                                 *(["--window", str(window)] if window else [])])
    assert result.exit_code == 0, result.output
    teacher = load_model("base")
    trained = load_model(json.loads(result.stdout)["model"]).model
    untrained = cut_student(teacher, [0, 5], list(range(6))).model
    (before, after), frames = _distances_to_teacher(teacher, [untrained, trained], window)
    assert frames == (window or 30) * 50 and after < 0.8 * before, (before, after)


@pytest.mark.integration
def test_quantization_aware_whisper_base_encoder_then_decoder(fixture_manifest, tmp_path):
    """Real whisper-base, real speech, at a 10-s window: the whole encoder (convolutions included) trained
    3-bit by regression on four clips is closer to the teacher's encoder output on the two unseen clips than
    the same plan's post-training codes; the decoder then trains on it from the file's codes, which stay."""
    from whisper_kdq.distill.encoder import EncoderCut, encoder_plan
    from whisper_kdq.quant.checkpoint import quantized_copy
    from whisper_kdq.quant.plan import plan_from_options

    common = ["--teacher", "base", "--data", str(fixture_manifest), "--limit", "4", "--batch-size", "2",
              "--window", "10", "--device", "cpu", "--quantize", "3", "--json"]
    result = runner.invoke(app, ["distill", "--encoder-only", *common, "--out", str(tmp_path / "enc"),
                                 "--student-encoder-map", "0,1,2,3,4,5", "--frozen-encoder-layers", "0",
                                 "--steps", "16", "--lr", "2e-4", "--warmup", "2"])
    assert result.exit_code == 0, result.output
    encoder_file = json.loads(result.stdout)["model"]
    teacher = load_model("base")
    trained = load_model(encoder_file).model
    cut = EncoderCut(0, list(range(6))).resolve(6)
    post_training = quantized_copy(teacher.model, encoder_plan(plan_from_options(bits=3), cut))
    (before, after), _ = _distances_to_teacher(teacher, [post_training, trained], 10)
    assert after < 0.8 * before, (before, after)
    # A second encoder run goes on from the file (its blocks and codes): before its first step it stands where
    # the first run's best step did (the same four clips choose; no dev split given).
    more = runner.invoke(app, ["distill", "--encoder-only", *common, "--out", str(tmp_path / "enc2"),
                               "--student-encoder-map", "0,1,2,3,4,5", "--frozen-encoder-layers", "0", "--steps", "1",
                               "--lr", "1e-9", "--warmup", "1", "--student", encoder_file, "--qat-init", "packed",
                               "--teacher-cache", str(tmp_path / "enc" / "targets.pt")])
    assert more.exit_code == 0, more.output
    first = json.loads((tmp_path / "enc2" / "metrics.jsonl").read_text().splitlines()[0])["dev_loss"]
    assert abs(first - json.loads(result.stdout)["best_dev_loss"]) < 1e-3 * first
    result = runner.invoke(app, ["distill", *common, "--student", encoder_file, "--freeze-encoder", "--steps", "2",
                                 "--qat-init", "packed", "--out", str(tmp_path / "dec")])
    assert result.exit_code == 0, result.output
    codes, after_decoder = packed_codes(encoder_file), packed_codes(json.loads(result.stdout)["model"])
    assert any(n.startswith("model.decoder.") for n in after_decoder)
    for name, q in codes.items():
        assert torch.equal(after_decoder[name].codes, q.codes) and torch.equal(after_decoder[name].scales, q.scales)


def test_encoder_only_with_speed_perturbed_copies(teacher4, fixture_manifest, tmp_path):
    """`--speed-perturb`: every clip also trains at each speed (targets computed for the copies too); the run
    records the factors, so the same run resumes and other factors in the same directory are refused."""
    from whisper_kdq.data.augment import copy_id

    run = tmp_path / "run"
    args = _args(teacher4, fixture_manifest, run, "--student-encoder-map", "0,3", "--steps", "2", "--save-every", "2",
                 "--speed-perturb", "0.9,1.1", "--json")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = torch.load(run / "targets.pt", weights_only=True)["rows"]
    ids = [json.loads(line)["id"] for line in fixture_manifest.read_text().splitlines()]
    assert set(rows) == {i for uid in ids for i in (uid, copy_id(uid, 0.9), copy_id(uid, 1.1))}
    # A copy 1.1 times faster has fewer audio frames than its clip.
    assert rows[copy_id(ids[0], 1.1)][2] < rows[ids[0]][2]
    assert runner.invoke(app, args).exit_code == 0
    other = runner.invoke(app, [*args[:-2], "1.2", "--json"])
    assert other.exit_code == 2 and "holds a different run" in other.output
    bad = runner.invoke(app, [*args[:-2], "1", "--json"])
    assert bad.exit_code == 2 and "--speed-perturb" in bad.output
