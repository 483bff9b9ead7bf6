"""The model family, read as a specification: the seed's networks, exactly, behaving like timm models."""

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import resnet_lite
from resnet_lite.models.tools import count_macs, count_params
from resnet_lite.report import REPORT_TABLE

from support.notebook import SEED_ARCH, SeedNet

MODELS = resnet_lite.list_models("lite_*")
SEED_PARAMS = {"lite_r4b2": 2_799_146, "lite_r4b3": 4_367_786, "lite_r5b2": 4_587_306}


def _seed_state_dict(name):
    torch.manual_seed(0)
    seed = SeedNet(*SEED_ARCH[name])
    # non-trivial BN statistics, as a trained notebook model would have
    for m in seed.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return seed.eval()


def test_family_is_registered_in_timm():
    assert MODELS == ["lite_r4b2", "lite_r4b3", "lite_r5b2"]
    assert timm.list_models("lite_*") == MODELS
    assert all(timm.is_model(name) for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_param_count_is_the_seeds(name):
    assert count_params(resnet_lite.create_model(name)) == SEED_PARAMS[name]
    assert count_params(timm.create_model(name)) == SEED_PARAMS[name]


@pytest.mark.parametrize("row", REPORT_TABLE, ids=lambda r: f"model{r['model']}")
def test_seed_table_rows_name_registered_variants(row):
    assert row["params"] == SEED_PARAMS[row["variant"]]


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_finite_and_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = resnet_lite.create_model(name)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("name", MODELS)
def test_timm_conventions(name):
    model = resnet_lite.create_model(name, num_classes=100, in_chans=1, drop_rate=0.2).eval()
    x = torch.randn(2, 1, 32, 32)
    assert model(x).shape == (2, 100)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert torch.equal(model.forward_head(feats), model(x))
    assert model.get_classifier().out_features == 100
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_tells_the_truth(name):
    model = resnet_lite.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32)
    assert cfg["num_classes"] == 10
    assert cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-4)
    assert cfg["std"] == pytest.approx((0.2470, 0.2435, 0.2616), abs=1e-4)
    assert isinstance(model.get_submodule(cfg["first_conv"]), nn.Conv2d)
    assert model.get_submodule(cfg["classifier"]) is model.get_classifier()
    # pool_size is the final feature map of a 32x32 input
    assert tuple(model.forward_features(torch.zeros(1, 3, 32, 32)).shape[-2:]) == cfg["pool_size"]


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_matches_contiguous(name):
    torch.manual_seed(0)
    model = resnet_lite.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_seed_state_dict_loads_and_gives_identical_outputs(name):
    seed = _seed_state_dict(name)
    ours = resnet_lite.create_model(name).eval()
    ours.load_state_dict(seed.state_dict())  # strict: same keys, same shapes
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x), rtol=0, atol=0)


def test_convert_notebook_state_dict_unwraps_dataparallel_and_compile(tmp_path):
    seed = _seed_state_dict("lite_r4b2")
    wrapped = {"state_dict": {f"module._orig_mod.{k}": v for k, v in seed.state_dict().items()}}
    path = tmp_path / "best_model.pth"
    torch.save(wrapped, path)
    sd = resnet_lite.convert_notebook_state_dict(torch.load(path, weights_only=True))
    assert resnet_lite.convert_seed_state_dict is resnet_lite.convert_notebook_state_dict  # the earlier name works
    ours = resnet_lite.create_model("lite_r4b2").eval()
    ours.load_state_dict(sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), seed(x), rtol=0, atol=0)


def test_init_is_the_seeds():
    torch.manual_seed(0)
    model = resnet_lite.create_model("lite_r4b2")
    conv = model.layer3[0].conv1  # fan_out = 128 * 3 * 3
    assert conv.weight.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.05)
    assert torch.equal(model.bn1.weight, torch.ones(32)) and torch.equal(model.bn1.bias, torch.zeros(32))
    assert model.conv1.kernel_size == (5, 5) and model.conv1.padding == (2, 2)


