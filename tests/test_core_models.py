"""Models: parameter counts, CBAM placement, feature shapes and an intact autograd graph."""

import pytest
import torch
from torch import nn

from kdnb.method.models import CBAM, STAGES, build_model, count_parameters


@pytest.mark.parametrize(
    "arch,cbam,expected",
    [("resnet18", False, 11_173_962), ("resnet50", False, 23_520_842), ("resnet50", True, 26_053_434)],
)
def test_parameter_counts_full_width_cifar_stem(arch, cbam, expected):
    assert count_parameters(build_model(arch, 10, cbam=cbam)) == expected


def test_cbam_one_gate_per_block_before_the_addition():
    torch.manual_seed(0)
    model = build_model("resnet50", cbam=True, width=0.125).eval()
    blocks = [b for stage in model.stages() for b in stage]
    gates = [m for m in model.modules() if isinstance(m, CBAM)]
    assert len(blocks) == 3 + 4 + 6 + 3 and len(gates) == len(blocks)
    # Each block's output must be relu(CBAM(residual branch) + identity): capture the gate's
    # output and the block input, recompute the block output independently.
    for block in blocks:
        gate = [m for m in block.modules() if isinstance(m, CBAM)]
        assert len(gate) == 1
        seen = {}
        h1 = gate[0].register_forward_hook(lambda m, i, o, seen=seen: seen.__setitem__("gate", o.clone()))  # added in place
        h2 = block.register_forward_hook(lambda m, i, o, seen=seen: seen.update(inp=i[0], out=o))
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))
        h1.remove(), h2.remove()
        identity = block.downsample(seen["inp"]) if block.downsample is not None else seen["inp"]
        torch.testing.assert_close(seen["out"], torch.relu(seen["gate"] + identity))


def test_cbam_reference_initialisation():
    model = build_model("resnet18", cbam=True, width=0.25)
    for m in model.modules():
        if isinstance(m, CBAM):
            assert torch.all(m.spatial_gate.bn.weight == 0)  # spatial gate starts as a constant 0.5
            assert m.channel_gate.mlp[1].out_features == max(1, m.channel_gate.mlp[1].in_features // 16)


@pytest.mark.parametrize("stem,sizes", [("cifar", (32, 16, 8, 4)), ("torchvision", (8, 4, 2, 1))])
@pytest.mark.parametrize("arch,expansion", [("resnet18", 1), ("resnet50", 4)])
def test_feature_shapes(stem, sizes, arch, expansion):
    model = build_model(arch, stem=stem, width=0.25)
    logits, feats = model(torch.randn(2, 3, 32, 32), return_features=True)
    assert logits.shape == (2, 10)
    assert list(feats) == list(STAGES)
    for (name, f), size, ch in zip(feats.items(), sizes, (16, 32, 64, 128)):
        assert f.shape == (2, ch * expansion, size, size), name
        assert model.stage_channels[name] == ch * expansion


def test_features_keep_their_graph():
    model = build_model("resnet18", width=0.125)
    _, feats = model(torch.randn(2, 3, 32, 32), return_features=True)
    feats["layer2"].pow(2).mean().backward()
    assert all(f.requires_grad for f in feats.values())
    grads = [p.grad for p in model.layer1.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.layer3.parameters())  # downstream stages untouched


def test_width_and_bad_arguments():
    assert count_parameters(build_model("resnet18", width=0.5)) < count_parameters(build_model("resnet18"))
    with pytest.raises(ValueError, match="unknown network .vgg16.; registered: resnet18"):
        build_model("vgg16")
    with pytest.raises(ValueError, match="unknown stem"):
        build_model("resnet18", stem="imagenet")
    assert isinstance(build_model("resnet18").stem[3], nn.Identity)
