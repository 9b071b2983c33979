"""SaShiMi: the pools against explicit sums, the recurrent mode against the full forward over every level's
buffering, causality at every position, state passing, gradients, and the recipe's one-line errors."""
import pytest
import torch

from ssmkit.errors import RecipeError
from ssmkit.generation import generate
from ssmkit.models import BACKBONES, SaShiMi, SequenceModel
from ssmkit.models.sashimi import DownPool, UpPool
from ssmkit.recipe import build_model, validate

FACTORS = [2, 3]  # unequal factors, so a swapped level or slot shows
L = 2 * 6 + 3  # two full periods of prod(FACTORS) = 6 and a partial one
MIXERS = {"s4d": dict(d_state=4), "s4": dict(d_state=4), "dss": dict(d_state=4), "dlr": dict(d_state=4),
          "attn": dict(n_heads=2)}


def make(name="s4d", unet=False, factors=FACTORS, d_input=3, **kw) -> SaShiMi:
    torch.manual_seed(0)
    mixer = dict(name=name, **MIXERS[name])
    return SaShiMi(d_input, 5, d_model=4, n_layers=2, mixer=mixer, pool_factors=factors, unet=unet, **kw).double().eval()


def steps(model, x, state=None):
    state = model.default_state(x.shape[0]) if state is None else state
    ys = []
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, 1), state


def test_pools_equal_explicit_sums():
    torch.manual_seed(0)
    p, d_in, d_out, B, n = 3, 2, 5, 2, 4
    down, up = DownPool(d_in, d_out, p).double(), UpPool(d_out, d_in, p).double()
    x = torch.randn(B, n * p, d_in, dtype=torch.float64)
    z = down(x)
    W, b = down.linear.weight, down.linear.bias
    for j in range(n):
        want = W @ torch.cat([x[:, j * p + s] for s in range(p)], dim=-1).T + b[:, None]  # (d_out, B)
        torch.testing.assert_close(z[:, j], want.T)
    u, pending = up(z)
    W2, b2 = up.linear.weight, up.linear.bias
    for t in range(n * p):
        j, r = divmod(t, p)
        want = torch.zeros(B, d_in, dtype=torch.float64) if j == 0 else (z[:, j - 1] @ W2.T + b2)[:, r * d_in:(r + 1) * d_in]
        torch.testing.assert_close(u[:, t], want)  # position jp + r: output r of coarse position j - 1
    torch.testing.assert_close(pending, (z[:, -1] @ W2.T + b2).reshape(B, p, d_in))


@pytest.mark.parametrize("name", list(MIXERS))
def test_step_equals_forward(name):
    m = make(name)
    x = torch.randn(2, L, 3, dtype=torch.float64)
    ys, state = steps(m, x)
    torch.testing.assert_close(ys, m(x), rtol=1e-9, atol=1e-10)
    assert state["phase"] == L % 6


@pytest.mark.parametrize("unet", [False, True])
@pytest.mark.parametrize("factors", [[2, 3], [4], [2, 2, 2]])
def test_step_equals_forward_unet_and_depths(unet, factors):
    m = make("s4d", unet=unet, factors=factors)
    n = 2 * m.period + 3
    x = torch.randn(2, n, 3, dtype=torch.float64)
    torch.testing.assert_close(steps(m, x)[0], m(x), rtol=1e-9, atol=1e-10)