def test_macs_count_convolutions_and_head():
    model = resnet_lite.create_model("lite_r4b2")
    stem = 32 * 32 * 32 * (3 * 5 * 5)
    assert count_macs(model) > stem
    # one stage less of work at 2x2 in the five-stage net, so fewer MACs despite more parameters
    assert count_macs(resnet_lite.create_model("lite_r5b2")) < count_macs(model)
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    assert count_macs(tiny, (3, 8, 8)) == 4 * 8 * 8 * 27 + 2 * 256


def test_unknown_model_is_one_line_error_with_suggestions():
    with pytest.raises(resnet_lite.UserError, match=r"unknown model 'lite_r4b'.*did you mean lite_r4b"):
        resnet_lite.create_model("lite_r4b")


def test_pretrained_weights_are_not_pretended():
    with pytest.raises(resnet_lite.UserError, match="no pretrained weights"):
        resnet_lite.create_model("lite_r4b2", pretrained=True)


def test_pretrained_from_a_named_file(tmp_path):
    """pretrained=True is honoured when the caller names the weights, the way timm's overlay and local-dir: do."""
    source = resnet_lite.create_model("lite_r4b2").eval()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = resnet_lite.create_model("lite_r4b2", pretrained=True,
                                     pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth"))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


# timm's own model contract, as huggingface/pytorch-image-models tests/test_models.py checks it for every model it
# ships; each test names the timm test it mirrors. Inputs are 2x3x32x32 (the models' default input size).
def _x(batch=2):
    return torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("name", MODELS)
def test_model_forward(name):
    """Mirrors timm's test_model_forward: default model, eval, batch-first output without NaNs."""
    model = timm.create_model(name, pretrained=False).eval()
    out = model(_x(1))
    assert out.shape == (1, model.num_classes) and not torch.isnan(out).any()


@pytest.mark.parametrize("name", MODELS)
def test_model_default_cfgs(name):
    """Mirrors timm's test_model_default_cfgs: num_classes, num_features, head_hidden_size and in_chans are set,
    forward_features is unpooled at pool_size, reset_classifier(0) gives pooled num_features, reset_classifier(0, '')
    and create_model(num_classes=0, global_pool='') give the unpooled map, classifier/first_conv name real weights,
    feature_info ends at num_features and pool_size."""
    model = timm.create_model(name, pretrained=False).eval()
    # timm's own opening checks: the attributes every timm model carries
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == model.pretrained_cfg["input_size"][0] == model.conv1.in_channels
    assert timm.create_model(name, pretrained=False, in_chans=1).in_chans == 1
    cfg, state_dict, x = model.pretrained_cfg, model.state_dict(), _x(1)
    pool_size = cfg["pool_size"]
    assert tuple(model.forward_features(x).shape[-2:]) == pool_size
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    model.reset_classifier(0, "")
    assert model(x).shape == (1, model.num_features, *pool_size)
    unpooled = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
    assert unpooled(x).shape == (1, unpooled.num_features, *pool_size)
    assert cfg["classifier"] + ".weight" in state_dict and cfg["first_conv"] + ".weight" in state_dict
    last = model.feature_info[-1]
    assert last["num_chs"] == model.num_features
    assert tuple(s // last["reduction"] for s in cfg["input_size"][1:]) == pool_size


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_features(name):
    """Mirrors timm's test_model_forward_features: features_only gives one map per feature_info level, with its
    channels and reduction; out_indices picks levels."""
    model = timm.create_model(name, pretrained=False, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) == len(SEED_ARCH[name][0]) + 1 >= 4  # the stem and every stage
    outs = model(_x())
    assert [o.shape[1] for o in outs] == channels
    assert [32 // o.shape[-1] for o in outs] == reductions
    assert not any(torch.isnan(o).any() for o in outs)
    picked = timm.create_model(name, pretrained=False, features_only=True, out_indices=(1, -1)).eval()
    assert [o.shape[1] for o in picked(_x())] == [channels[1], channels[-1]]


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_fx(name):
    """Mirrors timm's test_model_forward_fx: a torch.fx trace through timm's helpers (get_graph_node_names,
    create_feature_extractor at the last node) runs and equals the eager model; so does feature_cls='fx'."""
    from timm.models import create_feature_extractor, get_graph_node_names

    model = timm.create_model(name, pretrained=False).eval()
    _, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(fx_model(x)[eval_nodes[-1]], model(x), rtol=0, atol=0)
    graph_feats = timm.create_model(name, pretrained=False, features_only=True, feature_cls="fx").eval()
    assert [o.shape[1] for o in graph_feats(x)] == graph_feats.feature_info.channels()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_model_forward_torchscript(name):
    """Mirrors timm's test_model_forward_torchscript (create under set_scriptable, torch.jit.script, forward), and
    goes further: the scripted output equals eager and the scripted state_dict has the same keys."""
    with timm.set_scriptable(True):
        model = timm.create_model(name, pretrained=False).eval()
    scripted = torch.jit.script(model)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
    assert sorted(scripted.state_dict()) == sorted(model.state_dict())


@pytest.mark.parametrize("name", MODELS)
def test_model_factory_kwargs_device_dtype(name):
    """Mirrors timm's factory-kwarg creation (its model tests build every model with device= and dtype=): the
    model is built directly on the meta device in bfloat16, with the seed's parameter count, nothing allocated."""
    model = timm.create_model(name, pretrained=False, device="meta", dtype=torch.bfloat16)
    for key, t in model.state_dict().items():
        assert t.device.type == "meta", key
        assert t.dtype == (torch.long if key.endswith("num_batches_tracked") else torch.bfloat16), key
    assert count_params(model) == SEED_PARAMS[name]
    assert model.pretrained_cfg["num_classes"] == 10


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_keeps_device_and_dtype(name):
    """Mirrors timm's reset_classifier (get_device_dtype): a new head lands where the model is, in its dtype."""
    model = timm.create_model(name, pretrained=False, device="meta", dtype=torch.bfloat16)
    model.reset_classifier(7)
    assert (model.fc.weight.device.type, model.fc.weight.dtype, model.fc.out_features) == ("meta", torch.bfloat16, 7)
    model = timm.create_model(name, pretrained=False).to(torch.float64).eval()
    model.reset_classifier(3)
    assert model.fc.weight.dtype == torch.float64 and not model.fc.training
    assert model(_x().double()).shape == (2, 3)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("coarse", [True, False], ids=["coarse", "fine"])
def test_group_matcher(name, coarse):
    """Mirrors timm's group_matcher use (timm.models.group_parameters, as layer-wise LR decay calls it): every
    parameter in exactly one group, the stem first, the head last, one group per stage (coarse) or block (fine)."""
    from timm.models import group_parameters

    model = timm.create_model(name, pretrained=False)
    groups = group_parameters(model, model.group_matcher(coarse=coarse))
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert set(groups[0]) == {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert set(groups[max(groups)]) == {"fc.weight", "fc.bias"}
    layers = SEED_ARCH[name][0]
    assert len(groups) == 2 + (len(layers) if coarse else sum(layers))


@pytest.mark.parametrize("name", MODELS)
def test_no_weight_decay(name):
    """Mirrors timm's no_weight_decay hook as create_optimizer_v2 reads it: the names are real parameters, and
    with weight decay the BN and bias parameters go undecayed, every conv and linear weight decayed."""
    from timm.optim import create_optimizer_v2

    model = timm.create_model(name, pretrained=False)
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(params)
    opt = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=5e-4)
    by_wd = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert by_wd[0.0] == {id(p) for n, p in params.items() if p.ndim <= 1 or n in model.no_weight_decay()}
    assert by_wd[5e-4] == {id(p) for n, p in params.items() if p.ndim > 1 and n not in model.no_weight_decay()}


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_keys_are_the_seeds(name):
    """The TorchScript change keeps the seed notebook's keys (checkpoints, exports, convert_notebook_state_dict)."""
    assert sorted(resnet_lite.create_model(name).state_dict()) == sorted(_seed_state_dict(name).state_dict())
