"""generate(): greedy decoding equals the argmax of one full convolution-mode forward, position by position;
the prompt read as a convolution equals the prompt stepped; seeds; batches; refusals; the step it reports."""
import sys

import pytest
import torch
from generation_models import BACKBONES, STEP_KERNELS, V, make_model

import ssmkit
from ssmkit import SequenceModel
from ssmkit.errors import UserError
from ssmkit.generation import generate

CASES = [(k, b) for b in BACKBONES for k in STEP_KERNELS]
IDS = [f"{b}-{k}" for k, b in CASES]
LP, NEW = 5, 14  # with SaShiMi's pool period 4, neither the prompt nor the total is a multiple of it


def prompt(batch: int = 2, length: int = LP, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kernel,backbone", CASES, ids=IDS)
def test_greedy_generation_equals_argmax_of_the_full_forward(kernel, backbone):
    model = make_model(kernel, backbone)
    g = generate(model, prompt(), NEW, temperature=0, keep_scores=True, compile="none")
    assert g.tokens.shape == (2, LP + NEW) and g.step == "eager"
    full = model(g.tokens)[:, LP - 1:-1]  # (B, NEW, V): the score at t predicts token t + 1
    torch.testing.assert_close(g.scores, full, rtol=1e-9, atol=1e-9)
    assert torch.equal(g.new_tokens, full.argmax(-1))


@pytest.mark.parametrize("kernel,backbone", CASES, ids=IDS)
def test_prompt_read_as_convolution_equals_prompt_stepped(kernel, backbone):
    model = make_model(kernel, backbone)
    conv = generate(model, prompt(length=9), 6, temperature=0, keep_scores=True, prefill="conv")
    step = generate(model, prompt(length=9), 6, temperature=0, keep_scores=True, prefill="step")
    torch.testing.assert_close(conv.scores, step.scores, rtol=1e-9, atol=1e-9)
    assert torch.equal(conv.tokens, step.tokens)


def test_a_batch_of_prompts_equals_each_prompt_alone():
    model = make_model("s4d")
    prompts = prompt(batch=3, length=6)
    together = generate(model, prompts, 8, temperature=0, keep_scores=True)
    for i in range(3):
        alone = generate(model, prompts[i], 8, temperature=0, keep_scores=True)  # a 1-d prompt is one sequence
        assert torch.equal(alone.tokens[0], together.tokens[i])
        torch.testing.assert_close(alone.scores[0], together.scores[i], rtol=1e-10, atol=1e-10)


def test_sampling_is_deterministic_for_a_seed_and_differs_across_seeds():
    model = make_model("s4d")
    before = torch.get_rng_state()
    a = generate(model, prompt(batch=4), 20, temperature=1.5, seed=7)
    b = generate(model, prompt(batch=4), 20, temperature=1.5, seed=7)
    c = generate(model, prompt(batch=4), 20, temperature=1.5, seed=8)
    assert torch.equal(a.tokens, b.tokens) and a.seed == 7
    assert not torch.equal(a.tokens, c.tokens)
    assert torch.equal(torch.get_rng_state(), before)  # sampling has its own generator
    drawn = generate(model, prompt(batch=4), 5, seed=None)
    assert torch.equal(generate(model, prompt(batch=4), 5, seed=drawn.seed).tokens, drawn.tokens)


def test_top_k_1_is_greedy_and_samples_stay_in_top_k():
    model = make_model("s4d")
    greedy = generate(model, prompt(), 10, temperature=0)
    assert torch.equal(generate(model, prompt(), 10, temperature=1.0, top_k=1, seed=3).tokens, greedy.tokens)
    g = generate(model, prompt(batch=8), 10, temperature=2.0, top_k=2, seed=3, keep_scores=True)
    top2 = g.scores.topk(2, dim=-1).indices  # (B, NEW, 2)
    assert (top2 == g.new_tokens.unsqueeze(-1)).any(-1).all()


def test_training_mode_restored_and_ssmkit_generate_is_the_function():
    model = make_model("s4d").train()
    g = ssmkit.generate(model, prompt(), 4, temperature=0)
    assert model.training
    assert torch.equal(g.tokens, generate(model.eval(), prompt(), 4, temperature=0).tokens)
    assert g.tokens_per_s > 0 and g.prefill_s >= 0


def test_adaptive_softmax_lm_generates_from_log_probs():
    from ssmkit.tasks.lm import AdaptiveLM

    torch.manual_seed(0)
    backbone = SequenceModel(30, 30, d_model=8, n_layers=1, mixer=dict(name="s4d", d_state=8), pool=None,
                             encoder="embedding")
    model = AdaptiveLM(backbone, 30, [10], 2.0).eval()  # the head runs in float32
    x = torch.randint(0, 30, (2, 4))
    g = generate(model, x, 6, temperature=0, keep_scores=True)
    full = model(g.tokens)[:, 3:-1]
    torch.testing.assert_close(g.scores, full, rtol=1e-4, atol=1e-5)
    assert torch.equal(g.new_tokens, full.argmax(-1))
    with pytest.raises(UserError, match="outside the model's vocabulary 0..29"):
        generate(model, torch.tensor([[3, 30]]), 2)


@pytest.mark.parametrize("build,match", [
    (lambda: SequenceModel(V, V, d_model=8, n_layers=1, mixer=dict(name="sgconv", l_max=32, kernel_dim=4),
                           pool=None, encoder="embedding"), "layer 0 \\(mixer 'sgconv'\\) has none"),
    (lambda: SequenceModel(V, V, d_model=8, n_layers=1, mixer=dict(name="s4d", bidirectional=True), pool=None, encoder="embedding"),
     "bidirectional mixer sees the future"),
    (lambda: SequenceModel(V, V, d_model=8, n_layers=1, mixer=dict(name="dlr", d_state=8, max_kernel_length=4),
                           pool=None, encoder="embedding"), "max_kernel_length=4 cuts the kernel"),
    (lambda: SequenceModel(V, 3, d_model=8, n_layers=1, pool="mean", encoder="embedding"), "classification model"),
])
def test_models_that_cannot_generate_are_refused_in_one_line(build, match):
    with pytest.raises(UserError, match=match) as e:
        generate(build(), prompt(), 3)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompt=torch.tensor([[1, 7]])), "token id 7, outside the model's vocabulary 0..6"),
    (dict(prompt=torch.tensor([[-1, 2]])), "token id -1"),
    (dict(prompt=torch.zeros(2, 0, dtype=torch.long)), "the prompt is empty"),
    (dict(prompt=torch.rand(2, 3)), "token ids of shape"),
    (dict(max_new_tokens=0), "max_new_tokens must be at least 1"),
    (dict(compile="fast"), "unknown compile='fast'"),
    (dict(prefill="scan"), "unknown prefill='scan'"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(top_p=2.0), "top_p must be in"),
])
def test_bad_generation_inputs(kwargs, match):
    args = dict(prompt=prompt(), max_new_tokens=3) | kwargs
    with pytest.raises(UserError, match=match):
        generate(make_model("s4d"), **args)


