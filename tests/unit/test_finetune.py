"""Fine-tuning, read as a specification: the in-process checks (nothing trained, no process started). The rest, and
what the file tests and why: tests/integration/test_finetune.py."""

import pytest
import torch

from resnet_lite.models.lite import create_model
from resnet_lite.models.pretrained import initial_model
from resnet_lite.training.optim import OptimConfig, ScheduleConfig, build_optimizer, build_scheduler, lr_factor

from support.notebook import SEED_ARCH, SeedNet

pytestmark = pytest.mark.usefixtures("no_wandb")


@pytest.mark.parametrize("num_classes", [10, 3])
def test_a_seed_notebook_best_model_pth(tmp_path, num_classes):
    seed = SeedNet(*SEED_ARCH["lite_r4b2"]).eval()
    torch.save(seed.state_dict(), tmp_path / "best_model.pth")  # what the notebook saves: a plain state_dict
    model, origin = initial_model("lite_r4b2", num_classes, initial_checkpoint=tmp_path / "best_model.pth")
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        if num_classes == 10:
            assert torch.equal(model(x), seed(x)) and not origin["classifier_reset"]
        else:
            assert model(x).shape == (2, 3) and origin["classifier_reset"]
            assert torch.equal(model.forward_features(x), seed.layer4(seed.layer3(seed.layer2(seed.layer1(
                seed.relu(seed.bn1(seed.conv1(x))))))))
    assert origin["note"] == ("classifier loaded" if num_classes == 10 else
                              "classifier fc re-initialised for 3 classes (the weights have 10 classes)")


def test_backbone_lr_scale_and_freeze_follow_the_schedule_per_group():
    model = create_model("lite_r4b2")
    cfg = OptimConfig("sgd", lr=0.1, backbone_lr_scale=0.1, freeze_epochs=1, weight_decay=1e-4, no_decay_norm_bias=True)
    optimizer = build_optimizer(model, cfg)
    head = [g for g in optimizer.param_groups if not g["backbone"]]
    assert optimizer.param_groups[:len(head)] == head  # the classifier's first: the lr the engine logs
    assert {id(p) for g in head for p in g["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    schedule = ScheduleConfig("cosine")
    scheduler = build_scheduler(optimizer, schedule, steps_per_epoch=4, epochs=3, freeze_epochs=1)
    f = lr_factor(schedule, 4, 3)
    for step in range(12):
        for g in optimizer.param_groups:
            expected = 0.0 if g["backbone"] and step < 4 else (0.01 if g["backbone"] else 0.1) * f(step)
            assert g["lr"] == pytest.approx(expected), (step, g["backbone"])
        optimizer.step()
        scheduler.step()


def test_layer_decay_is_timms_per_layer_group():
    model = create_model("lite_r4b2")
    optimizer = build_optimizer(model, OptimConfig("adamw", lr=1.0, layer_decay=0.5))
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["fc.weight"])] == 1.0 == optimizer.param_groups[0]["lr"]
    # group_matcher(coarse=False): the stem, then one layer per block, each half the next one's lr
    blocks = ["conv1.weight", "layer1.0.conv1.weight", "layer1.1.conv1.weight", "layer2.0.conv1.weight",
              "layer4.1.conv1.weight", "fc.weight"]
    lrs = [lr_of[id(named[k])] for k in blocks]
    assert lrs == [0.5 ** 9, 0.5 ** 8, 0.5 ** 7, 0.5 ** 6, 0.5 ** 1, 1.0]


# ---------------------------------------------------------------------------------------------- preprocessing
