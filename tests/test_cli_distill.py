"""`whisper-kdq distill`: dry run, exact resume after SIGKILL, two-process data parallelism, real whisper-base."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from whisper_kdq.cli import app

runner = CliRunner()


def _args(teacher, manifest, out, *extra):
    return ["distill", "--teacher", str(teacher), "--data", str(manifest), "--out", str(out), "--device", "cpu",
            "--student-decoder-layers", "1", "--batch-size", "2", "--hidden", "1", "--lr", "1e-3", "--warmup", "2", *extra]


def _losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r}


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_model_dir, fixture_manifest, tmp_path):
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / "run"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["layer_map"]["decoder"] == [1] and info["student"]["decoder_layers"] == 1
    assert info["losses"]["matching"] == "restrained-dynamic" and info["student"]["params"] < info["teacher"]["params"]
    assert not (tmp_path / "run").exists()


def test_bad_options_are_one_line_errors(tiny_model_dir, fixture_manifest, tmp_path):
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / "r"), "--student-decoder-map", "0,7"])
    assert result.exit_code == 2 and "layers 0-1" in result.output
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / "r"), "--matching", "magic"])
    assert result.exit_code == 2 and "unknown matching strategy" in result.output
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / "r"), "--hidden-loss", "cosine"])
    assert result.exit_code == 2 and "unknown hidden loss" in result.output


def test_sigkill_and_resume_reach_the_same_loss(tiny_model_dir, fixture_manifest, tmp_path):
    steps = ["--steps", "14", "--save-every", "3"]
    whole = tmp_path / "whole"
    assert runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, whole), *steps]).exit_code == 0
    kept = sorted(p.name for p in (whole / "checkpoints").glob("step-*"))
    assert kept == ["step-000009", "step-000012"]  # rotation keeps the last two (--keep 2)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "whisper_kdq", *_args(tiny_model_dir, fixture_manifest, killed), *steps]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").is_file() and max(_losses(killed) or [0]) >= 8:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, killed), *steps, "--json"])
    assert result.exit_code == 0, result.output
    a, b = _losses(whole), _losses(killed)
    assert sorted(b) == list(range(1, 15))
    assert abs(a[14] - b[14]) < 1e-4 * max(1.0, abs(a[14]))
    assert json.loads((killed / "layer_map.json").read_text())["decoder"] == [1]
    # A different run in the same directory is refused.
    other = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, killed), *steps, "--lr", "5e-4"])
    assert other.exit_code == 2 and "different run" in other.output


def test_two_processes_equal_one_with_the_same_global_batch(tiny_model_dir, fixture_manifest, tmp_path):
    common = ["--steps", "3", "--hidden", "0", "--lr", "1e-3"]
    single = tmp_path / "single"
    args = _args(tiny_model_dir, fixture_manifest, single, *common)
    args[args.index("--batch-size") + 1] = "4"
    assert runner.invoke(app, args).exit_code == 0
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "whisper_kdq", *_args(tiny_model_dir, fixture_manifest, ddp, *common)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Each rank trained on its own half of every global batch, and together on the single run's batches.
    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.distill.data import length_batches

    ranks = [[json.loads(x) for x in (ddp / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    utts = load_dataset(fixture_manifest).utterances
    for index, (r0, r1) in enumerate(zip(*ranks)):
        assert r0["index"] == r1["index"] == index and not set(r0["ids"]) & set(r1["ids"])
        epoch, pos = divmod(index, len(length_batches(utts, 4, 0, 0)))
        assert sorted(r0["ids"] + r1["ids"]) == sorted(utts[i].id for i in length_batches(utts, 4, 0, epoch)[pos])
    a = load_file(single / "model" / "model.safetensors")
    b = load_file(ddp / "model" / "model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    moved = max((a[k] - start[k]).abs().max().item() for k in a if k in start and "decoder.layers" not in k)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert moved > 1e-4 and diff < 0.05 * moved, (moved, diff)


def test_teacher_cache_file_serves_later_runs(tiny_model_dir, fixture_manifest, tmp_path):
    cache = tmp_path / "teacher.pt"
    common = ["--freeze-encoder", "--steps", "2", "--teacher-cache", str(cache), "--json"]
    first = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / "a"), *common])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["teacher_s"] > 0 and cache.is_file()
    stamp = cache.stat().st_mtime_ns
    # Distillation again, and plain fine-tuning (its frozen encoder is the teacher's): no teacher work at all.
    for name, extra in (("b", []), ("ce", ["--kd", "0", "--hidden", "0"])):
        again = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / name), *common, *extra])
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["teacher_s"] == 0.0
    assert cache.stat().st_mtime_ns == stamp  # read, not rewritten
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_speed_perturbed_copies_train_beside_their_clips(tiny_model_dir, fixture_manifest, tmp_path):
    """`--speed-perturb 1.1`: an epoch (6 steps of 2) meets every clip and its faster copy, whose teacher
    outputs are cached by their own ids; the run records the factor."""
    from whisper_kdq.data.augment import copy_id

    cache = tmp_path / "teacher.pt"
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / "a"), "--freeze-encoder", "--steps", "6",
                                 "--teacher-cache", str(cache), "--speed-perturb", "1.1", "--json"])
    assert result.exit_code == 0, result.output
    saved = torch.load(cache, weights_only=False)["encoder_out"]
    ids = [json.loads(line)["id"] for line in fixture_manifest.read_text().splitlines()]
    assert set(saved) == set(ids) | {copy_id(i, 1.1) for i in ids}
    assert json.loads((tmp_path / "a" / "run.json").read_text())["speed_perturb"] == [1.1]


def test_pretrained_narrower_student_learns_through_projections(tiny_model_dir, fixture_manifest, tmp_path):
    from tests.conftest import tiny_model, tiny_processor_obj

    narrow = tmp_path / "narrow"
    tiny_model(seed=5, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, decoder_layers=1).save_pretrained(narrow)
    tiny_processor_obj().save_pretrained(narrow)
    run = tmp_path / "run"
    result = runner.invoke(app, ["distill", "--teacher", str(tiny_model_dir), "--student", str(narrow), "--data",
                                 str(fixture_manifest), "--out", str(run), "--device", "cpu", "--batch-size", "2",
                                 "--hidden", "1", "--steps", "2", "--save-every", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert all(r["hidden"] > 0 and r["hidden_enc"] > 0 for r in rows)
    state = torch.load(run / "checkpoints" / "step-000002" / "state.pt", weights_only=False)
    assert state["projection"]["weight"].shape == (32, 64) and state["encoder_projection"]["weight"].shape == (32, 64)


def test_encoder_hidden_kd_when_the_encoder_trains(tiny_model_dir, fixture_manifest, tmp_path):
    run = tmp_path / "enc"
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, run), "--student-encoder-layers", "1",
                                 "--steps", "3", "--matching", "dynamic", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert all(r["hidden_enc"] > 0 and len(r["encoder_layer_map"]) == 1 for r in rows)
    assert json.loads((run / "layer_map.json").read_text())["encoder"] == [1]
    start, end = load_file(tiny_model_dir / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    key = "model.encoder.layers.{}.fc1.weight"
    assert not torch.equal(start[key.format(1)], end[key.format(0)])  # the encoder trained


@pytest.mark.integration
def test_distill_whisper_base_student(fixture_manifest, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["distill", "--teacher", "base", "--data", str(fixture_manifest), "--out", str(run),
                                 "--freeze-encoder", "--student-decoder-layers", "2", "--steps", "4", "--batch-size", "3",
                                 "--lr", "5e-4", "--warmup", "1", "--hidden", "1", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    losses = _losses(run)
    assert losses[4] < losses[1]
    ev = runner.invoke(app, ["evaluate", "--model", str(run / "model"), "--data", str(fixture_manifest), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["models"][0]["params"] < 60_000_000


def test_quantization_aware_distillation_writes_a_packed_student(tiny_model_dir, fixture_manifest, tmp_path):
    from whisper_kdq.models.refs import load_model

    plan = tmp_path / "plan.json"
    result = runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                                 "--teacher", str(tiny_model_dir), "--low-fraction", "0.5", "--out", str(plan), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "qat"
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, run), "--steps", "3", "--plan", str(plan), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"].endswith("model.safetensors")
    packed = load_model(summary["model"])
    bits = {spec["bits"] for spec in packed.info["tensors"].values()}
    assert packed.kind == "packed" and bits == {3, 4}
    assert packed.model.config.decoder_layers == 1


def test_freeze_embedding_keeps_the_token_embedding_and_its_quantization(tiny_model_dir, fixture_manifest, tmp_path):
    from whisper_kdq.models.refs import load_model

    teacher = load_model(str(tiny_model_dir)).model
    run = tmp_path / "float"
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, run), "--steps", "3", "--freeze-embedding",
                                 "--json"])
    assert result.exit_code == 0, result.output
    student = load_model(json.loads(result.stdout)["model"]).model
    emb = "model.decoder.embed_tokens.weight"
    assert torch.equal(student.state_dict()[emb], teacher.state_dict()[emb])
    moved = "model.decoder.layers.0.fc1.weight"
    assert not torch.equal(student.state_dict()[moved], teacher.state_dict()[moved])
    # Quantization-aware: the embedding's codes and scales stay those of post-training quantization.
    plan = tmp_path / "plan.json"
    assert runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--bits", "4", "--dry-run",
                               "--save-plan", str(plan)]).exit_code == 0
    ptq = tmp_path / "ptq.safetensors"
    assert runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--plan", str(plan), "--out", str(ptq)]).exit_code == 0
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / "qat"), "--steps", "3",
                                 "--student-decoder-layers", "2", "--plan", str(plan), "--freeze-embedding", "--json"])
    assert result.exit_code == 0, result.output
    qat = load_model(json.loads(result.stdout)["model"]).model.state_dict()
    post_training = load_model(str(ptq)).model.state_dict()
    assert torch.equal(qat[emb], post_training[emb])
    assert not torch.equal(qat[moved], post_training[moved])


def test_quantization_aware_run_keeps_its_best_dev_checkpoint(tiny_model_dir, fixture_manifest, tmp_path):
    plan = tmp_path / "plan.json"
    assert runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--bits", "4", "--dry-run",
                               "--save-plan", str(plan)]).exit_code == 0
    run = tmp_path / "qat"
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, run), "--steps", "3", "--plan", str(plan),
                                 "--eval-data", str(fixture_manifest), "--eval-every", "1", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    dev = [r["dev"]["dev_error"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "dev" in r]
    assert len(dev) == 3 and summary["best_dev_error"] == min(dev)
    # The packed file is the best checkpoint: evaluated as a user would, it scores what training measured
    # on the fake-quantized weights (computed once per evaluation, parametrize.cached).
    # Same batches as in training: a random model never ends a transcript, and the runaway guard allows new
    # tokens by the longest clip of the batch.
    ev = runner.invoke(app, ["evaluate", "--model", summary["model"], "--data", str(fixture_manifest), "--batch-size", "2",
                             "--json"])
    assert ev.exit_code == 0, ev.output
    from whisper_kdq.distill.trainer import dev_error

    assert abs(dev_error(json.loads(ev.stdout)["models"][0]) - summary["best_dev_error"]) < 1e-9


def test_quantize_flags_train_without_a_plan_file(tiny_model_dir, fixture_manifest, tmp_path):
    from whisper_kdq.models.refs import load_model

    run = tmp_path / "qat"
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, run), "--steps", "2", "--quantize", "4",
                                 "--scheme", "apot", "--decoder-bits", "3", "--override", "fc2=float", "--act-bits", "8",
                                 "--json"])
    assert result.exit_code == 0, result.output
    student = load_model(json.loads(result.stdout)["model"])
    assert student.info["activation_bits"] == 8  # trained and stored with per-token 8-bit activations
    specs = student.info["tensors"]
    assert {s["scheme"] for s in specs.values()} == {"apot"}
    bits = {name: s["bits"] for name, s in specs.items()}
    assert bits["model.decoder.layers.0.fc1.weight"] == 3 and bits["model.encoder.layers.0.fc1.weight"] == 4
    assert not any("fc2" in name for name in specs)  # --override fc2=float: kept in float
    # The same flags after a plan file add rules to it; the file's layer selection is kept.
    plan = tmp_path / "plan.json"
    assert runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                               "--teacher", str(tiny_model_dir), "--low-fraction", "0.5", "--out", str(plan),
                               "--device", "cpu"]).exit_code == 0
    from whisper_kdq.cli.distill import _plan_from_flags

    merged = _plan_from_flags(plan, None, "uniform", None, {"encoder": 8, "decoder": None, "embedding": None}, [])
    assert merged["selection"] == json.loads(plan.read_text())["selection"] and merged["rules"][-1]["bits"] == 8


def test_quantize_flag_errors_are_one_line(tiny_model_dir, fixture_manifest, tmp_path):
    args = _args(tiny_model_dir, fixture_manifest, tmp_path / "r")
    result = runner.invoke(app, [*args, "--scheme", "apot"])
    assert result.exit_code == 2 and "--scheme needs --quantize BITS" in result.output
    result = runner.invoke(app, [*args, "--act-bits", "8"])
    assert result.exit_code == 2 and "--act-bits needs --quantize BITS" in result.output
    result = runner.invoke(app, [*args, "--full-range"])
    assert result.exit_code == 2 and "--full-range needs --quantize BITS" in result.output
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    result = runner.invoke(app, [*args, "--plan", str(plan), "--full-range"])
    assert result.exit_code == 2 and "with --plan use --override" in result.output
    from whisper_kdq.cli.distill import _plan_from_flags

    flags = _plan_from_flags(None, 2, "uniform", None, {"encoder": 3, "decoder": None, "embedding": None}, [], None, True)
    assert flags["default"]["full_range"] is True and flags["rules"][-1] == {"pattern": r"^model\.encoder\.layers\.", "bits": 3}
    result = runner.invoke(app, [*args, "--quantize", "4", "--plan", str(plan)])
    assert result.exit_code == 2 and "give one" in result.output
    result = runner.invoke(app, [*args, "--quantize", "9"])
    assert result.exit_code == 2 and "bits" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_qat_init_gptq_starts_from_calibrated_codes(tiny_model_dir, fixture_manifest, tmp_path):
    args = _args(tiny_model_dir, fixture_manifest, tmp_path / "r")
    result = runner.invoke(app, [*args, "--qat-init", "gptq"])
    assert result.exit_code == 2 and "--qat-init gptq needs --plan or --quantize" in result.output
    result = runner.invoke(app, [*args, "--quantize", "4", "--qat-init", "obs"])
    assert result.exit_code == 2 and "--qat-init" in result.output
    assert not (tmp_path / "r").exists()
    result = runner.invoke(app, [*args, "--steps", "2", "--quantize", "4", "--qat-init", "gptq", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "run.json").read_text())["qat_init"] == "gptq"
    from whisper_kdq.models.refs import load_model

    assert load_model(json.loads(result.stdout)["model"]).kind == "packed"


@pytest.mark.integration
def test_qat_from_gptq_on_whisper_base_keeps_the_frozen_encoders_gptq_codes(fixture_manifest, tmp_path):
    """Real whisper-base, frozen 4-bit encoder: the packed student's encoder is GPTQ's (calibrated on the
    training clips), not round-to-nearest, and it transcribes."""
    from whisper_kdq.models.refs import load_model
    from whisper_kdq.quant.schemes import QuantSpec, dequantize, quantize

    run = tmp_path / "run"
    result = runner.invoke(app, ["distill", "--teacher", "base", "--data", str(fixture_manifest), "--out", str(run),
                                 "--freeze-encoder", "--student-decoder-layers", "6", "--steps", "1", "--batch-size", "3",
                                 "--lr", "1e-5", "--warmup", "1", "--quantize", "8", "--encoder-bits", "4",
                                 "--qat-init", "gptq", "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    student = load_model(json.loads(result.stdout)["model"])
    base = dict(load_model("base").model.named_parameters())
    name = "model.encoder.layers.3.fc1.weight"
    w = base[name].detach()
    got = dict(student.model.named_parameters())[name].detach()
    rtn = dequantize(quantize(w, QuantSpec("uniform", 4, "group", 128)))
    assert student.info["tensors"][name]["bits"] == 4
    assert (got - rtn).abs().max() > 0 and (got - w).abs().mean() < 2 * (rtn - w).abs().mean()
    ev = runner.invoke(app, ["evaluate", "--model", json.loads(result.stdout)["model"], "--data", str(fixture_manifest),
                             "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["models"][0]["languages"]["en"]["wer"] < 0.5


@pytest.mark.integration
def test_quantization_aware_whisper_base_student_packs_what_it_trained(fixture_manifest, tmp_path):
    from whisper_kdq.models.refs import load_model

    run = tmp_path / "run"
    result = runner.invoke(app, ["distill", "--teacher", "base", "--data", str(fixture_manifest), "--out", str(run),
                                 "--freeze-encoder", "--student-decoder-layers", "2", "--steps", "2", "--batch-size", "3",
                                 "--lr", "1e-4", "--warmup", "1", "--hidden", "1", "--quantize", "4", "--encoder-bits", "8",
                                 "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    packed = load_model(summary["model"])
    bits = {name: s["bits"] for name, s in packed.info["tensors"].items()}
    assert packed.kind == "packed" and packed.model.config.decoder_layers == 2
    assert bits["model.encoder.layers.5.fc1.weight"] == 8 and bits["model.decoder.layers.1.fc1.weight"] == 4
    ev = runner.invoke(app, ["evaluate", "--model", summary["model"], "--data", str(fixture_manifest), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["models"][0]["size_bytes"] < 0.3 * 4 * 72_593_920