def test_token_ids_step_equals_forward():
    m = make("s4", d_input=7, encoder="embedding")
    ids = torch.randint(0, 7, (2, L))
    torch.testing.assert_close(steps(m, ids)[0], m(ids), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("unet", [False, True])
def test_causal_at_every_position(unet):
    m = make("s4d", unet=unet)
    x = torch.randn(1, L, 3, dtype=torch.float64)
    y = m(x)
    for t in range(L):
        x2 = x.clone()
        x2[:, t] += 1.0
        y2 = m(x2)
        assert (y2[:, :t] - y[:, :t]).abs().max().item() < 1e-12 if t else True, f"output before {t} saw x[{t}]"
        assert (y2[:, t] - y[:, t]).abs().max().item() > 1e-6, f"output {t} does not see x[{t}]"


def test_any_length_equals_a_longer_input_cut():
    m = make("s4d")
    x = torch.randn(2, 3 * 6, 3, dtype=torch.float64)
    for n in (1, 5, 7, 13):
        torch.testing.assert_close(m(x[:, :n]), m(x)[:, :n], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["s4d", "s4", "attn"])
@pytest.mark.parametrize("cuts", [(7,), (6, 12), (1, 2, 9)])
def test_chunks_with_state_equal_the_whole(name, cuts):
    m = make(name, unet=name == "s4d")
    x = torch.randn(2, 2 * L, 3, dtype=torch.float64)
    whole, whole_state = m(x, return_state=True)
    torch.testing.assert_close(whole, m(x), rtol=1e-9, atol=1e-10)
    ys, state, edges = [], None, (0, *cuts, x.shape[1])
    for a, b in zip(edges, edges[1:]):
        y, state = m(x[:, a:b], state=state, return_state=True)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), whole, rtol=1e-9, atol=1e-10)
    # the state after the chunks is the state the recurrence reaches: stepping on from either agrees
    more = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(steps(m, more, state)[0], steps(m, more, whole_state)[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(steps(m, more, state)[0], m(torch.cat([x, more], 1))[:, -5:], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("unet", [False, True])
def test_gradients_reach_every_parameter(unet):
    m = make("s4d", unet=unet).train()
    m(torch.randn(2, L, 3, dtype=torch.float64)).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing, missing


def test_activation_checkpointing_gives_the_same_gradients():
    a, b = make("s4d", unet=True).train(), make("s4d", unet=True, checkpoint=True).train()
    x = torch.randn(2, L, 3, dtype=torch.float64)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_set_rate_reaches_every_level_and_mixers_lists_all():
    m = make("s4d", unet=True)
    assert len(m.mixers) == 2 * 2 * 2 + 2  # two levels x (down + up) x n_layers, plus the centre
    seen = []
    for mixer in m.mixers:
        mixer.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["rate"]), with_kwargs=True)
    x = torch.randn(1, L, 3, dtype=torch.float64)
    with torch.no_grad():
        y1 = m(x)
        m.set_rate(2.0)
        y2 = m(x)
    assert m.rate == 2.0 and seen == [1.0] * 10 + [2.0] * 10 and (y1 - y2).abs().max() > 1e-6
    with pytest.raises(ValueError, match="cannot rescale it"):
        make("attn").set_rate(2.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(mixer=dict(name="s4d", bidirectional=True)), "bidirectional"),
        (dict(layer=dict(kernel="s4d")), "instead of layer="),
        (dict(pool_factors=[]), "pool_factors"),
        (dict(pool_factors=[4, 1]), "pool_factors"),
        (dict(pool_factors=[4, 2.5]), "pool_factors"),
        (dict(expand=0), "expand"),
        (dict(pool="mean"), "per-position"),
        (dict(encoder="conv"), "unknown encoder"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(TypeError if "layer" in kwargs else ValueError, match=match):
        SaShiMi(2, 2, **kwargs)


def recipe(**model):
    return validate({"name": "t", "task": {"name": "cumsum", "seq_len": 24}, "model": model})


def test_recipe_builds_the_named_backbone():
    assert BACKBONES.get("sashimi") is SaShiMi and BACKBONES.get("sequence") is SequenceModel
    r = recipe(backbone="sashimi", d_model=4, n_layers=1, pool_factors=[2, 2], expand=3, unet=True, mlp_ratio=2)
    from ssmkit.recipe import build_task

    m = build_model(r, build_task(r))
    assert isinstance(m, SaShiMi) and m.factors == (2, 2) and m.expand == 3 and m.unet
    assert m.units["center"].blocks[0].mixer.d_model == 4 * 3 * 3
    assert isinstance(build_model(recipe(), build_task(r)), SequenceModel)  # the default backbone
    again = validate(r.to_dict())  # a run directory's resolved recipe re-validates
    assert again.model == r.model


@pytest.mark.parametrize(
    "model,match",
    [
        (dict(backbone="sashimi", mixer=dict(name="s4d", bidirectional=True)), "bidirectional"),
        (dict(backbone="sashimi", pool_factors=[4, 1]), "pool_factors must be"),
        (dict(backbone="sashimi", pool_factors=[]), "pool_factors must be"),
        (dict(backbone="sashimi", expand=0), "expand must be"),
        (dict(backbone="sashmi"), "did you mean 'sashimi'"),
        (dict(pool_factors=[2]), "option of model.backbone 'sashimi'"),
        (dict(unet=True), "set model.backbone: sashimi"),
    ],
)
def test_recipe_errors_are_one_line(model, match):
    with pytest.raises(RecipeError, match=match) as e:
        recipe(**model)
    assert "\n" not in str(e.value)


def test_a_pooling_task_is_a_recipe_error():
    from types import SimpleNamespace

    classify = SimpleNamespace(d_input=1, d_output=10, pool="mean", encoder="linear")  # as sMNIST's task
    with pytest.raises(RecipeError, match="per-position"):
        build_model(recipe(backbone="sashimi"), classify)


def test_generate_reads_the_prompt_as_its_steps_would():
    m = make("s4d", d_input=7, encoder="embedding").float()
    prompt = torch.randint(0, 7, (2, 9))  # not a multiple of the period: steps, convolution, steps
    conv = generate(m, prompt, 8, seed=3, compile="none", prefill="conv")
    step = generate(m, prompt, 8, seed=3, compile="none", prefill="step")
    assert torch.equal(conv.tokens, step.tokens) and conv.tokens.shape == (2, 17)


@pytest.mark.slow
def test_compiled_step_equals_eager():
    m = make("s4d")
    fast = m.compile_step("inductor")
    x = torch.randn(2, m.period + 2, 3, dtype=torch.float64)
    s_fast = s_eager = m.default_state(2, real=True)
    for t in range(x.shape[1]):
        y, s_fast = fast(x[:, t], s_fast)
        y_eager, s_eager = m.step(x[:, t], s_eager)
        torch.testing.assert_close(y, y_eager, rtol=1e-9, atol=1e-10)
    with pytest.raises(ValueError, match="auto, aot or inductor"):
        m.compile_step("fast")
