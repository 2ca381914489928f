"""CUDA kernels vs the 60-digit mpmath oracle on tiny extreme cases.

The other simulator tests compare with fastloss.reference; these hold the
kernels to the stability contract itself (ORACLE_ULPS * (1 + kappa) ulp, no
spurious NaN/inf/0), on the inputs that motivated the reference's formulas:
y = 1/2 at z ~ 0, weight-first mse, rows tied with or just below the max,
1e308 rows.
"""
import numpy as np
import pytest

from fastloss import _cuda, oracle
from tests.tolerances import assert_contract

DTYPES = [np.float32, np.float64]

ELEMENTWISE = {
    # op: (z, y, w, pw); grad at scale 1 (the oracle's)
    "sigmoid_mse_half": ("sigmoid_mse", [1e-30, -1e-30, 0.0, 0.3, -0.7, 1e-8, 40.0, -40.0],
                         [0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.0], None, None),
    "sigmoid_bce_half_pw": ("sigmoid_bce", [1e-30, -1e-30, 0.3, -0.7, 2e-20, -5.0, 30.0, -30.0],
                            [0.5, 0.5, 0.5, 0.25, 0.5, 1.0, 0.0, 1.0], None,
                            [1.0, 3.0, 0.5, 2.0, 1.0, 2.0, 1.0, 0.5]),
    # weight first: w d and (w d) d stay finite where d*d overflows; w = 0 masks
    # weight first: w d and (w d) d stay finite where d*d overflows; w = 0 masks
    # (B is the dtype's scale: 1e300 or 1e38, 1/B subnormal for float32)
    "mse_weight_first": ("mse", ["B", "-B", "B", 1.0, 5.0, 1e-30],
                         ["-B", "B", 0.0, 1.0 + 2.0 ** -20, 2.0, 0.0],
                         ["1/B", "3/B", 2.0, 2.0, 0.0, 0.5], None),
}


@pytest.mark.parametrize("case", list(ELEMENTWISE))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_elementwise_contract(case, dtype):
    op, z, y, w, pw = ELEMENTWISE[case]
    big = 1e300 if dtype == np.float64 else 1e38
    sub = {"B": big, "-B": -big, "1/B": 1 / big, "3/B": 3 / big}
    z, y, w = ([sub.get(v, v) for v in a] if a is not None else None for a in (z, y, w))
    with np.errstate(over="ignore", under="ignore"):
        z, y = np.array(z, dtype), np.array(y, dtype)
        w = None if w is None else np.array(w, dtype)
        pw = None if pw is None else np.array(pw, dtype)
    grad, loss = np.empty_like(z), np.empty_like(z)
    total = _cuda.elementwise(op, z, y, w, pw, grad, loss, 1.0)
    l, g, kl, kg = oracle.elementwise(op, z, y, w, pw)
    assert_contract(loss, l, kl, dtype, what=f"{case} loss")
    assert_contract(grad, g, kg, dtype, what=f"{case} grad")
    # the total sums the float64 losses before their rounding to dtype (which
    # may overflow float32): compare with the oracle's float64 values
    assert total == pytest.approx(float(np.sum(l)), rel=float(np.finfo(dtype).eps))


#: softmax_mse rows with classes at and just below the max (near set z - m >= -ln2/2):
#: [-6, 0, 2^-6] cancelled p_1 - p_max 64x; -1e-30 next to a 0 max has e = 1 but
#: is not tied; ties with the label among them; a class inside (-0.3) and one
#: outside (-0.5) the near set; a max with a near class 1e-12 / 1e-30 below and
#: the rest 40 / 100 down, where that gap alone sets the gradient (missed in
#: float32 too before the near set: 1e-30 gave a far-class-sized gradient)
NEAR = [[-6.0, 0.0, 2.0 ** -6, -6.0, -6.0],
        [-1e-30, -1e-30, 0.0, -1e-30, -1e-30],
        [0.0, -2.0 ** -20, 0.0, -3.0, -40.0],
        [-0.3, 0.0, -2.0 ** -30, 0.0, -0.5],
        [-40.0, 0.0, -1e-12, -40.0, -40.0],
        [-100.0, 0.0, -1e-30, -100.0, -100.0]]
NEAR_LABELS = [0, 1, 2, 1, 0, 3]
#: heavy (t >= 1/2) targets on near and far classes, spread out, and zero on
#: the near pair of the last two rows (a target there would condition the
#: gradient on t_1 - t_2 instead of the gap)
NEAR_PROBS = np.array([[0.6, 0.1, 0.1, 0.1, 0.1],
                       [0.05, 0.75, 0.1, 0.05, 0.05],
                       [0.2, 0.2, 0.2, 0.2, 0.2],
                       [0.1, 0.05, 0.8, 0.0, 0.05],
                       [0.6, 0.0, 0.0, 0.2, 0.2],
                       [0.2, 0.0, 0.0, 0.5, 0.3]])
NEAR_W = np.array([1.0, 2.5, 0.5, 3.0, 0.75])


