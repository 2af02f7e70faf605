"""The validation curve of a training run (val_curve.png)."""

from __future__ import annotations

from typing import Optional

from matplotlib.figure import Figure  # no pyplot: no backend or global figure state


def plot_curve(path: str, history: list, title: str, reference: Optional[float] = None,
               reference_label: str = "", exact: Optional[float] = None) -> None:
    """Validation NELBO (EMA, raw params) and smoothed train loss (nats/token) vs step;
    reference: a horizontal line (the entropy rate); exact: the exact score's NELBO."""
    ev = [h for h in history if "val_nelbo" in h]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    if ev:
        ax.plot([h["step"] for h in ev], [h["val_nelbo"] for h in ev], "o-", label="validation NELBO (EMA)")
        raw = [h for h in ev if "val_nelbo_raw" in h]
        if raw:
            ax.plot([h["step"] for h in raw], [h["val_nelbo_raw"] for h in raw], "s--", ms=3, alpha=0.7,
                    label="validation NELBO (raw params)")
        tr = [h for h in ev if "train_loss" in h]
        if tr:
            ax.plot([h["step"] for h in tr], [h["train_loss"] for h in tr], ":", color="gray",
                    label="train loss (mean since last eval)")
    if reference is not None:
        ax.axhline(reference, color="k", lw=0.8, ls="--", label=reference_label)
    if exact is not None:
        ax.axhline(exact, color="tab:red", lw=0.8, ls=":", label="validation NELBO of the exact score")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    if ev:
        lo = min(h["val_nelbo"] for h in ev)
        lo = min([lo] + [r for r in (reference, exact) if r is not None])
        hi = max(h["val_nelbo"] for h in ev)
        ax.set_ylim(lo - 0.03 * lo, max(hi * 1.05, lo * 1.1))  # early train-loss spikes are clipped
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    from lsd_jax.runs import save_figure

    save_figure(fig, path, dpi=110)
