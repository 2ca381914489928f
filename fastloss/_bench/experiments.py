"""The classic loss experiments, run with fastloss's own kernels.

1. :func:`neuron`: one sigmoid neuron (input 1, target 0, lr 0.15) from a
   lucky and an unlucky start; MSE plateaus on the unlucky start, BCE not.
2. :func:`softmax_grid`: three classes, one logit fixed at -1000, the other
   two on a grid; loss and gradient-norm maps, and error maps vs the oracle.
3. :func:`grad_vs_logit`: gradient magnitude against the logit over the
   float range for sigmoid+MSE and sigmoid+BCE.
4. :func:`digits_mlp`: a NumPy MLP on scikit-learn's digits, sigmoid+MSE vs
   softmax+CE, from a normal and a saturating initialisation.

Each returns a dict of numbers (for ``results.json``) and writes its PNG.
"""
from __future__ import annotations

import os

import numpy as np

from .. import _api


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


# --------------------------------------------------------------------------
# 1. one sigmoid neuron
# --------------------------------------------------------------------------
def neuron(out_dir, *, epochs=300, lr=0.15, backend=None):
    """Train ``a = sigmoid(w*1 + b)`` towards 0 with MSE and BCE from two starts.

    MSE is the classic quadratic cost ``(a - y)^2 / 2`` (half of fastloss's
    ``sigmoid_mse``), so the numbers match the textbook experiment.
    """
    starts = {"lucky": (0.6, 0.9), "unlucky": (2.0, 2.0)}
    x, y = 1.0, np.zeros(1)
    runs = {}
    for start, (w0, b0) in starts.items():
        for loss_name in ("mse", "bce"):
            w, b = w0, b0
            losses, outputs = [], []
            for _ in range(epochs):
                z = np.array([w * x + b])
                if loss_name == "mse":
                    l, g = _api.sigmoid_mse(z, y, reduction="sum", return_grad=True, backend=backend)
                    l, g = 0.5 * l, 0.5 * g  # quadratic cost C = (a - y)^2 / 2
                else:
                    l, g = _api.sigmoid_bce(z, y, reduction="sum", return_grad=True, backend=backend)
                losses.append(float(l))
                outputs.append(float(1.0 / (1.0 + np.exp(-z[0]))))
                w -= lr * float(g[0]) * x
                b -= lr * float(g[0])
            below = [i for i, a in enumerate(outputs) if a < 0.1]
            runs[f"{start}/{loss_name}"] = {
                "start": [w0, b0], "loss": losses, "output": outputs, "final_output": outputs[-1],
                "epochs_to_output_below_0.1": (below[0] + 1) if below else None}
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, r in runs.items():
        style = "-" if key.endswith("bce") else "--"
        axes[0].plot(r["loss"], style, label=key)
        axes[1].plot(r["output"], style, label=key)
    axes[0].set(title="cost per epoch", xlabel="epoch", ylabel="cost")
    axes[1].set(title="neuron output (target 0)", xlabel="epoch", ylabel="sigmoid(w + b)")
    axes[1].axhline(0.1, color="grey", lw=0.8)
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("One sigmoid neuron, input 1, lr 0.15: MSE (dashed) vs BCE (solid)")
    fig.tight_layout()
    path = os.path.join(out_dir, "neuron.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    summary = {k: {"epochs_to_output_below_0.1": r["epochs_to_output_below_0.1"],
                   "final_output": r["final_output"], "final_loss": r["loss"][-1]} for k, r in runs.items()}
    return {"png": "neuron.png", "summary": summary, "curves": {k: {"loss": r["loss"], "output": r["output"]}
                                                                 for k, r in runs.items()}}


