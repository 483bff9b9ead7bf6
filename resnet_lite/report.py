"""The course report resnet_lite grew from (../shared/seed/report.txt): its Table 1, the runs it reports."""

__all__ = ["REPORT_TABLE"]

# Table 1 of the report: every run is 70 epochs, cross-entropy, no weight decay. `model` is the report's model
# number, `variant` the network it trained.
REPORT_TABLE = [
    dict(model=0, variant="lite_r5b2", train_batch=512, test_batch=512, optimizer="adam", lr=0.01, params=4_587_306, acc=91.28),
    dict(model=1, variant="lite_r5b2", train_batch=128, test_batch=128, optimizer="adam", lr=0.01, params=4_587_306, acc=91.23),
    dict(model=2, variant="lite_r5b2", train_batch=512, test_batch=512, optimizer="sgd", lr=0.01, params=4_587_306, acc=83.25),
    dict(model=3, variant="lite_r5b2", train_batch=256, test_batch=256, optimizer="adam", lr=0.01, params=4_587_306, acc=90.97),
    dict(model=4, variant="lite_r5b2", train_batch=256, test_batch=128, optimizer="adam", lr=0.01, params=4_587_306, acc=90.90),
    dict(model=5, variant="lite_r4b2", train_batch=128, test_batch=128, optimizer="adam", lr=0.01, params=2_799_146, acc=91.47),
    dict(model=6, variant="lite_r5b2", train_batch=128, test_batch=128, optimizer="adam", lr=0.1, params=4_587_306, acc=88.87),
    dict(model=7, variant="lite_r5b2", train_batch=128, test_batch=128, optimizer="adam", lr=0.001, params=4_587_306, acc=91.14),
    dict(model=8, variant="lite_r4b3", train_batch=128, test_batch=128, optimizer="adam", lr=0.01, params=4_367_786, acc=91.24),
]