def _softmax_cases(dtype):
    big = 1e308 if dtype == np.float64 else 3e38
    rng = np.random.default_rng(7)
    probs = rng.random((3, 4))
    probs /= probs.sum(axis=1, keepdims=True)
    w = np.array([1.0, 2.5, 0.5, 3.0])
    tied = [[-40.0, 0.0, 0.0, 0.0], [0.0, 0.0, -40.0, -40.0], [0.0, -745.0, 0.0, -30.0]]
    return {
        # tiny gradients of rows tied with the max (cancel to noise in sum-then-subtract)
        "mse_tied_labels": ("softmax_mse", tied, [0, 2, 1], None, None, 0.0),
        "mse_tied_probs_weight": ("softmax_mse", tied, None, probs, w, 0.0),
        # classes just below the max, not tied (p_j - p_max cancels): the near set
        "mse_near_labels": ("softmax_mse", NEAR, NEAR_LABELS, None, None, 0.0),
        "mse_near_labels_weight": ("softmax_mse", NEAR, NEAR_LABELS, None, NEAR_W, 0.0),
        "mse_near_probs": ("softmax_mse", NEAR, None, NEAR_PROBS, None, 0.0),
        "mse_near_probs_weight": ("softmax_mse", NEAR, None, NEAR_PROBS, NEAR_W, 0.0),
        # z - m overflows for finite z: loss term 2 a (z/2 - m/2)
        "ce_huge_probs": ("softmax_cross_entropy", [[big, -big, 0.0, 1.0], [-big, big, big, 0.0],
                                                    [1e7 + 1, 1e7, 1e7, -big]], None, probs, None, 0.0),
        # argmax gradient = sum of the other classes' a - A q
        "ce_smooth_weight": ("softmax_cross_entropy", [[1e7 + 1, 1e7, 1e7, 0.0], [60.0, 0.0, -3.0, 1.0],
                                                       [0.0, 0.0, 0.0, 0.0]], [0, 1, 3], None, w, 0.1),
    }


@pytest.mark.parametrize("case", ["mse_tied_labels", "mse_tied_probs_weight", "mse_near_labels", "mse_near_labels_weight",
                                  "mse_near_probs", "mse_near_probs_weight", "ce_huge_probs", "ce_smooth_weight"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_softmax_contract(case, dtype):
    op, z, labels, probs, w, eps = _softmax_cases(dtype)[case]
    z = np.array(z, dtype)
    labels = None if labels is None else np.array(labels, np.int64)
    probs = None if probs is None else probs.astype(dtype)
    w = None if w is None else w.astype(dtype)
    grad, loss = np.empty_like(z), np.empty(z.shape[0])
    _cuda.softmax_rows(op, z, labels, probs, w, -100, eps, grad, loss, 1.0)
    l, g, kl, kg = oracle.softmax_rows(op, z, labels=labels, probs=probs, w=w, smoothing=eps)
    assert_contract(loss, l, kl, dtype, what=f"{case} loss")
    assert_contract(grad, g, kg, dtype, what=f"{case} grad")


def near_max_rows(dtype, seed, R=4, C=40):
    """(R, C) softmax_mse logits with classes at and just below each row's max
    (gaps 2^-40 .. 1, exact ties), some rows scaled by 10^+-3 and every other
    row with a third of its classes masked (-inf); C > 32 spreads a row over
    two chunks of the block.  Returns z, labels (half on the argmax) and probs
    (zero on masked classes)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, (R, C))
    for r in range(R):
        k = rng.integers(0, C, size=int(rng.integers(1, 7)))
        gaps = 2.0 ** -rng.uniform(0, 40, len(k)) * rng.choice([0, 1, 1, 1], len(k))
        z[r, k] = z[r].max() - gaps
        if r % 3 == 2:
            z[r] *= 10.0 ** rng.uniform(-3, 3)
        if r % 2:
            z[r, rng.choice(C, C // 3, replace=False)] = -np.inf
    z = z.astype(dtype)
    labels = np.where(rng.random(R) < 0.5, np.argmax(z, axis=1), rng.integers(0, C, R))
    probs = rng.dirichlet(np.full(C, 0.3), R)
    probs[np.isneginf(z)] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    return z, labels, probs.astype(dtype)


@pytest.mark.parametrize("weight", [False, True], ids=["", "weight"])
@pytest.mark.parametrize("target", ["labels", "probs"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_softmax_mse_near_max_rows(dtype, target, weight):
    z, labels, probs = near_max_rows(dtype, seed=11 + 2 * (target == "probs") + weight)
    if target == "labels":
        probs = None
    else:
        labels = None
    w = np.random.default_rng(5).uniform(0.1, 3.0, z.shape[1]).astype(dtype) if weight else None
    grad, loss = np.empty_like(z), np.empty(z.shape[0])
    _cuda.softmax_rows("softmax_mse", z, labels, probs, w, -100, 0.0, grad, loss, 1.0)
    l, g, kl, kg = oracle.softmax_rows("softmax_mse", z.astype(np.float64), labels=labels, probs=probs, w=w)
    assert_contract(loss, l, kl, dtype, what="near-max loss")
    assert_contract(grad, g, kg, dtype, what="near-max grad")
