"""The counter-based noise engine (rng="counter"): statistical quality, replay, paths, use.

Tolerances are 5 standard errors of each statistic at the sample size used (a correct
generator fails one of these with probability well under 1e-4), so a biased or correlated
stream fails them while a correct one passes whatever the keys.
"""

from __future__ import annotations

import math

import pytest
import torch

import zoft
from zoft.core import derive_seed
from zoft.perturb import counter, get_sampler, native

N = 1 << 21
SE = 1 / math.sqrt(N)


def gaussian(key: int, n: int = N) -> torch.Tensor:
    return counter.draw("gaussian", torch.Size([n]), key, torch.float64, "cpu")


@pytest.mark.parametrize("key", [0, 1, derive_seed(0, 3), 2**63 - 1])
def test_gaussian_moments_and_distribution(key):
    z = gaussian(key)
    assert abs(z.mean()) < 5 * SE
    assert abs(z.var() - 1) < 5 * math.sqrt(2) * SE
    assert abs((z**3).mean()) < 5 * math.sqrt(15) * SE
    assert abs((z**4).mean() - 3) < 5 * math.sqrt(96) * SE
    # Kolmogorov-Smirnov against N(0, 1): 1.95 / sqrt(n) is the 0.1% critical value
    cdf = torch.special.ndtr(z.sort().values)
    grid = torch.arange(1, N + 1, dtype=torch.float64) / N
    assert (cdf - grid).abs().max() < 1.95 * SE


