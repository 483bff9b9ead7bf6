"""The course report resnet_lite grew from (../shared/seed/report.txt): its Table 1, the runs it reports."""

__all__ = ["REPORT_TABLE"]

# Table 1 of the report: every run is 70 epochs, cross-entropy, no weight decay. `model` is the report's model
# number, `variant` the network it trained. One row per run, in _COLUMNS' order.
_COLUMNS = ("model", "variant", "train_batch", "test_batch", "optimizer", "lr", "params", "acc")
REPORT_TABLE = [dict(zip(_COLUMNS, row, strict=True)) for row in [
    (0, "lite_r5b2", 512, 512, "adam", 0.01, 4_587_306, 91.28),
    (1, "lite_r5b2", 128, 128, "adam", 0.01, 4_587_306, 91.23),
    (2, "lite_r5b2", 512, 512, "sgd", 0.01, 4_587_306, 83.25),
    (3, "lite_r5b2", 256, 256, "adam", 0.01, 4_587_306, 90.97),
    (4, "lite_r5b2", 256, 128, "adam", 0.01, 4_587_306, 90.90),
    (5, "lite_r4b2", 128, 128, "adam", 0.01, 2_799_146, 91.47),
    (6, "lite_r5b2", 128, 128, "adam", 0.1, 4_587_306, 88.87),
    (7, "lite_r5b2", 128, 128, "adam", 0.001, 4_587_306, 91.14),
    (8, "lite_r4b3", 128, 128, "adam", 0.01, 4_367_786, 91.24),
]]
