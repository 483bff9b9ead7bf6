"""The figures a run directory gets: training curves and the lr (curves.png) and the confusion matrix
(confusion.png)."""
import torch

from .files import atomic_write

__all__ = ["plot_curves", "curves_figure", "plot_confusion"]

MAX_LABELLED_CLASSES = 20  # class names and counts drawn on the confusion matrix up to this many classes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever display there is
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    _pyplot().close(fig)


def plot_curves(rows: list[dict], path, title: str = "", schedule: list[tuple] | None = None) -> None:
    """Test accuracy, train (and test) loss and the learning rate per epoch, on whole-number epoch ticks.

    schedule: (epoch as a fraction, lr) points of the planned per-step schedule, drawn under the lr of each epoch's
    last step (rows' "lr")."""
    _save(curves_figure(rows, title, schedule), path)


def curves_figure(rows: list[dict], title: str = "", schedule: list[tuple] | None = None):
    """The matplotlib figure plot_curves saves: axes accuracy, loss, learning rate."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    evaluated = [r for r in rows if r["test_acc"] is not None]
    fig, (ax_acc, ax_loss, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    ax_acc.plot([r["epoch"] for r in evaluated], [100 * r["test_acc"] for r in evaluated], marker=".")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker=".", label="train")
    ax_loss.plot([r["epoch"] for r in evaluated], [r["test_loss"] for r in evaluated], marker=".", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    if schedule:
        ax_lr.plot(*zip(*schedule, strict=True), label="schedule (per step, as now set)")
    ax_lr.plot(epochs, [r["lr"] for r in rows], ".", label="last step of each epoch")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_lr.legend()
    for ax in (ax_acc, ax_loss, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epoch 1, 2, 3, not 1.25
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: torch.Tensor, classes: list[str], path, title: str = "") -> None:
    """Rows: true class, columns: predicted; colour is the row's fraction, numbers are counts (up to 20 classes)."""
    plt = _pyplot()
    counts = confusion.double()
    rates = counts / counts.sum(1, keepdim=True).clamp_min(1)
    n = len(classes)
    side = min(4 + 0.45 * n, 24)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        for t in range(n):
            for p in range(n):
                ax.text(p, t, int(counts[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if rates[t, p] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    _save(fig, path)


def plot_results(rows: list[dict], path) -> None:
    """Every run's test accuracy per epoch in one figure (the report's Figures 1-9 on shared axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_write

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, row in enumerate(rows):
        if row["curve"]:
            epochs, acc = zip(*row["curve"], strict=True)
            label = f"{row['run']} ({row['model']})" if row.get("model") else row["run"]
            ax.plot(epochs, acc, marker="." if len(epochs) < 30 else None, color=plt.cm.tab10(i % 10), label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy per epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
