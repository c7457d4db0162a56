"""`whisper-kdq distill`: train a student from a teacher (optionally quantization-aware), resumable."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from whisper_kdq.cli import app
from whisper_kdq.cli.common import console, parse_group_size, print_json, resolve_device, user_errors
from whisper_kdq.errors import UserError


@app.command()
@user_errors
def distill(
    teacher: str = typer.Option("base", help="Teacher model reference."),
    data: Path = typer.Option(..., "--data", "-d", help="Training manifest."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (re-running it resumes)."),
    student: Optional[str] = typer.Option(None, help="A pretrained smaller Whisper (same vocabulary), e.g. tiny."),
    student_encoder_layers: Optional[int] = typer.Option(None, help="Cut: this many teacher encoder layers, spaced."),
    student_decoder_layers: Optional[int] = typer.Option(None, help="Cut: this many teacher decoder layers, spaced."),
    student_encoder_map: Optional[str] = typer.Option(None, help="Cut: explicit teacher encoder layers, e.g. 0,2,5."),
    student_decoder_map: Optional[str] = typer.Option(None, help="Cut: explicit teacher decoder layers, e.g. 0,5."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Copy the whole encoder and train only the decoder (its output is cached)."),
    freeze_embedding: bool = typer.Option(False, "--freeze-embedding", help="Keep the token embedding / output projection (and its quantization scales) as loaded."),
    eval_data: Optional[Path] = typer.Option(None, help="Dev manifest for periodic evaluation and best-checkpoint choice."),
    split: Optional[str] = typer.Option(None, help="Use only this split of --data (e.g. train)."),
    eval_split: Optional[str] = typer.Option(None, help="Use only this split of --eval-data (e.g. dev)."),
    limit: Optional[int] = typer.Option(None, help="Use the first N training utterances."),
    eval_limit: Optional[int] = typer.Option(None, help="Evaluate on the first N dev utterances."),
    ce_weight: float = typer.Option(1.0, "--ce", help="Weight of cross-entropy on the transcripts."),
    kd_weight: float = typer.Option(1.0, "--kd", help="Weight of logits distillation (0 = plain fine-tuning)."),
    hidden_weight: float = typer.Option(0.0, "--hidden", help="Weight of hidden-state distillation."),
    temperature: float = typer.Option(2.0, help="Distillation temperature (KL is scaled by T^2)."),
    matching: str = typer.Option("restrained-dynamic", help="Layer matching: static, dynamic, restrained-dynamic."),
    hidden_loss: str = typer.Option("mse", help="Hidden-state distance: mse (normalised) or softmax-mse (the paper's)."),
    pseudo_label: bool = typer.Option(False, "--pseudo-label", help="Train on the teacher's transcripts."),
    pseudo_label_max_wer: float = typer.Option(0.3, help="Drop pseudo-labels further than this from the reference (WER, CER for ja/zh)."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Quantization plan: train quantization-aware, save a packed checkpoint."),
    quantize_bits: Optional[int] = typer.Option(None, "--quantize", help="Train quantization-aware at BITS (2-8) without a plan file; the flags below as in `quantize`."),
    scheme: str = typer.Option("uniform", help="With --quantize: uniform or apot."),
    group_size: Optional[str] = typer.Option(None, help="With --quantize: N, 'channel' or 'tensor' (default: channel at 8 bits, 128 below)."),
    full_range: bool = typer.Option(False, "--full-range", help="With --quantize: uniform symmetric on all 2**bits codes, signed scales (q4_0's grid)."),
    encoder_bits: Optional[int] = typer.Option(None, help="With --quantize or --plan: bits for encoder layers (0 = float)."),
    decoder_bits: Optional[int] = typer.Option(None, help="With --quantize or --plan: bits for decoder layers (0 = float)."),
    embedding_bits: Optional[int] = typer.Option(None, help="With --quantize or --plan: bits for the token embedding (0 = float)."),
    override: List[str] = typer.Option([], "--override", help="With --quantize or --plan: REGEX=BITS or REGEX=float (repeatable)."),
    act_bits: Optional[int] = typer.Option(None, "--act-bits", help="With --quantize or --plan: round the inputs of quantized linear layers to N bits (4-8) per token (default: float)."),
    qat_init: str = typer.Option("rtn", "--qat-init", help="With --quantize or --plan: starting codes of the quantized weights, rtn (nearest after the clip search), gptq (calibrated on 32 training clips; a frozen encoder keeps them) or packed (those of a packed --student, where the plan keeps their spec)."),
    encoder_only: bool = typer.Option(False, "--encoder-only", help="Train only a cut encoder, by regression on the teacher's encoder output (no decoder work: affordable on a CPU); the decoder is the teacher's, or --student-decoder-map's blocks untrained. With --plan/--quantize the trained blocks (and convolutions, with --frozen-encoder-layers 0) train quantization-aware and the student is saved packed. With --student FILE the trained part starts from FILE's encoder (e.g. an earlier --encoder-only run's; with --qat-init packed from its codes too)."),
    frozen_encoder_layers: int = typer.Option(1, help="With --encoder-only: the first N student encoder blocks are the teacher's first N, kept frozen (0: the convolutions train too)."),
    steps: int = typer.Option(300, help="Optimizer steps."),
    batch_size: int = typer.Option(8, help="Utterances per step and process."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps."),
    lr: float = typer.Option(1e-4),
    warmup: int = typer.Option(20, help="Linear warm-up steps, then linear decay."),
    max_grad_norm: float = typer.Option(1.0),
    seed: int = typer.Option(0),
    save_every: int = typer.Option(50, help="Checkpoint every N steps."),
    keep: int = typer.Option(2, help="Checkpoints kept."),
    eval_every: int = typer.Option(0, help="Evaluate on dev every N steps (0: at the end only)."),
    top_k: int = typer.Option(64, help="Teacher log-probs cached per position."),
    teacher_cache: Optional[Path] = typer.Option(None, help="File keeping the teacher's outputs for later runs on the same data."),
    speed_perturb: Optional[str] = typer.Option(None, "--speed-perturb", help="Add a copy of every training clip played at each of these speeds, e.g. 0.9,1.1 (pitch and formants move with it: more voices from the same clips; copies that outgrow the window are left out)."),
    window: Optional[float] = typer.Option(None, "--window", help="Train (and evaluate on dev) reading S-second audio windows instead of 30 s: far less encoder work on short clips. Every clip must fit; the saved model is a standard Whisper model (decode it with `evaluate --window S`). With --encoder-only: the targets are computed at that window."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (bf16 autocast on CUDA)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the student, layer map and loss plan; train nothing."),
    force: bool = typer.Option(False, "--force", help="Start over in a run directory that holds a different run."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Distil TEACHER into a smaller student on DATA; re-run the same command to resume."""
    from whisper_kdq.data.augment import parse_factors
    from whisper_kdq.distill import DistillRequest, LossWeights, StudentSpec, TrainConfig, describe, run_distillation
    from whisper_kdq.models.refs import load_model
    from whisper_kdq.models.students import make_student, parse_map

    dev_name = resolve_device(device)
    factors = None if speed_perturb is None else parse_factors(speed_perturb)
    if window is not None:
        from whisper_kdq.evaluate.window import window_or_none, window_positions

        window_positions(window)  # refuses a window outside (0, 30] before anything loads
        window = window_or_none(window)
    weights = LossWeights(ce_weight, kd_weight, hidden_weight, temperature, matching, hidden_loss)
    weights.validate()
    cfg = TrainConfig(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup=warmup,
                      max_grad_norm=max_grad_norm, seed=seed, save_every=save_every, keep=keep, eval_every=eval_every,
                      eval_limit=eval_limit, device=dev_name, top_k=top_k, progress=not as_json,
                      teacher_cache=None if teacher_cache is None else str(teacher_cache), freeze_embedding=freeze_embedding,
                      window_s=window)
    plan_dict = _plan_from_flags(plan, quantize_bits, scheme, group_size,
                                 {"encoder": encoder_bits, "decoder": decoder_bits, "embedding": embedding_bits}, override,
                                 act_bits, full_range)
    if qat_init not in ("rtn", "gptq", "packed"):
        raise UserError(f"unknown --qat-init {qat_init!r}: use rtn, gptq or packed")
    if qat_init != "rtn" and plan_dict is None:
        raise UserError(f"--qat-init {qat_init} needs --plan or --quantize")
    start = None if qat_init == "rtn" else qat_init  # runs record the default start as none
    with console.status(f"loading teacher {teacher}"):
        t = load_model(teacher, device=dev_name)
    spec = StudentSpec(student, student_encoder_layers, student_decoder_layers,
                       parse_map(student_encoder_map, t.model.config.encoder_layers, "encoder"),
                       parse_map(student_decoder_map, t.model.config.decoder_layers, "decoder"), freeze_encoder)
    request = DistillRequest(teacher, spec, weights, cfg, plan_dict, pseudo_label, pseudo_label_max_wer,
                             str(data), None if eval_data is None else str(eval_data),
                             start, factors)
    if encoder_only:
        return _encoder_only(t, spec, data, split, limit, eval_data, eval_split, eval_limit, out, force, as_json,
                             frozen_encoder_layers, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                             max_grad_norm=max_grad_norm, seed=seed, save_every=save_every, keep=keep,
                             eval_every=eval_every or save_every, dry_run=dry_run,
                             plan=plan_dict, qat_init=start,
                             conflicts={"--freeze-encoder": freeze_encoder, "--pseudo-label": pseudo_label},
                             targets_file=teacher_cache, device=dev_name, window_s=window, speed=factors)
    if dry_run:
        return _show(describe(make_student(t, spec, dev_name), t, request), as_json)
    train, dev = _datasets(data, split, limit, eval_data, eval_split, eval_limit, factors, window)
    summary = _train_with_progress(request, train, dev, out, force, t, as_json)
    if as_json:
        print_json(summary)
    else:
        dev_line = "" if not summary.get("dev") else f"; dev error {summary['dev']['dev_error']:.4f}"
        console.print(f"trained {summary['steps']} steps in {summary['wall_s']:.0f} s "
                      f"({summary['samples_per_s']:.2f} samples/s){dev_line}; student saved to {summary.get('model')}")


