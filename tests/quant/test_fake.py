"""Fake quantization: STE gradients, learnable clipping, and packed logits = fake-quant logits."""

from __future__ import annotations

import torch

from tests.conftest import tiny_model, tiny_processor_obj
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.fake import convert_to_packed, prepare_qat, qat_modules
from whisper_kdq.quant.plan import plan_from_options


def _logits(model):
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    return model(input_features=features, decoder_input_ids=torch.tensor([[50258, 50266, 50359, 400]])).logits


def test_qat_trains_the_clip_and_packs_to_the_same_logits(tmp_path):
    plan = plan_from_options(bits=4, group_size=32, overrides=[r"decoder\.layers\.0\.fc1=apot3c", "k_proj=uniform2t"])
    model = prepare_qat(tiny_model(), plan)
    fqs = qat_modules(model)
    assert "model.decoder.embed_tokens.weight" in fqs and "proj_out.weight" not in fqs
    assert model.proj_out.parametrizations.weight[0] is fqs["model.decoder.embed_tokens.weight"]  # still tied
    # One training step: weights get straight-through gradients, scales their own (clipping) gradients.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    _logits(model).logsumexp(-1).mean().backward()
    fc1 = fqs["model.decoder.layers.0.fc1.weight"]
    assert fc1.scale.grad is not None and fc1.scale.grad.abs().sum() > 0
    assert model.model.decoder.layers[0].fc1.parametrizations.weight.original.grad.abs().sum() > 0
    before = fc1.scale.detach().clone()
    optimizer.step()
    assert not torch.equal(before, fc1.scale.detach())
    with torch.no_grad():
        for fq in fqs.values():  # a visibly different clip than the initial search found
            fq.scale.mul_(0.9)
        fake = _logits(model)
    convert_to_packed(model, tiny_processor_obj(), plan, tmp_path / "qat.safetensors")
    with torch.no_grad():  # writing the file left the training model as it was (its float copy is separate)
        assert torch.equal(_logits(model), fake)
    loaded = load_model(str(tmp_path / "qat.safetensors"))
    with torch.no_grad():
        packed = _logits(loaded.model)
    assert (packed - fake).abs().max() <= 1e-4 * fake.abs().max()
    # The learned clip is what the file stores.
    from whisper_kdq.quant.reader import read_packed

    tensors, _ = read_packed(tmp_path / "qat.safetensors")
    stored = tensors["model.decoder.layers.0.fc1.weight::scales"].float()
    assert torch.allclose(stored, fc1.scale.detach().half().float())


def test_the_tied_embedding_is_fake_quantized_once_per_forward_with_the_same_result():
    from whisper_kdq.quant.fake import computed_once

    model = prepare_qat(tiny_model(), plan_from_options(bits=4, group_size=32))
    fq = qat_modules(model)["model.decoder.embed_tokens.weight"]
    calls = []
    compute = fq._fake_quantize
    fq._fake_quantize = lambda w: calls.append(1) or compute(w)  # counts the computations, not the reads

    def step(memo: bool):
        model.zero_grad(set_to_none=True)
        calls.clear()
        if memo:
            with computed_once():
                logits = _logits(model)
        else:
            logits = _logits(model)
        logits.logsumexp(-1).mean().backward()  # backward after the context: the graph is kept
        return logits.detach(), fq.scale.grad.clone(), len(calls)

    plain, plain_grad, plain_calls = step(memo=False)
    once, once_grad, once_calls = step(memo=True)
    assert plain_calls >= 2 and once_calls == 1  # embed_tokens and proj_out read the same tensor
    assert torch.equal(plain, once) and torch.allclose(plain_grad, once_grad, rtol=1e-5, atol=1e-7)
    assert step(memo=True)[2] == 1  # a new context computes it afresh


def test_qat_started_from_gptq_codes_is_the_gptq_checkpoint_until_it_trains(tmp_path):
    """`prepare_qat(init=...)`: the fake-quant forward starts exactly at the given codes and scales."""
    from whisper_kdq.quant.checkpoint import save_packed
    from whisper_kdq.quant.gptq import gptq_targets, gptq_tensors

    plan = plan_from_options(bits=3, group_size=32)
    source = tiny_model()
    specs = plan.resolve(source.state_dict())
    g = torch.Generator().manual_seed(0)
    hessians = {}
    for name in gptq_targets(source, specs):
        cols = dict(source.named_parameters())[name].shape[1]
        x = torch.randn(4 * cols, cols, generator=g) @ torch.randn(cols, cols, generator=g)
        hessians[name] = x.T @ x / len(x)
    init = gptq_tensors(source, specs, hessians)
    save_packed(tmp_path / "gptq.safetensors", source, tiny_processor_obj(), plan, quantized=init)
    with torch.no_grad():
        packed = _logits(load_model(str(tmp_path / "gptq.safetensors")).model)
        from_gptq = _logits(prepare_qat(tiny_model(), plan, init=init))
        from_rtn = _logits(prepare_qat(tiny_model(), plan))
    assert (from_gptq - packed).abs().max() <= 1e-4 * packed.abs().max()
    assert (from_rtn - packed).abs().max() > 1e-2 * packed.abs().max()  # the start really is another one
    fc1 = qat_modules(prepare_qat(tiny_model(), plan, init=init))["model.encoder.layers.0.fc1.weight"]
    assert torch.equal(fc1.scale.detach().half(), init["model.encoder.layers.0.fc1.weight"].scales)


def test_full_range_qat_trains_signed_scales_and_packs_to_the_same_logits(tmp_path):
    """The full-range grid's scales are signed: LSQ must move them without flipping the grid, and the
    packed file (code 0 used, negative fp16 scales) must decode to the fake-quant forward."""
    plan = plan_from_options(bits=2, group_size=32, full_range=True)
    model = prepare_qat(tiny_model(), plan)
    fc1 = qat_modules(model)["model.encoder.layers.0.fc1.weight"]
    signs = fc1.scale.detach().sign()
    assert (signs < 0).any() and (signs > 0).any()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        _logits(model).logsumexp(-1).mean().backward()
        optimizer.step()
    assert fc1.scale.grad.abs().sum() > 0 and torch.equal(fc1.scale.detach().sign(), signs)
    with torch.no_grad():
        fake = _logits(model)
    convert_to_packed(model, tiny_processor_obj(), plan, tmp_path / "full.safetensors")
    loaded = load_model(str(tmp_path / "full.safetensors"))
    assert loaded.info["tensors"]["model.encoder.layers.0.fc1.weight"]["full_range"] is True
    with torch.no_grad():
        packed = _logits(loaded.model)
    assert (packed - fake).abs().max() <= 1e-4 * fake.abs().max()