def test_the_two_halves_of_a_gaussian_draw_are_independent():
    """Entry j and entry m + j are the cosine and sine of one Box-Muller pair: uncorrelated,
    and (independence, not just zero correlation) their squares are uncorrelated too."""
    z = gaussian(derive_seed(2), N + 1)  # odd: the first half has one more entry
    m = N // 2 + 1
    a, b = z[: m - 1], z[m:]
    assert abs((a * b).mean()) < 5 * SE * math.sqrt(2)
    sq = (a * a - 1) * (b * b - 1)
    assert abs(sq.mean()) < 5 * math.sqrt(4 / (N // 2))


def test_every_hash_bit_is_fair():
    h = counter.bits(N, *counter.split_key(derive_seed(7)), torch.device("cpu"))
    for b in range(32):
        freq = ((h >> b) & 1).double().mean()
        assert abs(freq - 0.5) < 5 * 0.5 * SE, f"bit {b}: frequency {float(freq)}"


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_streams_of_different_keys_and_neighbouring_entries_are_uncorrelated(kind):
    draw = lambda key: counter.draw(kind, torch.Size([N]), key, torch.float64, "cpu")
    base = draw(derive_seed(0, 0))
    for other in [derive_seed(0, 1), derive_seed(1, 0), derive_seed(0, 0) ^ 1]:  # tensors, steps, raw
        other_stream = draw(other)
        corr = (base * other_stream).mean()
        assert abs(corr) < 5 * SE, f"{kind}: corr with key {other} = {float(corr)}"
        # not the same numbers in another order (a hash keyed by xor alone would be)
        swapped = other_stream.view(-1, 2).flip(1).reshape(-1)
        assert abs((base * swapped).mean()) < 5 * SE
    for lag in (1, 2, 32, 4096):
        assert abs((base[:-lag] * base[lag:]).mean()) < 5 * SE, f"{kind}: lag {lag}"


def test_rademacher_is_exactly_plus_minus_one_and_balanced():
    u = counter.draw("rademacher", torch.Size([N]), 5, torch.float32, "cpu")
    assert set(u.unique().tolist()) == {-1.0, 1.0}
    assert abs(u.double().mean()) < 5 * SE


def test_the_elementary_functions_match_float64():
    u = torch.linspace(2**-24, 1 - 2**-24, 1_000_001)
    log_err = (counter._log(u).double() - torch.log(u.double())).abs().max()
    cos, sin = counter._cos_sin_2pi(u)
    cos_err = (cos.double() - torch.cos(2 * math.pi * u.double())).abs().max()
    sin_err = (sin.double() - torch.sin(2 * math.pi * u.double())).abs().max()
    assert log_err < 2e-6 and cos_err < 1e-6 and sin_err < 1e-6


def _paths(kind: str, n: int, key: int) -> dict[str, torch.Tensor]:
    """The float32 noise of one key from each path: native kernel, compiled torch, eager torch."""
    k1, k2 = counter.split_key(key)
    cpu = torch.device("cpu")
    out = {"compiled": counter._compiled(f"draw-{kind}", counter._draw)(kind, n, k1, k2, cpu, torch.float32),
           "eager": counter._draw(kind, n, k1, k2, cpu, torch.float32)}
    lib = native.library()
    if lib is not None:
        out["native"] = torch.zeros(n)
        native.add(lib, counter._NATIVE_KINDS[kind], [out["native"]], [k1], [k2], [1.0])
    return out


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("n", [1, 2, 3, 31, 32, 33, 4097, 100_003])
def test_every_path_gives_the_same_noise(kind, n):
    """Integer bits are identical on every path; the Gaussian's float part to the last ulp."""
    paths = _paths(kind, n, derive_seed(3, 4))
    assert native.library() is not None, "the native kernel did not build on this machine"
    for name, z in paths.items():
        if kind == "rademacher":
            assert torch.equal(z, paths["eager"]), name
        else:
            torch.testing.assert_close(z, paths["eager"], rtol=0, atol=1e-5, msg=name)


def test_replay_and_fused_add_match_draw():
    shape, key = torch.Size([37, 113]), derive_seed(3, 4)
    for kind in ("gaussian", "rademacher"):
        a = counter.draw(kind, shape, key, torch.float32, "cpu")
        assert torch.equal(a, counter.draw(kind, shape, key, torch.float32, "cpu"))  # replay
        p = torch.full(shape, 0.25)
        counter.add_(kind, p, key, -0.5)
        torch.testing.assert_close(p, 0.25 - 0.5 * a, rtol=0, atol=1e-7)
    bits = counter.bits(1000, 11, -12, torch.device("cpu"))
    assert torch.equal(bits, counter.bits(1000, 11, -12, torch.device("cpu")))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_one_call_over_many_tensors_equals_one_call_per_tensor(kind):
    """add_many_ (native: every float32/float64 tensor in one call; others one by one) gives
    each tensor what add_ gives it alone, whatever the mix of sizes, dtypes and layouts."""
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=gen).to(dt) for s, dt in [
        ((7, 5), torch.float32), ((1,), torch.float64), ((33,), torch.float32), ((300, 301), torch.float32),
        ((64,), torch.bfloat16), ((2, 3), torch.float64)]]
    tensors.append(torch.randn(9, 4, generator=gen).t())  # not contiguous
    keys = [derive_seed(5, j) for j in range(len(tensors))]
    alphas = [0.5 * (j + 1) * (-1) ** j for j in range(len(tensors))]
    batched = [t.clone() for t in tensors]
    counter.add_many_(kind, batched, keys, alphas)
    for t, b, key, alpha in zip(tensors, batched, keys, alphas):
        alone = t.clone()
        counter.add_(kind, alone, key, alpha)
        assert torch.equal(alone, b)
        noise = counter.draw(kind, t.shape, key, torch.float64 if t.dtype == torch.float64 else torch.float32, "cpu")
        torch.testing.assert_close(b, (t.to(noise.dtype) + alpha * noise).to(t.dtype),
                                   rtol=0, atol=1e-2 if t.dtype == torch.bfloat16 else 1e-6)


def test_the_native_kernel_does_not_depend_on_the_thread_count():
    if native.library() is None:
        pytest.skip("no native kernel on this machine")
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            p = torch.zeros(1_000_003)
            counter.add_("gaussian", p, 99, 1.0)
            results.append((p, counter.sum_of_squares("gaussian", 1_000_003, 99, "cpu")))
    finally:
        torch.set_num_threads(before)
    for p, sq in results[1:]:
        assert torch.equal(p, results[0][0]) and sq == results[0][1]
    assert results[0][1] == pytest.approx(float(results[0][0].double().square().sum()), rel=1e-12)