def _show(info: dict, as_json: bool) -> None:
    if as_json:
        print_json(info)
    else:
        console.print_json(json.dumps(info))


def _datasets(data, split, limit, eval_data, eval_split, eval_limit, speed=None, window_s=None):
    """(training set with its `speed` copies, dev set or None); an empty training set is a one-line error."""
    from whisper_kdq.data.augment import with_speed_copies
    from whisper_kdq.data.manifest import load_dataset

    train = load_dataset(data, split=split, limit=limit)
    dev = load_dataset(eval_data, split=eval_split, limit=eval_limit) if eval_data else None
    if not len(train):
        raise UserError(f"{data}: no training utterances" + (f" in split {split!r}" if split else ""))
    if speed:
        train = with_speed_copies(train, speed, window_s or 30.0)
    return train, dev


def _plan_from_flags(plan: Optional[Path], bits: Optional[int], scheme: str, group_size: Optional[str],
                     component_bits: dict, overrides: List[str], act_bits: Optional[int] = None,
                     full_range: bool = False) -> Optional[dict]:
    """The quantization plan (as its JSON) of `--plan FILE` and/or `--quantize BITS` and their flags; None: float
    training. The flags describe a plan exactly as `whisper-kdq quantize` reads them; with `--plan` the component
    bits and overrides add rules after the file's (e.g. `--plan sel.json --override 'fc2=float'`)."""
    from whisper_kdq.quant.plan import load_plan, plan_from_options

    if bits is not None and plan is not None:
        raise UserError("--quantize and --plan both describe the quantization: give one (flags add rules to --plan)")
    if bits is None and plan is None:
        stray = [flag for flag, given in (("--scheme", scheme != "uniform"), ("--group-size", group_size is not None),
                                          ("--full-range", full_range),
                                          ("--encoder-bits", component_bits["encoder"] is not None),
                                          ("--decoder-bits", component_bits["decoder"] is not None),
                                          ("--embedding-bits", component_bits["embedding"] is not None),
                                          ("--override", bool(overrides)), ("--act-bits", act_bits is not None))
                 if given]
        if stray:
            raise UserError(f"{stray[0]} needs --quantize BITS or --plan FILE (without them the student trains in float)")
        return None
    if plan is not None:
        base = load_plan(plan)  # validates, naming the field
        if scheme != "uniform" or group_size is not None or full_range:
            raise UserError("--scheme, --group-size and --full-range apply to --quantize; with --plan use --override REGEX=SPEC")
        data = json.loads(plan.read_text(encoding="utf-8"))
        if not any(b is not None for b in component_bits.values()) and not overrides and act_bits is None:
            return data  # as written, selection included
        merged = plan_from_options(component_bits=component_bits, overrides=overrides, base=base,
                                   activation_bits=act_bits).as_dict()
        return {**data, **merged}  # keeps the file's `selection` (layers to distil) beside the new rules
    size, granularity = parse_group_size(group_size)
    return plan_from_options(bits=bits, scheme=scheme, group_size=size, granularity=granularity,
                             component_bits=component_bits, overrides=overrides, activation_bits=act_bits,
                             full_range=full_range).as_dict()