def test_auto_says_which_step_and_why():
    short = generate(make_model("s4d"), prompt(), 5)
    assert short.step == "eager" and "compiling" in short.step_note
    attn = generate(make_model("attn"), prompt(), 5)
    assert attn.step == "eager" and "attention" in attn.step_note
    s4 = generate(make_model("s4-nplr"), prompt(), 5)
    assert s4.step == "eager" and "complex" in s4.step_note
    assert generate(make_model("s4d"), prompt(), 5, compile="none").step_note == "compile='none'"


def test_a_failing_compile_falls_back_to_the_eager_step_with_a_warning(monkeypatch):
    model = make_model("s4d")
    eager = generate(model, prompt(), 6, temperature=0)

    def broken(backend="auto"):
        raise RuntimeError("no C++ compiler\nmore details")

    monkeypatch.setattr(model, "compile_step", broken)
    with pytest.warns(RuntimeWarning, match=r"compile_step\('aot'\) failed \(RuntimeError: no C\+\+ compiler\)"):
        g = generate(model, prompt(), 6, temperature=0, compile="aot")
    assert g.step == "eager" and "failed" in g.step_note
    assert torch.equal(g.tokens, eager.tokens)


@pytest.mark.slow
def test_the_compiled_step_generates_what_the_eager_step_does():
    """compile='aot' (AOTInductor, ~10-50 s to compile): S4D's real-arithmetic states, same greedy tokens."""
    torch.manual_seed(0)
    model = SequenceModel(V, V, d_model=8, n_layers=2, mixer=dict(name="s4d", d_state=8), pool=None, encoder="embedding").eval()
    eager = generate(model, prompt(), 30, temperature=0, keep_scores=True, compile="none")
    fast = generate(model, prompt(), 30, temperature=0, keep_scores=True, compile="aot")
    assert fast.step == "aot", fast.step_note
    torch.testing.assert_close(fast.scores, eager.scores, rtol=1e-4, atol=1e-5)
    assert torch.equal(fast.tokens, eager.tokens)
    again = generate(model, prompt(), 30, temperature=0, compile="aot")  # the compiled step is kept
    assert again.compile_s < 1.0 and torch.equal(again.tokens, eager.tokens)


def test_auto_compiles_a_long_generation_and_steps_real_states(monkeypatch):
    """Past AUTO_COMPILE_MIN_STEPS, auto asks for the ahead-of-time step and hands it S4D's real states
    (a stand-in for the compiled step records what it gets; the real compile is the slow test below)."""
    gen = sys.modules["ssmkit.generation.generate"]  # (ssmkit.generation.generate is also the function)
    model = make_model("s4d")
    eager = generate(model, prompt(), 8, temperature=0, keep_scores=True)
    seen = []

    def fake_compile_step(backend="auto"):
        def step(x, state):
            seen.append(all(not s.is_complex() and s.shape[-1] == 2 for s in state))
            return model.step(x, state)
        seen.append(backend)
        return step

    monkeypatch.setattr(gen, "AUTO_COMPILE_MIN_STEPS", 4)
    monkeypatch.setattr(model, "compile_step", fake_compile_step)
    g = generate(model, prompt(), 8, temperature=0, keep_scores=True)
    assert g.step == "aot" and seen[0] == "aot" and all(seen[1:]) and len(seen) == 1 + 1 + 7  # warm-up + 7 steps
    torch.testing.assert_close(g.scores, eager.scores, rtol=1e-10, atol=1e-10)
    assert generate(model, prompt(), 3).step == "eager"  # below the threshold