def test_the_kernel_is_built_once_and_cached(tmp_path, monkeypatch):
    if native.library() is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("ZOFT_CACHE", str(tmp_path))
    source = "int zoft_probe(void) { return 7; }\n"
    first = native._build(source, "cc")
    assert first is not None and first.parent == tmp_path / "kernels"
    stamp = first.stat().st_mtime_ns
    assert native._build(source, "cc") == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary left behind


def test_without_the_native_kernel_the_compiled_path_runs(monkeypatch):
    monkeypatch.setenv("ZOFT_NATIVE", "0")
    p = torch.zeros(1000)
    counter.add_("gaussian", p, 3, 1.0)
    torch.testing.assert_close(p, _paths("gaussian", 1000, 3)["eager"], rtol=0, atol=1e-5)


def test_sphere_has_radius_sqrt_n_per_tensor_and_add_matches_draw():
    s = get_sampler("sphere", "counter")
    u = s.draw(torch.Size([300, 7]), 9, torch.float32, torch.device("cpu"))
    assert abs(float(u.double().square().sum()) - 2100) < 1e-3
    p = torch.zeros(300, 7)
    s.add_(p, 9, 2.0)
    torch.testing.assert_close(p, 2 * u)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-14), (torch.float32, 1e-6),
                                        (torch.bfloat16, 3e-2)])
def test_perturb_and_restore_returns_the_parameters(dtype, tol):
    p0 = torch.randn(4096, generator=torch.Generator().manual_seed(0)).to(dtype)
    p = p0.clone()
    for alpha in (1e-3, -2e-3, 1e-3):
        counter.add_("gaussian", p, 77, alpha)
    assert float((p.double() - p0.double()).abs().max() / p0.double().abs().max()) <= tol


@pytest.mark.parametrize("perturbation", ["gaussian", "rademacher", "sphere"])
def test_optimizers_train_with_the_counter_engine_and_rerun_bitwise(perturbation):
    def run():
        x = torch.nn.Parameter(torch.full((50,), 1.0, dtype=torch.float64))
        opt = zoft.make_optimizer("zo-sgd", [x], lr=2e-3, eps=1e-4, perturbation=perturbation, rng="counter")
        losses = [float(opt.step(lambda: (x * x).sum())) for _ in range(300)]
        return losses, x.detach().clone()

    losses, x = run()
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(x, run()[1])


def test_invalid_rng_is_rejected():
    with pytest.raises(ValueError, match="invalid rng 'philox'"):
        zoft.make_optimizer("zo-sgd", [torch.nn.Parameter(torch.zeros(3))], rng="philox")
    with pytest.raises(ValueError, match="too large"):
        counter._check(1 << 31)


def test_forward_grad_accepts_the_counter_engine():
    model = torch.nn.Linear(8, 1).double()
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.randn(32, 1, dtype=torch.float64)
    opt = zoft.make_optimizer("forward-grad", model.parameters(), module=model, lr=0.05, rng="counter")
    closure = lambda: torch.nn.functional.mse_loss(model(x), y)
    first = float(closure())
    for _ in range(100):
        opt.step(closure)
    assert float(closure()) < first


def test_too_many_compiled_variants_is_an_error_not_a_silent_switch_to_eager(monkeypatch):
    """Past dynamo's recompile limit new variants used to run eagerly (or switch the whole
    engine to eager); eager and compiled Gaussians may differ in the last ulp, so a key's
    numbers depended on what the process ran before, and a resumed run could differ from an
    uninterrupted one. Now the limit is high (RECOMPILE_LIMIT) and hitting it is an error."""
    monkeypatch.setattr(counter, "RECOMPILE_LIMIT", 1)
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    run = counter._compile_or_fallback(lambda x: x * 2 + 1)
    run(torch.ones(5))
    with pytest.raises(RuntimeError, match="compiled variants"):
        run(torch.ones(5, dtype=torch.float64))  # a second kernel
    assert not counter._compile_failed
