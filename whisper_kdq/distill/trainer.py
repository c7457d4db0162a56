"""The distillation loop: AdamW with warm-up and linear decay, accumulation, clipping, checkpoints,
exact resume, periodic dev evaluation, and data parallelism through Hugging Face Accelerate.

Data parallelism: every process builds the same seeded global batches (`batch_size × processes`)
and takes its own slice; Accelerate wraps the model in DDP, which averages gradients. Run under
`accelerate launch` or `torchrun`; a plain `python` run is the one-process case of the same code.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.utils import parametrize

from whisper_kdq.data.manifest import Dataset
from whisper_kdq.distill import checkpointing as ckpt
from whisper_kdq.distill.cache import TeacherCache
from whisper_kdq.distill.data import Batch, FeatureMemo, length_batches, make_batch, rank_slice
from whisper_kdq.distill.losses import LossWeights, cross_entropy, hidden_kd, logit_kd
from whisper_kdq.errors import UserError
from whisper_kdq.models.students import Student
from whisper_kdq.quant.fake import computed_once


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: int = 20
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 50
    keep: int = 2
    eval_every: int = 0  # 0: evaluate on dev only at the end
    eval_limit: int | None = None
    device: str = "cpu"
    bf16: bool = True  # autocast on CUDA
    top_k: int = 64
    progress: bool = True
    teacher_cache: str | None = None  # file to reuse the teacher's outputs across runs on the same data
    # With Adam every row of the 51,865-token embedding moves by ~lr per step however small its gradient;
    # on a few hundred utterances that drifts tokens never seen in training (runaway loops on rare tokens).
    freeze_embedding: bool = False
    # Read S-second audio windows instead of Whisper's 30 s (evaluate/window.py): on short clips the
    # encoder's work drops faster than linearly. The saved model is a standard Whisper model.
    window_s: float | None = None


@dataclass
class Hooks:
    """Extension points: quantization-aware training swaps weights before the optimizer is built and
    writes a packed checkpoint at the end."""

    prepare_model: Callable | None = None  # (model) -> model
    finalize: Callable | None = None  # (model, processor, out_dir) -> dict
    distill_layers: dict[str, list[int]] | None = None  # student blocks that get hidden-state KD
    texts: dict[str, str] | None = field(default=None)  # pseudo-labels by utterance id


def _schedule(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        return max(0.0, (cfg.steps - step) / max(1, cfg.steps - cfg.warmup))
    return factor


def is_embedding(name: str) -> bool:
    """The token embedding and the output projection tied to it (what --freeze-embedding keeps)."""
    return "embed_tokens" in name or "proj_out" in name


def dev_error(report: dict) -> float:
    """One number to pick the best checkpoint: mean over languages of CER (ja, zh, …) or WER."""
    from whisper_kdq.distill.data import NO_SPACE_LANGUAGES

    errs = [(s["cer"] if code in NO_SPACE_LANGUAGES else s["wer"]) for code, s in report["languages"].items()
            if s.get("wer") is not None]
    return sum(errs) / len(errs) if errs else math.inf


class Trainer:
    def __init__(self, run_dir: Path, student: Student, teacher, train: Dataset, dev: Dataset | None,
                 weights: LossWeights, cfg: TrainConfig, hooks: Hooks | None = None) -> None:
        from accelerate import Accelerator, DistributedDataParallelKwargs

        weights.validate()
        if not len(train):
            raise UserError("the training set is empty")
        self.run_dir, self.student, self.teacher, self.train, self.dev = run_dir, student, teacher, train, dev
        self.w, self.cfg, self.hooks = weights, cfg, hooks or Hooks()
        cuda = cfg.device.startswith("cuda")
        # Frozen or cached parts leave some trainable tensors (e.g. encoder clip scales) without gradients.
        ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and cfg.bf16 else "no", kwargs_handlers=[ddp])
        self.device = str(self.acc.device)
        torch.manual_seed(cfg.seed)
        model = student.loaded.model.to(self.device)
        if student.frozen_encoder:
            model.model.encoder.requires_grad_(False)
        if self.hooks.prepare_model:
            model = self.hooks.prepare_model(model)
        if cfg.freeze_embedding:  # after QAT wrapping, so that the embedding's clipping scales freeze too
            for name, p in model.named_parameters():
                if is_embedding(name):
                    p.requires_grad_(False)
        model.train()
        self.proj = self._projection(model)
        # Encoder hidden-state KD only where the student's encoder trains (a frozen one cannot move).
        self.encoder_kd = weights.hidden > 0 and not student.frozen_encoder and teacher is not None
        self.enc_proj = self._projection(model)
        params = [p for p in model.parameters() if p.requires_grad] + list(self.proj.parameters()) \
            + list(self.enc_proj.parameters())
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _schedule(cfg))
        self.model, self.opt = self.acc.prepare(model, self.opt)
        self.raw = self.acc.unwrap_model(self.model)
        t_model = teacher.model.to(self.device).eval() if (teacher is not None and weights.uses_teacher) else None
        # A cut student's frozen encoder is the teacher's whole encoder: one output serves both.
        share = student.frozen_encoder and student.encoder_map is not None and self.hooks.prepare_model is None \
            and teacher is not None
        self.cache = TeacherCache(t_model, cfg.top_k, keep_hidden=weights.hidden > 0,
                                  student_encoder=self.raw.model.encoder if student.frozen_encoder else None,
                                  share_encoder=share, keep_encoder_hidden=self.encoder_kd, window_s=cfg.window_s)
        # Without the teacher (plain fine-tuning) the file is only read: the shared encoder's outputs.
        self.cache_file = Path(cfg.teacher_cache) if cfg.teacher_cache and (t_model is not None or share) else None
        self.cached_at_start = self.cache.load(self.cache_file) if self.cache_file and self.cache_file.is_file() else 0
        self.log = ckpt.MetricsLog(run_dir / "metrics.jsonl", enabled=self.acc.is_main_process)
        self.features = FeatureMemo(student.loaded.processor, window_s=cfg.window_s)
        self.step = 0
        self.best = (math.inf, None)

    def _projection(self, model) -> torch.nn.Module:
        """Teacher-to-student map of hidden states when widths differ (teacher side, as in the paper)."""
        if self.teacher is None or self.w.hidden == 0:
            return torch.nn.Identity()
        d_t, d_s = self.teacher.model.config.d_model, model.config.d_model
        return torch.nn.Identity() if d_t == d_s else torch.nn.Linear(d_t, d_s).to(self.device)

    # -------------------------------------------------------------------------------- data
    def _global_batches(self, epoch: int) -> list[list[int]]:
        return length_batches(self.train.utterances, self.cfg.batch_size * self.acc.num_processes, self.cfg.seed, epoch)

    def _batch(self, index: int) -> Batch:
        n = len(self._global_batches(0))
        epoch, pos = divmod(index, n)
        chosen = self._global_batches(epoch)[pos]
        mine = rank_slice(chosen, self.acc.process_index, self.acc.num_processes)
        if self.acc.num_processes > 1:  # which utterances each rank trained on: proof that ranks differ
            ckpt.MetricsLog(self.run_dir / f"rank-{self.acc.process_index}.jsonl").write(
                {"index": index, "ids": [self.train.utterances[i].id for i in mine]})
        return make_batch([self.train.utterances[i] for i in mine], self.student.loaded.processor, self.hooks.texts,
                          self.features)

    # -------------------------------------------------------------------------------- one step
    @contextmanager
    def _window(self):
        """Student and teacher read the run's audio window, for one step. Entered per step rather than for
        the whole run, so that checkpoints hold the models' whole position tables."""
        from whisper_kdq.evaluate.window import audio_window

        with ExitStack() as stack:
            if self.cfg.window_s is not None:
                stack.enter_context(audio_window(self.raw, self.cfg.window_s))
                if self.cache.teacher is not None:
                    stack.enter_context(audio_window(self.cache.teacher, self.cfg.window_s))
            yield

    def _loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        with self._window():
            return self._window_loss(batch)

    def _window_loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        if any(uid not in self.cache for uid in batch.ids):
            self.cache.fill(batch, self.device)
        cached = self.cache.stack(batch, self.device)
        batch = batch.to(self.device)
        want_hidden = self.w.hidden > 0
        kwargs = dict(decoder_input_ids=batch.decoder_input_ids, output_hidden_states=want_hidden)
        if "encoder_out" in cached:  # frozen encoder: its cached output stands in for running it
            kwargs["encoder_outputs"] = (cached["encoder_out"],)
        else:
            kwargs["input_features"] = batch.features
        with self.acc.autocast(), computed_once():  # the tied embedding's fake quantization once, not twice
            out = self.model(**kwargs)
        terms = {"ce": cross_entropy(out.logits, batch.labels)}
        if self.w.kd > 0:
            terms["kd"] = logit_kd(out.logits, cached["topk_ids"], cached["topk_raw"], batch.mask, self.w.temperature,
                                  cached["topk_logprobs"])
        if want_hidden:
            teacher_h = [self.proj(h) for h in cached["decoder_hidden"]]
            only = (self.hooks.distill_layers or {}).get("decoder")
            terms["hidden"], self.last_map = hidden_kd(list(out.decoder_hidden_states[1:]), teacher_h, batch.mask,
                                                       self.w.matching, only=only, **self._hidden_kind())
        if self.encoder_kd:  # block outputs on the frames that hold audio (padding frames carry no signal)
            frames, fmask = int(batch.frames.max()), batch.frame_mask().to(self.device)
            teacher_e = [self.enc_proj(h) for h in cached["encoder_hidden"]]
            student_e = [h[:, :frames] for h in out.encoder_hidden_states[1:]]
            only = (self.hooks.distill_layers or {}).get("encoder")
            terms["hidden_enc"], self.last_enc_map = hidden_kd(student_e, teacher_e, fmask, self.w.matching, only=only,
                                                               **self._hidden_kind())
        terms["loss"] = self.w.ce * terms["ce"] + self.w.kd * terms.get("kd", 0) \
            + self.w.hidden * (terms.get("hidden", 0) + terms.get("hidden_enc", 0))
        return terms

    def _hidden_kind(self) -> dict:
        return {"kind": self.w.hidden_loss, "temperature": self.w.temperature}

    def _train_step(self) -> dict[str, float]:
        sums: dict[str, float] = {}
        for micro in range(self.cfg.grad_accum):
            batch = self._batch(self.step * self.cfg.grad_accum + micro)
            terms = self._loss(batch)
            self.acc.backward(terms["loss"] * self._token_share(batch) / self.cfg.grad_accum)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / self.cfg.grad_accum
        params = [p for g in self.opt.param_groups for p in g["params"]]
        sums["grad_norm"] = float(self.acc.clip_grad_norm_(params, self.cfg.max_grad_norm))
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return sums

    def _token_share(self, batch: Batch) -> float:
        """Losses are means over this process's tokens; DDP averages processes. Weighting each by its
        share of the global batch's tokens makes the result the mean over all tokens, as one process has it."""
        if self.acc.num_processes == 1:
            return 1.0
        local = torch.tensor(float(batch.mask.sum()), device=self.device)
        total = self.acc.reduce(local.clone(), reduction="sum")
        return float(local * self.acc.num_processes / total)

    # -------------------------------------------------------------------------------- state
    def state(self) -> dict:
        return {"step": self.step, "model": self.raw.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "projection": self.proj.state_dict(),
                "encoder_projection": self.enc_proj.state_dict(),
                "rng": ckpt.rng_state(), "best": self.best[0], "config": asdict(self.cfg)}

    def restore(self, path: Path) -> None:
        state = ckpt.load_checkpoint(path)
        self.raw.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.proj.load_state_dict(state["projection"])
        self.enc_proj.load_state_dict(state.get("encoder_projection", {}))
        ckpt.set_rng_state(state["rng"])
        self.step, self.best = state["step"], (state["best"], None)
        self.log.truncate_after(self.step)

    def evaluate(self) -> dict | None:
        if self.dev is None or not len(self.dev):
            return None
        from whisper_kdq.evaluate import evaluate_model
        from whisper_kdq.models.refs import LoadedModel

        self.raw.eval()
        dev = self.dev if self.cfg.eval_limit is None else Dataset(self.dev.utterances[:self.cfg.eval_limit])
        loaded = LoadedModel(self.raw, self.student.loaded.processor, "student", "transformers", None, 0)
        # Fake-quantized weights computed once for the whole evaluation, not at every decoding step.
        with torch.no_grad(), parametrize.cached():
            report = evaluate_model(loaded, dev, batch_size=self.cfg.batch_size, device=self.device,
                                    window_s=self.cfg.window_s)
        self.raw.train()
        if self.student.frozen_encoder:
            self.raw.model.encoder.eval()
        return {"languages": report["languages"], "dev_error": dev_error(report)}

    # -------------------------------------------------------------------------------- loop
    def fit(self, on_step: Callable[[dict], None] | None = None) -> dict:
        started, samples = time.perf_counter(), 0
        per_step = self.cfg.batch_size * self.cfg.grad_accum * self.acc.num_processes
        while self.step < self.cfg.steps:
            t0 = time.perf_counter()
            sums = self._train_step()
            self.step += 1
            samples += per_step
            elapsed = time.perf_counter() - started
            record = {"step": self.step, **{k: round(v, 6) for k, v in sums.items()},
                      "lr": self.sched.get_last_lr()[0], "samples_per_s": samples / elapsed,
                      "step_s": time.perf_counter() - t0, "teacher_s": self.cache.teacher_s}
            if getattr(self, "last_map", None) is not None:
                record["layer_map"] = self.last_map
            if getattr(self, "last_enc_map", None) is not None:
                record["encoder_layer_map"] = self.last_enc_map
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0 and self.step < self.cfg.steps:
                record["dev"] = self._eval_and_keep_best()
            self.log.write(record)
            if on_step:
                on_step(record)
            if self.step % self.cfg.save_every == 0 and self.acc.is_main_process:
                ckpt.save_checkpoint(self.run_dir, self.step, self.state(), self.cfg.keep)
                self._save_cache()
            self.acc.wait_for_everyone()
        self._save_cache()
        final = self._eval_and_keep_best()
        if final is not None:
            self.log.write({"step": self.step, "dev": final})
        return {"steps": self.step, "samples_per_s": samples / max(time.perf_counter() - started, 1e-9),
                "wall_s": time.perf_counter() - started, "teacher_s": self.cache.teacher_s, "dev": final,
                "best_dev_error": None if math.isinf(self.best[0]) else self.best[0]}

    def _save_cache(self) -> None:
        if self.cache_file is not None and self.acc.is_main_process and self.cache.size() > self.cached_at_start:
            self.cache.save(self.cache_file)
            self.cached_at_start = self.cache.size()

    def _eval_and_keep_best(self) -> dict | None:
        result = self.evaluate()
        if result is not None and result["dev_error"] < self.best[0]:
            self.best = (result["dev_error"], self.step)
            if self.acc.is_main_process:  # on disk, so that a resumed run still ends with the best weights
                from whisper_kdq.fileio import atomic_file

                with atomic_file(self.run_dir / "best-state.pt") as tmp:
                    torch.save(self.raw.state_dict(), tmp)
        return result

    def best_model(self):
        best = self.run_dir / "best-state.pt"
        if best.is_file():
            self.raw.load_state_dict(torch.load(best, map_location=self.device))
        return self.raw.eval()


def write_json(path: Path, payload: dict) -> None:
    from whisper_kdq.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")