@contextmanager
def _step_bar(label: str, total: int, quiet: bool):
    """A rich bar over training steps with a free-text field (loss, lr, status); yields (bar, task)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=quiet) as bar:
        yield bar, bar.add_task("train", total=total, info="")


def _train_with_progress(request, train, dev, out, force, teacher, quiet: bool) -> dict:
    from whisper_kdq.distill import run_distillation

    with _step_bar("distill", request.train.steps, quiet) as (bar, task):

        def on_step(record: dict) -> None:
            info = f"loss {record['loss']:.3f} lr {record['lr']:.1e} {record['samples_per_s']:.1f} samples/s"
            bar.update(task, completed=record["step"], info=info)

        return run_distillation(request, train, dev, out, force=force, teacher=teacher, on_step=on_step,
                                on_status=lambda s: on_status(bar, task, s))


def on_status(bar, task, message: str) -> None:
    """Status lines show in the bar; the layer map stays printed (it is also saved: layer_map.json)."""
    if message.startswith("layer map"):
        bar.console.print(message)
    else:
        bar.update(task, info=message)


def _encoder_only(t, spec, data, split, limit, eval_data, eval_split, eval_limit, out, force, as_json,
                  frozen: int, *, dry_run: bool, conflicts: dict, targets_file, device: str, speed: list[float] | None,
                  **settings) -> None:
    """`distill --encoder-only`: the cut encoder trained by regression (whisper_kdq.distill.encoder_trainer)."""
    from whisper_kdq.distill.encoder import EncoderCut
    from whisper_kdq.distill.encoder_trainer import PACKED_INIT_NEEDS_STUDENT, EncoderTraining
    from whisper_kdq.models.students import spaced_layers

    clash = [flag for flag, given in conflicts.items() if given]
    if clash:
        raise UserError(f"--encoder-only trains a cut of the teacher's encoder by regression; drop {clash[0]}")
    cfg = t.model.config
    enc = spec.encoder_map or (spaced_layers(cfg.encoder_layers, spec.encoder_layers) if spec.encoder_layers else None)
    if enc is None:
        raise UserError("--encoder-only needs --student-encoder-layers N or --student-encoder-map LIST (the cut)")
    if not 0 <= frozen < len(enc) or enc[:frozen] != list(range(frozen)):
        raise UserError(f"--frozen-encoder-layers {frozen}: the student's first {frozen} encoder blocks must be the "
                        f"teacher's first {frozen} and leave one to train (the map is {enc})")
    cut = EncoderCut(frozen, enc[frozen:]).resolve(cfg.encoder_layers)
    dec = spec.decoder_map or spaced_layers(cfg.decoder_layers, spec.decoder_layers or cfg.decoder_layers)
    if settings["qat_init"] == "packed" and spec.pretrained is None:
        raise UserError(PACKED_INIT_NEEDS_STUDENT)
    start = None if spec.pretrained is None else _encoder_start(t, spec.pretrained, cut, device)
    if dry_run:
        return _show({"encoder_map": cut.encoder_map, "frozen": cut.frozen, "trained_from": cut.init,
                      "imitates": cut.targets, "decoder_map": dec, "training": settings}, as_json)
    train, dev = _datasets(data, split, limit, eval_data, eval_split, eval_limit, speed, settings["window_s"])
    request = {"teacher": t.ref, "data": str(data), "split": split, "limit": limit, "eval_data": str(eval_data),
               "eval_split": eval_split, **({"speed_perturb": speed} if speed else {})}
    summary = _fit_encoder(t, cut, dec, train, dev, out, EncoderTraining(**settings, device=device), force, request,
                           targets_file, as_json, start)
    if as_json:
        print_json(summary)
    else:
        dev_line = "".join(f"; dev {k} CER {v['cer']:.2%} WER {v['wer']:.2%}" for k, v in summary.get("dev", {}).items())
        console.print(f"encoder {summary['encoder_map']} trained {summary['steps']} steps in {summary['wall_s']:.0f} s, "
                      f"best dev loss {summary['best_dev_loss']:.4f} at step {summary['best_step']}{dev_line}; "
                      f"student saved to {summary['model']}")


def _encoder_start(t, ref: str, cut, device: str):
    """`--student REF` with `--encoder-only`: the model whose encoder the cut's trained part starts from (e.g. an
    earlier encoder run's packed file, to go on at another window or for more steps)."""
    from whisper_kdq.models.refs import load_model
    from whisper_kdq.models.students import check_vocabularies

    with console.status(f"loading student {ref}"):
        start = load_model(ref, device=device)
    check_vocabularies(t, start)
    have, want = start.model.config, t.model.config
    if have.encoder_layers != len(cut.encoder_map) or have.d_model != want.d_model:
        raise UserError(f"--student {ref} has {have.encoder_layers} encoder blocks of width {have.d_model}; the cut "
                        f"{cut.encoder_map} needs {len(cut.encoder_map)} of width {want.d_model}")
    return start


def _fit_encoder(t, cut, dec, train, dev, out, settings, force, request, targets_file, quiet: bool, start=None) -> dict:
    from whisper_kdq.distill.encoder_trainer import run_encoder_distillation

    with _step_bar("encoder", settings.steps, quiet) as (bar, task):

        def on_step(record: dict) -> None:
            bar.update(task, completed=record["step"],
                       info=f"loss {record['loss']:.3f} best dev {record['dev_loss']:.3f} lr {record['lr']:.1e}")

        return run_encoder_distillation(t, cut, dec, train, dev, out, settings, force=force, request=request,
                                        targets_file=targets_file, on_step=on_step, start=start,
                                        on_status=lambda m: on_status(bar, task, m))
