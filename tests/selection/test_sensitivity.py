"""Per-layer losses on a tiny model and real speech clips."""

from __future__ import annotations

import copy

import torch

from whisper_kdq.data.manifest import load_dataset
from whisper_kdq.quant.schemes import QuantSpec
from whisper_kdq.selection.sensitivity import calibration_batches, distillation_losses, quantization_losses
from whisper_kdq.selection.units import layer_units
from tests.conftest import tiny_model


def test_quantization_loss_grows_as_bits_shrink_and_leaves_the_model_intact(fixture_manifest, tiny_processor):
    model = tiny_model()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    batches = calibration_batches(load_dataset(fixture_manifest), tiny_processor, batch_size=3)
    assert batches[0].mask.any() and batches[0].features.shape[1] == 80
    coarse, fine = layer_units(model), layer_units(model)
    quantization_losses(model, coarse, QuantSpec("uniform", 2, "per-channel"), batches)
    quantization_losses(model, fine, QuantSpec("uniform", 8, "per-channel"), batches)
    for c, f in zip(coarse, fine):
        assert c.params > 0 and -1e-6 <= f.quant_loss < c.quant_loss, c.name
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())


def test_distillation_loss_is_zero_against_itself_and_positive_against_another(fixture_manifest, tiny_processor):
    student = tiny_model(seed=0)
    batches = calibration_batches(load_dataset(fixture_manifest), tiny_processor, batch_size=6)
    units = layer_units(student)
    distillation_losses(student, copy.deepcopy(student), units, batches)
    blocks = [u for u in units if u.is_block]
    assert all(u.distill_loss < 1e-10 and u.teacher_layer == u.index for u in blocks)
    other = layer_units(student)
    distillation_losses(student, tiny_model(seed=1, encoder_layers=3, decoder_layers=3), other, batches)
    assert all(u.distill_loss > 1e-3 for u in other if u.is_block)


def test_linear_units_split_each_block_into_its_weight_matrices():
    model = tiny_model()
    blocks, linear = layer_units(model), layer_units(model, "linear")
    assert sum(u.params for u in blocks) == sum(u.params for u in linear)
    for b in (u for u in blocks if u.is_block):
        parts = [u for u in linear if u.component == b.component and u.index == b.index]
        # Encoder blocks: q, k, v, out, fc1, fc2; decoder blocks add the cross-attention's four.
        assert len(parts) == (6 if b.component == "encoder" else 10)
        assert sum(u.params for u in parts) == b.params
        assert all(u.name.startswith(b.name + ".") for u in parts)
