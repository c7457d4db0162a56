"""The pipeline's studies on the whole teacher, beyond the issue's rows (benchmarks/pipeline.py runs them by
name or with --rows all): mixed precision, quantization-aware training of the teacher's decoder, guided vs
random selection at the q4_0 size, and 10.5x (2/3-bit) by encoder regression then decoder training.
A mixin of `pipeline.Pipeline`, whose helpers (quantize, evaluate, distill, _teacher_qat, ...) it uses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


class Studies:
    def studies(self) -> dict:
        """Studies on the whole teacher beyond the issue's rows: each quantization-aware one is ~25 min on 2 CPU
        cores, so they run only when named (or with --rows all), keeping the default run under 2 hours."""
        return {
            "teacher q4_0 grid (RTN 4-bit g32 full range; no clip)": lambda: (self.evaluate(self.quantize(  # whisper.cpp's
                "base", "teacher-q4_0", "--bits", "4", "--group-size", "32", "--full-range", "--clip", "max")), 0.0),
            "teacher RTN 6-bit g128 (embedding 5-bit)": lambda: (self.evaluate(self.quantize(
                "base", "teacher-u6", "--bits", "6", "--embedding-bits", "5")), 0.0),
            # Mixed precision on the whole teacher: the sensitive encoder at 8 bits (frozen, post-training),
            # decoder + token embedding at 4 bits g128 (5.67x vs fp32); then the same plan with the
            # decoder (all 6 blocks, from the teacher) trained quantization-aware with KD + hidden KD.
            "teacher PTQ enc 8-bit + dec/emb 4-bit g128": lambda: (self.evaluate(self.quantize(
                "base", "teacher-e8d4", "--bits", "4", "--encoder-bits", "8")), 0.0),
            "teacher KD+QAT enc 8-bit (PTQ) + dec/emb 4-bit g128": lambda: self._teacher_qat(
                "teacher-qat-e8d4-kd", 4, "--encoder-bits", "8"),
            # At or under 5.2x with (near) 6-bit decoders, and under the q4_0 size (4.5 bits/weight).
            "teacher PTQ 6-bit g128 + emb 4-bit": lambda: (self.evaluate(self.quantize(
                "base", "teacher-u6-emb4", "--bits", "6", "--embedding-bits", "4")), 0.0),
            "teacher PTQ enc 8-bit + dec 5-bit + emb 4-bit": lambda: (self.evaluate(self.quantize(
                "base", "teacher-e8d5-emb4", "--bits", "5", "--encoder-bits", "8", "--embedding-bits", "4")), 0.0),
            "teacher KD+QAT enc 8-bit (PTQ) + dec 5-bit + emb 4-bit": lambda: self._teacher_qat(
                "teacher-qat-e8d5-emb4-kd", 5, "--encoder-bits", "8", "--embedding-bits", "4"),
            "teacher CE+KD+QAT enc 8-bit (PTQ) + dec 5-bit + emb 4-bit": lambda: self._teacher_qat(
                "teacher-qat-e8d5-emb4-cekd", 5, "--encoder-bits", "8", "--embedding-bits", "4", ce=1.0),
            "teacher PTQ enc 5-bit + dec/emb 4-bit g128": lambda: (self.evaluate(self.quantize(
                "base", "teacher-e5d4", "--bits", "4", "--encoder-bits", "5")), 0.0),
            # The q4_0-size comparison: the same 4-bit g32 plan as the RTN row, the decoder trained.
            "teacher CE+KD+QAT 4-bit g32 (q4_0 size; encoder PTQ)": lambda: self._teacher_qat(
                "teacher-qat-u4g32-cekd", 4, "--group-size", "32", ce=1.0),
            # The token embedding kept at its post-training codes (--freeze-embedding): trained, all 51,865 rows
            # drift under Adam and English decoding loops on rare tokens.
            "teacher CE+KD+QAT enc 8-bit + dec 5-bit (emb 4-bit PTQ frozen)": lambda: self._teacher_qat(
                "teacher-qat-e8d5-emb4-cekd-fe", 5, "--encoder-bits", "8", "--embedding-bits", "4", ce=1.0,
                freeze_embedding=True),
            "teacher CE+KD+QAT enc 8-bit + dec 4-bit (emb 4-bit PTQ frozen)": lambda: self._teacher_qat(
                "teacher-qat-e8d4-cekd-fe", 4, "--encoder-bits", "8", ce=1.0, freeze_embedding=True),
            "teacher KD+QAT 4-bit g32 (q4_0 size; encoder + emb PTQ frozen)": lambda: self._teacher_qat(
                "teacher-qat-u4g32-kd-fe", 4, "--group-size", "32", freeze_embedding=True),
            "teacher CE+KD+QAT 4-bit g32 (q4_0 size; encoder + emb PTQ frozen)": lambda: self._teacher_qat(
                "teacher-qat-u4g32-cekd-fe", 4, "--group-size", "32", ce=1.0, freeze_embedding=True),
            # CE at a third of KD's weight, the checkpoint chosen on the dev split (every 100 steps): CE at full
            # weight made Japanese better than the teacher but English loop on a few clips.
            "teacher CE 0.3+KD+QAT enc 8-bit + dec 5-bit + emb 4-bit (best on dev)": lambda: self._teacher_qat(
                "teacher-qat-e8d5-emb4-ce03kd-dev", 5, "--encoder-bits", "8", "--embedding-bits", "4", ce=0.3,
                select_on_dev=True),
            **self._selection_rows(),
            # The guided per-matrix plan at the q4_0 size, its decoder trained (hidden-state KD on the blocks
            # the plan marks), against the RTN g32 plan trained the same way (above).
            "teacher KD+QAT guided per-matrix 4/6-bit (q4_0 size; encoder + emb PTQ frozen)": lambda: self._teacher_qat(
                "teacher-qat-guided-linear-q4_0-kd-fe", 4, plan=self._q4_0_plan("guided", "linear"),
                freeze_embedding=True),
            "teacher CE 0.3+KD+QAT guided per-matrix 4/6-bit (q4_0 size; best on dev)": lambda: self._teacher_qat(
                "teacher-qat-guided-linear-q4_0-ce03kd-dev", 4, plan=self._q4_0_plan("guided", "linear"), ce=0.3,
                select_on_dev=True),
            # Guided vs random selection after training: the seeded random plans of the PTQ rows above, trained
            # exactly as the guided one.
            **{f"teacher CE 0.3+KD+QAT random per-matrix 4/6-bit (q4_0 size; seed {k}; best on dev)":
               (lambda k=k: self._teacher_qat(f"teacher-qat-random-linear-s{k}-q4_0-ce03kd-dev", 4,
                                              plan=self._q4_0_plan("random", "linear", k), ce=0.3, select_on_dev=True))
               for k in (0, 1, 2)},
            # 10.5x on a CPU: the encoder must stay frozen (post-training), so it keeps 4 bits (GPTQ) and the
            # decoder and token embedding go to 2 bits (the decoder's feed-forward matrices of blocks 1-5 at 3)
            # to fit 27.6 MB; every quantized weight starts from GPTQ's codes.
            "teacher CE 0.3+KD+QAT enc 4-bit GPTQ + dec/emb 2-bit (10.5x; best on dev)": lambda: self._teacher_qat(
                "teacher-qat-e4d2-10.5x-ce03kd-dev", 2, "--encoder-bits", "4", "--override", "embed_positions=8",
                "--override", "model.decoder.layers.[1-5].fc[12]=3", ce=0.3, select_on_dev=True, qat_init="gptq"),
            # 10.5x on a CPU with the encoder trained after all: by regression, quantization-aware, then frozen at
            # its trained codes while the decoder trains.
            "encoder QAT by regression then decoder CE 0.3+KD+QAT guided 2/3-bit (10.5x; best on dev)":
                lambda: self._regressed_encoder_qat("teacher-qat-guided-23-10.5x-encreg", self._guided_10x_plan()),
            # The same plan on the full-range grid (q4_0's: all 2**bits codes, signed scales; the same bytes).
            "encoder QAT by regression then decoder CE 0.3+KD+QAT guided 2/3-bit full range (10.5x; best on dev)":
                lambda: self._regressed_encoder_qat("teacher-qat-guided-23-10.5x-full",
                                                    self._full_range(self._guided_10x_plan())),
            # ... and selected on that grid: select-layers measures each matrix's quantization loss on it.
            "encoder QAT by regression then decoder CE 0.3+KD+QAT guided 2/3-bit selected on full range (10.5x)":
                lambda: self._regressed_encoder_qat("teacher-qat-guided-23-10.5x-fullsel",
                                                    self._guided_10x_plan(full_range=True)),
            # The full-range row's encoder, with the token embedding row-split (rows of the training transcripts
            # 4-bit, the rest 2-bit) and the bytes that frees spent on the decoder (benchmarks/row_split_plan.py).
            "encoder QAT by regression then decoder CE 0.3+KD+QAT 3/4-bit, embedding rows 4/2-bit (10.5x; best on dev)":
                lambda: self._row_split_qat("teacher-qat-rows-10.5x", self._full_range(self._guided_10x_plan()),
                                            "teacher-qat-guided-23-10.5x-full"),
            # ... its decoder stage also on every training clip at 0.9x and 1.1x speed (distill --speed-perturb).
            "encoder QAT by regression then decoder CE 0.3+KD+QAT 3/4-bit, embedding rows 4/2-bit, speed-perturbed (10.5x)":
                lambda: self._row_split_qat("teacher-qat-rows-10.5x-sp", self._full_range(self._guided_10x_plan()),
                                            "teacher-qat-guided-23-10.5x-full", "--speed-perturb", "0.9,1.1"),
            # ... with the tokens of the 3 000 most frequent English words (wordfreq) among the 4-bit rows, and the
            # file filled to the earlier rows' 27.6 MB (format 4 generates the encoder's position table: 0.78 MB).
            "encoder QAT by regression then decoder CE 0.3+KD+QAT 3/4-bit, embedding rows 4/2-bit with common English "
            "words, speed-perturbed (10.5x)":
                lambda: self._row_split_qat("teacher-qat-rows-words-10.5x", self._full_range(self._guided_10x_plan()),
                                            "teacher-qat-guided-23-10.5x-full", "--speed-perturb", "0.9,1.1",
                                            words=3000, ratio=10.522),
            # ... that row's model with its stage-1 encoder trained 100 more steps at Whisper's 30-s window (the
            # models are decoded at 30 s; stage 1 ran at 10 s), swapped in; the decoder is not trained again.
            "encoder QAT by regression then decoder CE 0.3+KD+QAT 3/4-bit, embedding rows 4/2-bit with common English "
            "words, speed-perturbed, encoder continued at 30 s (10.5x)":
                lambda: self._encoder_at_30s("teacher-qat-rows-words-10.5x", "teacher-qat-guided-23-10.5x-full",
                                             self._full_range(self._guided_10x_plan())),
        }

    def _regressed_encoder_qat(self, name: str, plan: str) -> tuple[dict, float]:
        """The whole encoder (convolutions too) trained quantization-aware by regression on the teacher's encoder
        output, block by block (`distill --encoder-only --plan`: no decoder work, which a CPU affords), from GPTQ's
        codes; then the decoder and embedding trained as `_teacher_qat` does, on that encoder frozen at its
        trained codes (`--student FILE --qat-init packed`). Training wall = both stages."""
        enc = self._encoder_stage(name, plan)
        model, wall = self._decoder_stage(name, plan, enc["model"])
        return self.evaluate(model), enc["wall_s"] + wall

    def _row_split_qat(self, name: str, base_plan: str, encoder_of: str, *extra: str, words: int = 0,
                       ratio: float | None = None) -> tuple[dict, float]:
        """`_regressed_encoder_qat`'s encoder stage on `base_plan` (shared with the row `encoder_of`), then a plan of
        the same bytes (or 1/`ratio` of the fp32 teacher's) with the embedding row-split (the training transcripts'
        rows and those of the `words` most frequent English words at 4 bits) and the decoder raised
        (`row_split_plan.build`), and the decoder stage from the teacher's float decoder quantized by it, on that
        encoder (`row_split_plan.compose_student`)."""
        from row_split_plan import compose_student, plan_for

        from whisper_kdq.models.refs import load_model
        from whisper_kdq.quant.plan import load_plan

        enc = self._encoder_stage(encoder_of, base_plan)
        plan, start = self.out / f"plan-{name}.json", self.out / f"{name}-start.safetensors"
        if not start.is_file():
            teacher = load_model("base")
            data = plan_for(teacher, json.loads(Path(base_plan).read_text()), self.train,
                            words={"en": words} if words else None, ratio=ratio)
            plan.write_text(json.dumps(data, indent=2) + "\n")
            compose_student(teacher, Path(enc["model"]), load_plan(plan), start)
        model, wall = self._decoder_stage(name, str(plan), str(start), *extra)
        return self.evaluate(model), enc["wall_s"] + wall

    def _encoder_at_30s(self, row: str, encoder_of: str, base_plan: str, steps: int = 100) -> tuple[dict, float]:
        """The run `row`'s student (its row must have run) with the stage-1 encoder of `encoder_of` trained `steps`
        more at 30 s from its blocks and codes (`distill --encoder-only --student FILE --qat-init packed`) and
        swapped in (`swap_encoder.py`: codes copied). Training wall = both encoder runs and `row`'s decoder stage."""
        from swap_encoder import swap_encoder

        from whisper_kdq.quant.plan import load_plan

        student = self.out / row / "model.safetensors"
        if not student.is_file():
            raise SystemExit(f"{student} is missing: run the row that trains {row} first")
        enc = self._encoder_stage(encoder_of, base_plan)
        more = self._encoder_cli(f"{encoder_of}-encoder-w30", base_plan, "--student", enc["model"], "--qat-init", "packed",
                                 "--steps", str(steps), "--lr", "1e-4", "--warmup", "10", "--eval-every", "25",
                                 "--teacher-cache", str(self.out / "encoder-targets-front-w30.pt"))
        target = self.out / f"{row}-enc30.safetensors"
        if not target.is_file():
            swap_encoder(student, Path(more["model"]), load_plan(self.out / f"plan-{row}.json"), target)
        decoder_wall = json.loads((self.out / row / "summary.json").read_text())["wall_s"]
        return self.evaluate(str(target)), enc["wall_s"] + more["wall_s"] + decoder_wall

    def _encoder_stage(self, name: str, plan: str) -> dict:
        a = self.a
        return self._encoder_cli(f"{name}-encoder", plan, "--qat-init", "gptq", "--steps", str(a.encoder_steps),
                                 "--lr", str(a.encoder_lr), "--warmup", "20", "--eval-every", "50",
                                 "--teacher-cache", str(self.out / f"encoder-targets-front{self._window_tag()}.pt"),
                                 *(["--window", f"{a.train_window:g}"] if a.train_window else []))

    def _encoder_cli(self, out: str, plan: str, *flags: str) -> dict:
        """`distill --encoder-only` of the whole encoder (convolutions too) under `plan` into `--out/out`."""
        return self.cli("distill", "--encoder-only", "--teacher", "base", "--data", str(self.train),
                        "--eval-data", str(self.manifest), "--eval-split", "dev", "--out", str(self.out / out),
                        "--student-encoder-map", "0,1,2,3,4,5", "--frozen-encoder-layers", "0", "--plan", plan,
                        "--batch-size", str(self.a.batch_size), "--save-every", "25", "--device", self.a.device, *flags)

    def _decoder_stage(self, name: str, plan: str, student: str, *extra: str) -> tuple[str, float]:
        dev = ["--eval-data", str(self.manifest), "--eval-split", "dev", "--eval-every", str(max(1, self.a.steps // 3))]
        return self.distill(name, "--ce", "0.3", "--kd", "1", "--hidden", "1", "--matching", "static", "--plan", plan,
                            "--qat-init", "packed", *dev, *extra, student=student, lr=self.a.qat_lr)

    def _guided_10x_plan(self, full_range: bool = False) -> str:
        """The GPU study's plan (benchmarks/gpu_study.py): guided per weight matrix at 2/3 bits, positions 8-bit,
        10.5x the fp32 teacher, on the restricted or the full-range grid; selected on the dev split unless the
        file is already in --out."""
        from gpu_study import plan_path, select_plan

        want = {"ratio": 10.5, "low_bits": 2, "high_bits": 3, "full_range": full_range}
        target = plan_path(self.out, want)
        if not target.is_file():
            select_plan(argparse.Namespace(teacher="base", corpus=self.a.corpus, out=self.out, device=self.a.device), want)
        return str(target)

    @staticmethod
    def _full_range(plan: str) -> str:
        """`plan` with every symmetric uniform spec on the full-range grid, written beside it as `-full.json`:
        the default says so, and the rules inherit it unless they ask for offsets or APoT (`plan._merged`)."""
        data = json.loads(Path(plan).read_text())
        data["default"]["full_range"] = True
        target = Path(plan).with_name(Path(plan).stem + "-full.json")
        target.write_text(json.dumps(data, indent=2) + "\n")
        return str(target)