# --------------------------------------------------------------------------
# 2. three-class softmax grid
# --------------------------------------------------------------------------
def _row_error(impl, op, z, y, exact, dtype, oracle):
    """Per row: max over loss and gradient of ulp error / (1 + kappa); inf where non-finite."""
    el, eg, cl, cg = exact
    try:
        with np.errstate(all="ignore"):
            loss, grad = impl.pointwise(op, z.copy(), y.copy())
    except Exception:  # noqa: BLE001 - an implementation that fails shows as inf
        return np.full(z.shape[0], np.inf)
    loss = np.asarray(loss, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    bad = ~np.isfinite(loss) | ~np.isfinite(grad).all(axis=1)
    with np.errstate(all="ignore"):
        e1 = np.asarray(oracle.ulp_error(loss.astype(dtype), el, dtype), dtype=np.float64) / (1 + cl)
        e2 = np.asarray(oracle.ulp_error(grad.astype(dtype), eg, dtype), dtype=np.float64) / (1 + cg)
    err = np.maximum(np.nan_to_num(e1, nan=0.0), np.nan_to_num(e2, nan=0.0).max(axis=1))
    return np.where(bad, np.inf, err)


def softmax_grid(out_dir, impls, *, oracle, n=100, lim=10.0, fixed=-1000.0, label=2, dtype="float32"):
    """Maps over (z0, z1) in [-lim, lim]^2 with z2 = ``fixed`` and true class ``label``.

    With the label on the far-away class, softmax+MSE's gradient vanishes
    (the classic plateau) while softmax+CE keeps a gradient of norm >= 1.
    """
    dt = np.dtype(dtype)
    g = np.linspace(-lim, lim, n)
    a, b = np.meshgrid(g, g, indexing="xy")  # a: z0 along x, b: z1 along y
    z = np.stack([a.ravel(), b.ravel(), np.full(n * n, fixed)], axis=1).astype(dt)
    y = np.full(n * n, label, dtype=np.int64)
    ops = ("softmax_mse", "softmax_cross_entropy")
    fl = impls[0]  # the fastloss implementation shown in the loss / grad maps
    maps, stats = {}, {}
    for op in ops:
        loss, grad = fl.pointwise(op, z.copy(), y.copy())
        maps[(op, "loss")] = np.asarray(loss, dtype=np.float64).reshape(n, n)
        maps[(op, "grad norm")] = np.linalg.norm(np.asarray(grad, dtype=np.float64), axis=1).reshape(n, n)
        exact = oracle.softmax_rows(op, z.astype(np.float64), labels=y)
        for impl in impls:
            err = _row_error(impl, op, z, y, exact, dt, oracle).reshape(n, n)
            maps[(op, f"error {impl.name}")] = err
            stats[f"{op}/{impl.name}"] = {"max_err": float(np.max(err)), "nonfinite_rows": int(np.sum(~np.isfinite(err))),
                                         "rows_err_gt_4": int(np.sum(err > 4))}
        stats[f"{op}/grad_norm"] = {"min": float(maps[(op, "grad norm")].min()),
                                    "median": float(np.median(maps[(op, "grad norm")]))}
    plt = _plt()
    cols = 2 + len(impls)
    fig, axes = plt.subplots(2, cols, figsize=(3.1 * cols, 6.2), squeeze=False)
    ext = [-lim, lim, -lim, lim]
    for i, op in enumerate(ops):
        for j, (kind, m) in enumerate([(k[1], v) for k, v in maps.items() if k[0] == op]):
            ax = axes[i, j]
            if kind.startswith("error"):
                # log10(1 + err): 0 = exact; non-finite results drawn at the top (20)
                shown = np.log10(1 + np.where(np.isfinite(m), m, 1e20))
                im = ax.imshow(shown, origin="lower", extent=ext, cmap="magma", vmin=0, vmax=20)
            else:
                # floor at 1e-20 so the ordinary range keeps its colours
                shown = np.log10(np.maximum(m, 1e-20))
                im = ax.imshow(shown, origin="lower", extent=ext, cmap="viridis")
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_title(f"{op.replace('softmax_', 'sm+')}\n{'log10 ' if not kind.startswith('error') else 'log10(1+ulp/(1+k)) '}"
                         f"{kind.replace('error ', '')}", fontsize=8)
            ax.set_xlabel("z0", fontsize=8)
            ax.set_ylabel("z1", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(f"3 classes, z2 = {fixed:g}, label = {label}, {dt.name}; error maps: red/white = wrong "
                 f"(white = NaN/inf)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "softmax_grid.png"), dpi=100)
    plt.close(fig)
    return {"png": "softmax_grid.png", "dtype": dt.name, "stats": stats}


# --------------------------------------------------------------------------
# 3. gradient magnitude vs logit
# --------------------------------------------------------------------------
def grad_vs_logit(out_dir, impls, *, oracle, target=1.0, num=400):
    """|d loss / dz| for z over -1e30..1e30 (target 1: z << 0 is confidently wrong)."""
    mag = np.logspace(0, 30, num // 4)
    z64 = np.unique(np.concatenate([-mag, mag, np.linspace(-800, 800, num // 2 + 1)]))
    plt = _plt()
    # top row: the whole float range (symlog); bottom row: where the exponentials live
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    out = {}
    for col, op in enumerate(("sigmoid_mse", "sigmoid_bce")):
        _, exact, _, _ = oracle.elementwise(op, z64, np.full(z64.size, target))
        for row in range(2):
            axes[row, col].plot(z64, np.abs(exact), "k-", lw=4, alpha=0.25, label="exact (mpmath)")
        for impl in impls:
            for dt, mk in (("float32", "."), ("float64", "x")):
                zz = z64.astype(dt)
                with np.errstate(all="ignore"):
                    _, g = impl.pointwise(op, zz.copy(), np.full(zz.size, target, dtype=dt))
                g = np.abs(np.asarray(g, dtype=np.float64))
                zero = g == 0
                exact_dt = exact.astype(dt).astype(np.float64)
                normal = np.abs(exact_dt) >= np.finfo(dt).tiny
                wrong = zero & normal  # zeros where the truth is a normal number
                for row in range(2):
                    ax = axes[row, col]
                    line = ax.plot(zz[~zero], g[~zero], mk, ms=3, label=f"{impl.name} {dt}")[0]
                    # wrong zeros cannot sit on a log axis: big triangles on the bottom edge
                    ax.plot(zz[wrong], np.full(wrong.sum(), 1e-321), "v", ms=7, alpha=0.6,
                            color=line.get_color())
                out[f"{op}/{impl.name}/{dt}"] = {"zeros_where_normal": int(np.sum(zero & normal)),
                                                 "nonfinite": int(np.sum(~np.isfinite(g)))}
        top, bottom = axes[0, col], axes[1, col]
        top.set_xscale("symlog", linthresh=1.0)
        top.set_xticks([-1e30, -1e20, -1e10, -1e3, 0, 1e3, 1e10, 1e20, 1e30])
        bottom.set_xlim(-800, 800)
        for ax in (top, bottom):
            ax.set_yscale("log")
            ax.set_ylim(1e-323, 10)
            ax.grid(alpha=0.3)
            ax.set(xlabel="logit z", ylabel="|dL/dz|")
        top.set_title(f"|grad| of {op}, target {target:g}: whole float range (symlog)", fontsize=9)
        bottom.set_title(f"|grad| of {op}: zoom on |z| < 800", fontsize=9)
    axes[1, 1].legend(fontsize=7, loc="lower center", ncol=2)
    fig.suptitle("Gradient magnitude vs logit; triangles on the bottom edge: exact zeros where the true "
                 "gradient is a normal number of that dtype (flushed gradients)", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "grad_vs_logit.png"), dpi=100)
    plt.close(fig)
    return {"png": "grad_vs_logit.png", "stats": out}


# --------------------------------------------------------------------------
# 4. NumPy MLP on sklearn digits
# --------------------------------------------------------------------------
def _digits():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = d.data / 16.0
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    x, y = x[idx], d.target[idx].astype(np.int64)
    cut = int(0.75 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _train_mlp(data, loss_name, init_scale, *, epochs, hidden=32, lr=0.5, batch=32, seed=0, backend=None):
    """SGD on a 64-hidden-10 sigmoid-hidden MLP; returns test accuracy per epoch."""
    xtr, ytr, xte, yte = data
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((xtr.shape[1], hidden)) * init_scale / np.sqrt(xtr.shape[1])
    b1 = np.zeros(hidden)
    w2 = rng.standard_normal((hidden, 10)) * init_scale / np.sqrt(hidden)
    b2 = np.zeros(10)
    eye = np.eye(10)
    acc = []

    def forward(x):
        h = 1.0 / (1.0 + np.exp(-(x @ w1 + b1)))
        return h, h @ w2 + b2

    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        for s in range(0, len(order), batch):
            i = order[s:s + batch]
            x, y = xtr[i], ytr[i]
            h, z = forward(x)
            if loss_name == "sigmoid_mse":
                _, g = _api.sigmoid_mse(z, eye[y], reduction="sum", return_grad=True, backend=backend)
            else:
                _, g = _api.softmax_cross_entropy(z, y, reduction="sum", return_grad=True, backend=backend)
            g = g / len(i)  # both losses: sum over classes, mean over the batch
            dh = (g @ w2.T) * h * (1.0 - h)
            w2 -= lr * h.T @ g
            b2 -= lr * g.sum(axis=0)
            w1 -= lr * x.T @ dh
            b1 -= lr * dh.sum(axis=0)
        with np.errstate(over="ignore"):
            acc.append(float(np.mean(forward(xte)[1].argmax(axis=1) == yte)))
    return acc


def digits_mlp(out_dir, *, epochs=30, inits=(("normal", 1.0), ("saturating", 12.0)), backend=None):
    """Test accuracy per epoch for sigmoid+MSE and softmax+CE, normal vs saturating init."""
    data = _digits()
    curves = {}
    with np.errstate(over="ignore"):  # saturating init: exp(-z) overflows to inf -> sigmoid 0, fine
        for init, scale in inits:
            for loss_name in ("sigmoid_mse", "softmax_cross_entropy"):
                curves[f"{init}/{loss_name}"] = _train_mlp(data, loss_name, scale, epochs=epochs, backend=backend)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, acc in curves.items():
        ax.plot(range(1, epochs + 1), acc, "--" if "mse" in key else "-", marker="o", ms=3, label=key)
    ax.set(title="NumPy MLP (64-32-10) on sklearn digits", xlabel="epoch", ylabel="test accuracy", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "digits_mlp.png"), dpi=110)
    plt.close(fig)
    return {"png": "digits_mlp.png", "accuracy": curves,
            "final_accuracy": {k: v[-1] for k, v in curves.items()}, "epochs": epochs}
