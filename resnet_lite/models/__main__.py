"""`python -m resnet_lite.models`: the registered variants at a glance."""

from rich.table import Table

from ..outputs.console import console
from ..report import REPORT_TABLE
from .lite import create_model, list_models
from .tools import count_macs, count_params


def main():
    table = Table(title="resnet_lite models (10 classes, 3x32x32 input)")
    for col in ("name", "blocks", "widths", "params", "MACs/image", "report models", "report acc %"):
        table.add_column(col, justify="left" if col in ("name", "blocks", "widths") else "right")
    for name in list_models():
        model = create_model(name)
        rows = [r for r in REPORT_TABLE if r["variant"] == name]
        stages = [getattr(model, s) for s in model.stage_names]
        table.add_row(
            name, "-".join(str(len(s)) for s in stages), "-".join(str(s[-1].conv2.out_channels) for s in stages),
            f"{count_params(model):,}", f"{count_macs(model) / 1e6:,.1f}M",
            ",".join(str(r["model"]) for r in rows), f"{max(r['acc'] for r in rows):.2f}" if rows else "-")
    # a pipe gets rich's 80 columns, which would fold the table; give it room
    console().print(table)


if __name__ == "__main__":
    main()
