"""Inputs and comparison helpers shared by the CUDA simulator tests."""
import numpy as np

#: relative tolerance per storage dtype: kernels and reference use the same
#: float64 formulas, so only libm-vs-NumPy exp/log1p rounding differs
RTOL = {np.float16: 2.0 ** -9, np.float32: 4 * 2.0 ** -23, np.float64: 64 * 2.0 ** -52}


def assert_close(got, want, dtype, what=""):
    """Equal NaN/inf pattern, zero iff zero, and within RTOL (scaled by the array's size)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    bad = np.nonzero(nan_g != nan_w)[0] if got.ndim == 1 else np.argwhere(nan_g != nan_w)
    assert not nan_g.shape or (nan_g == nan_w).all(), f"{what}: NaN mismatch at {bad[:5].tolist()}"
    fin = np.isfinite(want)
    assert (got[~fin & ~nan_w] == want[~fin & ~nan_w]).all(), f"{what}: infinities differ"
    assert ((got == 0) == (want == 0)).all(), f"{what}: zero pattern differs: {np.argwhere((got == 0) != (want == 0))[:5].tolist()}"
    rtol = RTOL[np.dtype(dtype).type]
    g, w = got[fin], want[fin]
    scale = np.max(np.abs(w), initial=0.0)
    err = np.abs(g - w)
    lim = rtol * np.abs(w) + rtol * 1e-3 * scale
    if (err > lim).any():
        i = int(np.argmax(err - lim))
        raise AssertionError(f"{what}: worst mismatch got {g[i]!r} want {w[i]!r} (|err| {err[i]:.3g} > {lim[i]:.3g})")


EXTREME_Z = [0.0, -0.0, 1e-30, -1e-30, 1e-3, 0.5, -2.0, 17.0, -17.0, 20.0, -20.0, 37.0, -37.0, 40.0, -40.0,
             88.0, -88.0, 100.0, -100.0, 745.0, -745.0, 1e10, -1e10, 1e30, -1e30, 3e38, -3e38,
             np.inf, -np.inf, np.nan, 1e-45, -1e-45]


def elementwise_inputs(op, dtype, n=128, seed=0):
    """Logits holding every extreme value plus ordinary ones, and targets."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n) * 4
    z[: len(EXTREME_Z)] = EXTREME_Z
    z[len(EXTREME_Z): 2 * len(EXTREME_Z)] = EXTREME_Z[::-1]
    if op == "mse":
        y = rng.standard_normal(n)
    else:
        y = rng.choice([0.0, 1.0, 0.5, 0.25, 0.999, 1e-8], size=n)
        y[[0, 1, 2, 3, 4, 7]] = 0.5  # y = sigmoid(0) at z = 0, -0, +-1e-30, 0.5: the tanh form
    with np.errstate(over="ignore"):
        return z.astype(dtype), y.astype(dtype)


def softmax_inputs(dtype, C, R=11, seed=0):
    """(R, C) logits with one hard case per row, labels and probabilities.

    Rows: ordinary; shifted 1e7 + [1, 0, ...]; dominant label (p -> 1);
    a NaN; all -inf; two +inf entries; half the classes masked (-inf);
    huge +-1e30 entries with an ignored label; tied with the max
    [-40, 0, 0, ...] (label 0); +-1e308 (float32: +-3e38), z - m overflows;
    two classes tied at the max, one of them the label.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((R, C)) * 3
    labels = rng.integers(0, C, R)
    z[1] = 1e7
    z[1, 0] = 1e7 + 1
    labels[1] = 0
    z[2] = 0.0
    z[2, C - 1] = 200.0 if dtype == np.float64 else 30.0
    labels[2] = C - 1
    z[3, C // 2] = np.nan
    z[4] = -np.inf
    z[5, [0, C - 1]] = np.inf
    labels[5] = C - 1
    z[6, ::2] = -np.inf
    labels[6] = 1
    z[7, 0], z[7, C - 1] = 1e30, -1e30
    labels[7] = -100
    z[8] = 0.0
    z[8, 0] = -40.0
    labels[8] = 0
    big = 1e308 if dtype == np.float64 else 3e38
    z[9, 0], z[9, C - 1] = big, -big
    labels[9] = C - 1
    z[10] = -30.0
    z[10, [1, C // 2]] = 0.0
    labels[10] = C // 2
    probs = rng.random((R, C))
    probs[6, ::2] = 0.0  # zero target on masked classes: masked exactly
    probs /= probs.sum(axis=1, keepdims=True)
    return z.astype(dtype), labels, probs.astype(dtype)
