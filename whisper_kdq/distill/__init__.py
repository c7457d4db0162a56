"""Knowledge distillation of a Whisper teacher into a student, optionally quantization-aware.

`run_distillation` is what `whisper-kdq distill` calls: build the student, prepare the run
directory (or resume it), train, and save the final student as a model reference.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from whisper_kdq.data.manifest import Dataset
from whisper_kdq.distill.losses import LossWeights
from whisper_kdq.distill.trainer import Hooks, TrainConfig, Trainer, is_embedding, write_json
from whisper_kdq.models.refs import LoadedModel
from whisper_kdq.models.students import Student, StudentSpec, make_student

GPTQ_CLIPS = 32  # calibration clips of `distill --qat-init gptq` (as `quantize --method gptq`'s default)

__all__ = ["LossWeights", "TrainConfig", "StudentSpec", "Hooks", "DistillRequest", "run_distillation", "describe"]


@dataclass
class DistillRequest:
    teacher: str
    student: StudentSpec
    weights: LossWeights
    train: TrainConfig
    plan: dict | None = None  # quantization plan (quantization-aware training) as its JSON
    pseudo_label: bool = False
    pseudo_label_max_wer: float | None = 0.3
    data: str = ""
    eval_data: str | None = None
    qat_init: str | None = None  # starting codes of the planned weights: None (clip search + nearest), gptq, packed
    speed_perturb: list[float] | None = None  # speed-perturbed copies of the training clips (data.augment)

    def as_dict(self) -> dict:
        return {"teacher": self.teacher, "student": self.student.as_dict(), "weights": asdict(self.weights),
                **{k: v for k, v in asdict(self.train).items()}, "plan": self.plan, "pseudo_label": self.pseudo_label,
                "pseudo_label_max_wer": self.pseudo_label_max_wer, "data": self.data, "eval_data": self.eval_data,
                "qat_init": self.qat_init, **({"speed_perturb": self.speed_perturb} if self.speed_perturb else {})}


def describe(student: Student, teacher: LoadedModel, request: DistillRequest) -> dict:
    """What `--dry-run` prints: architecture, parameters, layer map and loss plan."""
    cfg = student.loaded.model.config
    trainable = sum(p.numel() for n, p in student.loaded.model.named_parameters()
                    if not (student.frozen_encoder and n.startswith("model.encoder."))
                    and not (request.train.freeze_embedding and is_embedding(n)))
    w = request.weights
    return {
        "teacher": {"ref": teacher.ref, "params": teacher.params, "encoder_layers": teacher.model.config.encoder_layers,
                    "decoder_layers": teacher.model.config.decoder_layers, "d_model": teacher.model.config.d_model},
        "student": {"params": student.loaded.params, "trainable_params": trainable, "d_model": cfg.d_model,
                    "encoder_layers": cfg.encoder_layers, "decoder_layers": cfg.decoder_layers,
                    "heads": cfg.encoder_attention_heads, "ffn": cfg.encoder_ffn_dim},
        "layer_map": student.layer_map(),
        "losses": {"ce": w.ce, "logits_kd": w.kd, "temperature": w.temperature, "hidden_kd": w.hidden,
                   "matching": w.matching if w.hidden else None, "hidden_loss": w.hidden_loss if w.hidden else None,
                   "hidden_layers": "decoder blocks" + ("" if student.frozen_encoder else " and encoder blocks (audio frames)"),
                   "labels": "teacher pseudo-labels" if request.pseudo_label else "reference transcripts"},
        "quantization_aware": request.plan is not None,
        "training": {"steps": request.train.steps, "batch_size": request.train.batch_size,
                     "grad_accum": request.train.grad_accum, "lr": request.train.lr},
    }


def run_distillation(request: DistillRequest, train: Dataset, dev: Dataset | None, out: Path, *, force: bool = False,
                     teacher: LoadedModel | None = None, on_step: Callable[[dict], None] | None = None,
                     on_status: Callable[[str], None] | None = None, hooks: Hooks | None = None) -> dict:
    """Train `request`'s student on `train` into run directory `out`, resuming it when it holds the same run.

    `hooks` (e.g. quantization-aware training) may set `prepare_model(model) -> model`, applied before the
    optimizer is built, and `finalize(model, processor, out) -> dict`, which then saves the final student.
    Returns the summary also written to `out/summary.json`."""
    from whisper_kdq.distill import checkpointing as ckpt
    from whisper_kdq.models.refs import load_model

    status = on_status or (lambda _: None)
    out = Path(out)
    resuming = ckpt.check_run_dir(out, request.as_dict(), force)
    status(f"loading teacher {request.teacher}")
    teacher = teacher or load_model(request.teacher, device=request.train.device)
    student = make_student(teacher, request.student, device=request.train.device)
    write_json(out / "layer_map.json", student.layer_map())
    status(f"layer map (student block <- teacher block): {student.layer_map()}")
    hooks = hooks or Hooks()
    plan = None
    if request.plan is not None:
        from whisper_kdq.quant.fake import prepare_qat
        from whisper_kdq.quant.plan import plan_from_dict

        plan = plan_from_dict(request.plan, "plan")
        # A resumed run restores its weights and scales: no starting codes to compute.
        init = None if resuming else initial_codes(request.qat_init, student.loaded, plan, train, status)
        hooks.prepare_model = lambda model: prepare_qat(model, plan, init=init)
        hooks.distill_layers = (request.plan.get("selection") or {}).get("distill_layers")
    if request.pseudo_label:
        from whisper_kdq.distill.data import pseudo_labels

        labels_file = out / "pseudo_labels.json"
        if labels_file.is_file():
            saved = json.loads(labels_file.read_text(encoding="utf-8"))
            texts, dropped = saved["texts"], saved["dropped"]
        else:
            status("teacher pseudo-labels")
            texts, dropped = pseudo_labels(teacher, train.utterances, max_wer=request.pseudo_label_max_wer,
                                           batch_size=request.train.batch_size, device=request.train.device)
            write_json(labels_file, {"texts": texts, "dropped": dropped})
        train = Dataset([u for u in train.utterances if u.id in texts])
        hooks.texts = texts
    trainer = Trainer(out, student, teacher, train, dev, request.weights, request.train, hooks)
    if resuming:
        last = ckpt.latest_checkpoint(out)
        status(f"resuming from {last.name}")
        trainer.restore(last)
    summary = trainer.fit(on_step)
    model = trainer.best_model()
    if trainer.acc.is_main_process:
        from whisper_kdq.evaluate.window import record_trained_window

        record_trained_window(model, request.train.window_s)  # whoever saves the student saves its window too
        if hooks.finalize is not None:
            summary.update(hooks.finalize(model, student.loaded.processor, out) or {})
        else:
            summary.update(_save_final(model, student, plan, out))
        summary["layer_map"] = student.layer_map()
        write_json(out / "summary.json", summary)
    return summary


def initial_codes(qat_init: str | None, student: LoadedModel, plan, train: Dataset,
                  status: Callable[[str], None] = lambda _: None) -> dict | None:
    """Starting codes and scales of the planned weights, by `qat_init`: None (each weight's clip search, then
    nearest levels: `prepare_qat`'s default), "gptq" (calibrated on training clips) or "packed" (the codes of
    the student's own packed checkpoint, wherever the plan keeps its spec: a trained quantized part goes on
    from its grid, e.g. an encoder trained by `--encoder-only --plan`)."""
    if qat_init == "gptq":
        from whisper_kdq.quant.gptq import gptq_for_plan

        status(f"GPTQ: calibrating on {GPTQ_CLIPS} training clips")
        return gptq_for_plan(student.model, student.processor, plan, train, GPTQ_CLIPS)
    if qat_init == "packed":
        from whisper_kdq.errors import UserError
        from whisper_kdq.quant.reader import packed_codes
        from whisper_kdq.quant.fake import matching_init

        if student.kind != "packed":
            raise UserError(f"--qat-init packed starts from the student's packed codes: --student {student.ref} "
                            "is not a packed checkpoint")
        return matching_init(packed_codes(student.path), plan, student.model.state_dict())
    return None


def _save_final(model, student: Student, plan, out: Path) -> dict:
    from whisper_kdq.export import save_transformers_dir
    from whisper_kdq.fileio import atomic_dir

    processor = student.loaded.processor
    if plan is not None:
        from whisper_kdq.quant.fake import convert_to_packed

        target = out / "model.safetensors"
        packed = convert_to_packed(model, processor, plan, target, force=True)
        return {"model": str(target), "model_bytes": packed["file_bytes"]}
    target = out / "model"
    loaded = LoadedModel(model, processor, "student", "transformers", None, 0)
    with atomic_dir(target, force=True) as tmp:
        save_transformers_dir(loaded, tmp)
    return {"model": str(target), "model_bytes": sum(f.stat().st_size for f in target.glob("*.safetensors"))}
