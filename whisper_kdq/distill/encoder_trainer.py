"""Training a cut encoder by regression (`distill --encoder-only`): the loop, its run directory and resume.

    runs/x/
      run.json, metrics.jsonl, checkpoints/step-N/state.pt   as for `distill` (checkpointing.py)
      model/          the student: trained encoder, the teacher's (or a cut of its) decoder
      model.safetensors   instead, with a quantization plan: the packed student (trained part quantized)
      summary.json    steps, best dev loss and step, dev CER/WER of the saved student

Batches are a function of (seed, epoch, position), so a resumed run continues exactly where the
checkpoint left it. Whisper's encoder has no dropout, so nothing else is random.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch

from whisper_kdq.data.manifest import Dataset
from whisper_kdq.distill import checkpointing as ckpt
from whisper_kdq.distill.data import FeatureMemo
from whisper_kdq.distill.encoder import EncoderCut, EncoderTargets, student_loss
from whisper_kdq.distill.trainer import write_json
from whisper_kdq.errors import UserError
from whisper_kdq.models.refs import LoadedModel
from whisper_kdq.models.students import cut_student

PACKED_INIT_NEEDS_STUDENT = "--qat-init packed starts from a packed file's codes: give the file as --student"


@dataclass
class EncoderTraining:
    steps: int = 800
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 20  # steps of linear warm-up, then cosine decay to zero
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 100
    keep: int = 2
    eval_every: int = 100  # dev regression loss; the best step's encoder is the one saved
    device: str = "cpu"
    # Targets and dev decoding at S-second audio windows (evaluate/window.py); None is Whisper's 30 s.
    # The trained blocks take no positions, so only the targets (and their cost) change with the window.
    window_s: float | None = None
    # A quantization plan (its JSON): the trained part trains fake-quantized (encoder.encoder_plan) and the
    # student is saved packed; qat_init "gptq" starts its codes from GPTQ (None: clip search + nearest).
    plan: dict | None = None
    qat_init: str | None = None


def batch_ids(ids: Sequence[str], batch_size: int, seed: int, step: int) -> list[str]:
    """The utterances of `step`: epoch e is a seeded shuffle of `ids`, cut into batches (the last may be short)."""
    per_epoch = math.ceil(len(ids) / batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = list(ids)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[pos * batch_size:(pos + 1) * batch_size]


def _factor(settings: EncoderTraining) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < settings.warmup:
            return (step + 1) / settings.warmup
        progress = (step - settings.warmup) / max(1, settings.steps - settings.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class EncoderTrainer:
    """Trains `encoder.layers[cut.frozen:]` and the final layer norm of a student encoder, in place."""

    def __init__(self, encoder, cut: EncoderCut, targets: EncoderTargets, train_ids: Sequence[str],
                 dev_ids: Sequence[str], settings: EncoderTraining, out: Path | None = None) -> None:
        self.cut, self.targets, self.settings, self.out = cut, targets, settings, out
        self.train_ids, self.dev_ids = list(train_ids), list(dev_ids)
        self.encoder = encoder.to(settings.device)
        self.blocks = encoder.layers[cut.frozen:]
        self.front_end = encoder if cut.trains_front_end else None
        for p in encoder.parameters():
            p.requires_grad_(False)
        convs = [*encoder.conv1.parameters(), *encoder.conv2.parameters()] if self.front_end is not None else []
        self.params = list(self.blocks.parameters()) + list(encoder.layer_norm.parameters()) + convs
        for p in self.params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(self.params, lr=settings.lr, weight_decay=0.0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _factor(settings))
        self.step = 0
        self.best = {"dev": math.inf, "step": 0}
        self.best_state: dict | None = None
        self.log = ckpt.MetricsLog(out / "metrics.jsonl") if out else ckpt.MetricsLog(Path("."), enabled=False)

    def loss(self, ids: Sequence[str]) -> torch.Tensor:
        start, targets, frames = self.targets.batch(ids)
        device = self.settings.device
        return student_loss(self.blocks, self.encoder.layer_norm, start.to(device), targets.to(device), frames,
                            self.front_end)

    @torch.no_grad()
    def dev_loss(self) -> float:
        self.blocks.eval()
        ids = self.dev_ids or self.train_ids[:32]  # without dev data the choice is made on training clips
        losses = [float(self.loss(ids[k:k + 8])) * len(ids[k:k + 8]) for k in range(0, len(ids), 8)]
        self.blocks.train()
        return sum(losses) / len(ids)

    def _evaluate(self) -> None:
        dev = self.dev_loss()
        self.log.write({"step": self.step, "dev_loss": dev})
        if dev < self.best["dev"]:
            self.best = {"dev": dev, "step": self.step}
            self.best_state = {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}

    def state(self) -> dict:
        return {"step": self.step, "encoder": self.encoder.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "best": self.best, "best_state": self.best_state}

    def restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        self.encoder.load_state_dict(state["encoder"])  # before the optimizer: its state follows the parameters
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.best, self.best_state = state["step"], state["best"], state["best_state"]
        self.log.truncate_after(self.step)

    def fit(self, on_step: Callable[[dict], None] | None = None) -> dict:
        s = self.settings
        t0 = time.time()
        if self.step == 0:
            self._evaluate()  # the untrained cut is a candidate too
        self.blocks.train()
        while self.step < s.steps:
            loss = self.loss(batch_ids(self.train_ids, s.batch_size, s.seed, self.step))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm))
            self.opt.step()
            self.sched.step()
            self.step += 1
            record = {"step": self.step, "loss": float(loss.detach()), "grad_norm": norm, "lr": self.sched.get_last_lr()[0]}
            self.log.write(record)
            if self.step % s.eval_every == 0 or self.step == s.steps:
                self._evaluate()
            if self.out is not None and (self.step % s.save_every == 0 or self.step == s.steps):
                ckpt.save_checkpoint(self.out, self.step, self.state(), s.keep)
            if on_step:
                on_step({**record, "dev_loss": self.best["dev"]})
        if self.best_state is not None:
            self.encoder.load_state_dict(self.best_state)
        self.encoder.eval()
        return {"steps": self.step, "best_dev_loss": self.best["dev"], "best_step": self.best["step"],
                "wall_s": time.time() - t0}


def run_encoder_distillation(teacher: LoadedModel, cut: EncoderCut, decoder_map: list[int], train: Dataset,
                             dev: Dataset | None, out: Path, settings: EncoderTraining, *, force: bool = False,
                             targets_file: Path | None = None, request: dict | None = None,
                             on_step: Callable[[dict], None] | None = None,
                             on_status: Callable[[str], None] | None = None,
                             start: LoadedModel | None = None) -> dict:
    """Cut the teacher's encoder to `cut`, train it on `train` into run directory `out` (resuming it), save the
    student (encoder trained, decoder the teacher's blocks `decoder_map`) as `out/model`. Returns the summary.
    `start`: a model with the cut's encoder shape whose trained part (blocks, final norm, convolutions where they
    train) the training starts from instead of the teacher's blocks; with `settings.qat_init` "packed", its
    packed codes are the starting grid too."""
    from whisper_kdq.evaluate import evaluate_model
    from whisper_kdq.export import save_transformers_dir
    from whisper_kdq.fileio import atomic_dir

    from whisper_kdq.evaluate.window import record_trained_window, window_or_none

    status = on_status or (lambda _: None)
    out = Path(out)
    cut = cut.resolve(teacher.model.config.encoder_layers)
    settings = replace(settings, window_s=window_or_none(settings.window_s))  # 30 s is no window, as in distill
    request = {**(request or {}), "encoder_only": {"cut": asdict(cut), "decoder_map": decoder_map,
                                                   **asdict(settings)}}
    if start is not None:
        request["encoder_only"]["student"] = start.ref
    for k in ("steps", "save_every", "keep", "eval_every", "device"):
        request["encoder_only"].pop(k)  # a resumed run may change them
    if settings.window_s is None:
        request["encoder_only"].pop("window_s")  # run directories from before the option stay resumable
    resuming = ckpt.check_run_dir(out, request, force)
    student = cut_student(teacher, cut.encoder_map, decoder_map)
    if start is not None:
        _load_trained_part(student, start, cut)
    plan = _quantization_aware(student, cut, settings, train, resuming, status, start)
    ids = [u.id for u in train.utterances]
    dev_ids = [u.id for u in dev.utterances] if dev is not None else []
    targets = _targets(teacher, cut, train, dev, Path(targets_file or out / "targets.pt"), settings.window_s, status)
    trainer = EncoderTrainer(student.model.model.encoder, cut, targets, ids, dev_ids, settings, out)
    student.model.to(settings.device)
    if resuming:
        last = ckpt.latest_checkpoint(out)
        status(f"resuming from {last.name}")
        trainer.restore(last)
    summary = trainer.fit(on_step)
    record_trained_window(student.model, settings.window_s)
    if plan is not None:
        from whisper_kdq.quant.fake import convert_to_packed

        target = out / "model.safetensors"
        summary["model_bytes"] = convert_to_packed(student.model, student.processor, plan, target, force=True)["file_bytes"]
    else:
        target = out / "model"
        with atomic_dir(target, force=True) as tmp:
            save_transformers_dir(student, tmp)
    summary.update(model=str(target), encoder_map=cut.encoder_map, frozen=cut.frozen, targets=cut.targets,
                   decoder_map=decoder_map, params=student.params)
    if dev is not None and len(dev):
        status("decoding the dev split")
        report = evaluate_model(student, dev, device=settings.device, window_s=settings.window_s)
        summary["dev"] = {k: {m: v[m] for m in ("cer", "wer")} for k, v in report["languages"].items()}
    write_json(out / "summary.json", summary)
    return summary


def _load_trained_part(student: LoadedModel, start: LoadedModel, cut: EncoderCut) -> None:
    """Copy `start`'s weights of what trains in `cut` into `student` (the frozen blocks stay the teacher's: the
    targets hold their output)."""
    import re

    trained = re.compile(cut.trained_weights() + r"|^model\.encoder\.layer_norm\.")
    state = {k: v for k, v in start.model.state_dict().items() if trained.match(k)}
    student.model.load_state_dict(state, strict=False)


def _quantization_aware(student: LoadedModel, cut: EncoderCut, settings: EncoderTraining, train: Dataset,
                        resuming: bool, status: Callable[[str], None], start: LoadedModel | None = None):
    """With a plan: fake-quantize the trained part of `student` in place; returns the plan it was given
    (restricted to that part), or None."""
    if settings.plan is None:
        return None
    from whisper_kdq.distill import initial_codes
    from whisper_kdq.distill.encoder import encoder_plan
    from whisper_kdq.quant.fake import prepare_qat
    from whisper_kdq.quant.plan import plan_from_dict

    plan = encoder_plan(plan_from_dict(settings.plan, "plan"), cut)
    # A resumed run restores its weights and scales: no starting codes to compute.
    if settings.qat_init == "packed" and start is None:
        raise UserError(PACKED_INIT_NEEDS_STUDENT)
    source = start if settings.qat_init == "packed" else student
    init = None if resuming else initial_codes(settings.qat_init, source, plan, train, status)
    prepare_qat(student.model, plan, init=init)
    return plan


def _targets(teacher: LoadedModel, cut: EncoderCut, train: Dataset, dev: Dataset | None, path: Path,
             window_s: float | None, status: Callable[[str], None]) -> EncoderTargets:
    """The teacher's targets for every train and dev clip, from `path` where it has them (then kept there)."""
    targets = (EncoderTargets.load(path, cut, teacher.ref, window_s) if path.is_file()
               else EncoderTargets(cut, teacher.ref, window_s))
    clips = {u.id: u for u in train.utterances + (dev.utterances if dev is not None else [])}  # kept by id
    missing = [u for uid, u in clips.items() if uid not in targets.rows]
    if missing:
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            status(f"teacher encoder targets: {done[0]}/{len(missing)} clips")

        progress(0)
        # `embed` adds as many positions as the features have frames, so a windowed memo is all it takes;
        # it refuses a clip longer than the window, naming its manifest line.
        memo = FeatureMemo(teacher.processor, max_bytes=0, window_s=window_s)
        targets.fill(teacher.model.model.encoder, missing, memo, progress=progress)
        targets.save(path)
    return targets
