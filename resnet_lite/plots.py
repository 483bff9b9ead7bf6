"""The figures a run directory gets: training curves (curves.png) and the confusion matrix (confusion.png)."""
import torch

from .files import atomic_write

__all__ = ["plot_curves", "plot_confusion"]

MAX_LABELLED_CLASSES = 20  # class names and counts drawn on the confusion matrix up to this many classes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever display there is
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    _pyplot().close(fig)


def plot_curves(rows: list[dict], path, title: str = "") -> None:
    """Test accuracy and train loss per epoch, as the seed report's figures."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    evaluated = [r for r in rows if r["test_acc"] is not None]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot([r["epoch"] for r in evaluated], [100 * r["test_acc"] for r in evaluated], marker=".")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
    ax_acc.grid(alpha=0.3)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_loss.plot([r["epoch"] for r in evaluated], [r["test_loss"] for r in evaluated], label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


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
