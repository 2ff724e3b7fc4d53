"""The networks match the official implementation key by key, and load its checkpoints."""

import pickle

import pytest
import torch

from cyclegan.errors import CheckpointError
from cyclegan.models import GeneratorSpec, NLayerDiscriminator, ResnetGenerator, load_generator
from cyclegan.models.loading import export_generator


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def official_generator_layout(ngf=64, n_blocks=9):
    """Keys and shapes of an official ResnetGenerator, written out from its description
    (not from our model): model.1 c7, model.4 and model.7 downsampling, blocks from model.10,
    two transposed convs, the last c7 at model.{n_blocks + 17}."""
    layout = {"model.1": (ngf, 3, 7, 7), "model.4": (ngf * 2, ngf, 3, 3), "model.7": (ngf * 4, ngf * 2, 3, 3)}
    for b in range(n_blocks):
        for conv in (1, 5):
            layout[f"model.{10 + b}.conv_block.{conv}"] = (ngf * 4, ngf * 4, 3, 3)
    up = 10 + n_blocks
    layout[f"model.{up}"] = (ngf * 4, ngf * 2, 3, 3)  # ConvTranspose: (in, out, k, k)
    layout[f"model.{up + 3}"] = (ngf * 2, ngf, 3, 3)
    layout[f"model.{up + 7}"] = (3, ngf, 7, 7)
    shapes = {}
    for prefix, shape in layout.items():
        shapes[f"{prefix}.weight"] = shape
        out_channels = shape[1] if prefix in (f"model.{up}", f"model.{up + 3}") else shape[0]
        shapes[f"{prefix}.bias"] = (out_channels,)
    return shapes


@pytest.mark.parametrize("n_blocks, expected", [(9, 11_378_179), (6, 7_837_699)])
def test_generator_parameter_counts(n_blocks, expected):
    assert n_params(ResnetGenerator(GeneratorSpec(n_blocks=n_blocks))) == expected


def test_discriminator_parameter_count_and_patch_output():
    d = NLayerDiscriminator()
    assert n_params(d) == 2_764_737
    assert d(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert list(d.state_dict()) == [f"model.{i}.{k}" for i in (0, 2, 5, 8, 11) for k in ("weight", "bias")]


def test_generator_layout_matches_official_key_by_key():
    ours = {k: tuple(v.shape) for k, v in ResnetGenerator().state_dict().items()}
    assert len(ours) == 48
    assert ours == official_generator_layout()


def official_discriminator_layout(ndf=64, n_layers=3):
    """Keys and shapes of an official NLayerDiscriminator with instance norm, written out from its
    description (not from our model): a 4x4 conv from 3 channels at model.0, then a (conv, norm,
    LeakyReLU) triple per layer with convs at model.2, 5, 8, ..., widths ndf * min(2^n, 8), and a
    1-channel 4x4 conv last. Instance norm keeps every conv's bias."""
    widths = [3] + [ndf * min(2**n, 8) for n in range(n_layers + 1)] + [1]
    shapes = {}
    for layer, index in enumerate([0] + [2 + 3 * n for n in range(n_layers + 1)]):
        shapes[f"model.{index}.weight"] = (widths[layer + 1], widths[layer], 4, 4)
        shapes[f"model.{index}.bias"] = (widths[layer + 1],)
    return shapes


def official_discriminator_forward(state, x, n_layers=3):
    """The official discriminator's arithmetic, from its description: strides 2 except the last
    feature layer and the output, padding 1, LeakyReLU(0.2), instance norm after every conv but
    the first and the last."""
    convs = sorted({int(k.split(".")[1]) for k in state})
    for position, index in enumerate(convs):
        stride = 2 if position < n_layers else 1
        x = torch.nn.functional.conv2d(x, state[f"model.{index}.weight"], state[f"model.{index}.bias"], stride, 1)
        if 0 < position < len(convs) - 1:
            x = torch.nn.functional.instance_norm(x)
        if position < len(convs) - 1:
            x = torch.nn.functional.leaky_relu(x, 0.2)
    return x


def test_padding_under_bf16_autocast_keeps_the_type_and_the_result():
    # CPU autocast would pad in fp32 and hand the convolution fp32 to cast back: padding in bf16
    # gives the convolutions the same values, so the output is the same bit for bit on any CPU
    torch.manual_seed(0)
    ours = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=2))
    autocasts = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=2))
    autocasts.load_state_dict(ours.state_dict())
    for seq in (m for m in autocasts.modules() if isinstance(m, torch.nn.Sequential)):
        for i, layer in enumerate(seq):
            if isinstance(layer, torch.nn.ReflectionPad2d):
                seq[i] = torch.nn.ReflectionPad2d(layer.padding)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.autocast("cpu", torch.bfloat16):
        padded = ours.model[10].conv_block[0](x.bfloat16())  # the first residual block's padding
        control = autocasts.model[10].conv_block[0](x.bfloat16())
        assert padded.dtype == torch.bfloat16 and control.dtype == torch.float32  # what autocast alone does
        assert torch.equal(ours(x), autocasts(x))


def test_official_discriminator_file_loads_strictly_and_judges_as_the_official_one(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn(shape, dtype=torch.float64) * 0.02 for k, shape in official_discriminator_layout().items()}
    assert sum(t.numel() for t in state.values()) == 2_764_737
    path = tmp_path / "latest_net_D_A.pth"
    torch.save(state, path)
    d = NLayerDiscriminator().double()
    d.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.rand(1, 3, 256, 256, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        ours, theirs = d(x), official_discriminator_forward(state, x)
    assert ours.shape == (1, 1, 30, 30)  # 70x70 patches
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    small = official_discriminator_layout(ndf=8, n_layers=2)
    assert {k: tuple(v.shape) for k, v in NLayerDiscriminator(3, 8, 2).state_dict().items()} == small


@pytest.mark.parametrize("norm", ["instance", "batch", "none"])
def test_every_layer_starts_as_the_official_init(norm):
    """Every conv and transposed conv N(0, 0.02) with zero bias; batch-norm scales N(1, 0.02), shifts 0;
    instance norm without parameters or statistics. Means and deviations within 5 standard errors."""
    torch.manual_seed(0)
    # the generator: 24 convs, a norm after all but the last; the discriminator: 5, no norm on the ends
    for net, convs, normed in ((ResnetGenerator(GeneratorSpec(norm=norm)), 24, 23), (NLayerDiscriminator(norm=norm), 5, 3)):
        layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
        assert len(layers) == convs
        scales = [(m.weight, 0.0) for m in layers]
        norms = [m for m in net.modules() if isinstance(m, (torch.nn.InstanceNorm2d, torch.nn.BatchNorm2d))]
        assert len(norms) == (0 if norm == "none" else normed)
        for m in norms:
            if norm == "instance":
                assert not m.affine and not m.track_running_stats and not list(m.state_dict())
            else:
                scales.append((m.weight, 1.0))
                assert m.bias.abs().max() == 0 and m.running_mean.abs().max() == 0 and (m.running_var == 1).all()
        for weight, mean in scales:
            w, n = weight.detach().double(), weight.numel()
            assert abs(w.mean().item() - mean) < 5 * 0.02 / n**0.5
            assert abs(w.std().item() - 0.02) < 5 * 0.02 / (2 * n) ** 0.5
        assert all(m.bias is None or m.bias.abs().max() == 0 for m in layers)


def test_official_layout_file_loads_strictly_and_translates(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn(shape) * 0.02 for k, shape in official_generator_layout().items()}
    path = tmp_path / "latest_net_G_A.pth"
    torch.save(state, path)
    g = load_generator(path)
    assert g.spec == GeneratorSpec()
    ResnetGenerator().load_state_dict(torch.load(path, weights_only=True), strict=True)
    out = g(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 3, 64, 64) and out.abs().max() <= 1


def test_architecture_is_inferred_and_legacy_norm_stats_dropped(tmp_path):
    state = {k: torch.zeros(s) for k, s in official_generator_layout(ngf=32, n_blocks=6).items()}
    state["model.2.running_mean"] = torch.zeros(32)
    state["model.2.running_var"] = torch.ones(32)
    state["model.2.num_batches_tracked"] = torch.tensor(0)
    torch.save(state, tmp_path / "latest_net_G.pth")
    g = load_generator(tmp_path / "latest_net_G.pth")
    assert (g.spec.ngf, g.spec.n_blocks, g.spec.norm) == (32, 6, "instance")


@pytest.mark.parametrize("norm, dropout", [("batch", False), ("none", False), ("instance", True)])
def test_other_norms_and_dropout_round_trip(tmp_path, norm, dropout):
    spec = GeneratorSpec(ngf=8, n_blocks=2, norm=norm, dropout=dropout)
    torch.save(ResnetGenerator(spec).state_dict(), tmp_path / "g.pth")
    assert load_generator(tmp_path / "g.pth").spec == spec
    keys = ResnetGenerator(spec).state_dict()
    second_conv = "model.10.conv_block.6.weight" if dropout else "model.10.conv_block.5.weight"
    assert keys[second_conv].dim() == 4
    assert ("model.1.bias" in keys) == (norm == "instance")


def test_export_round_trip_uses_the_json_architecture(tmp_path):
    g = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=2))
    export_generator(g, tmp_path / "g_ab.safetensors")
    loaded = load_generator(tmp_path)  # a folder stands for its g_ab
    assert loaded.spec == g.spec
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), loaded.state_dict().values()))


class NotATensor:
    pass


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"hello, not a checkpoint"), "cannot be read as a PyTorch file"),
        (lambda p: torch.save({"x": NotATensor()}, p), "refused by torch.load(weights_only=True)"),
        (lambda p: torch.save(NLayerDiscriminator().state_dict(), p), "looks like a discriminator"),
        (lambda p: torch.save([1, 2], p), "is not a state_dict"),
    ],
)
def test_bad_checkpoints_get_clear_messages(tmp_path, make, message):
    path = tmp_path / "bad.pth"
    make(path)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_generator(path)
    assert str(path) in str(info.value)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1)).state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_generator(path)


def test_mismatch_names_keys_and_expected_architecture(tmp_path):
    state = ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=3)).state_dict()
    del state["model.11.conv_block.5.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "g.pth")
    with pytest.raises(CheckpointError) as info:
        load_generator(tmp_path / "g.pth", expected=GeneratorSpec(ngf=16, n_blocks=3))
    text = str(info.value)
    assert "ngf=16, n_blocks=3" in text and "missing keys: model.11.conv_block.5.bias" in text
    assert "unexpected keys: extra.weight" in text and "shape mismatches: model.1.bias: file (8,) vs network (16,)" in text
    assert isinstance(pickle.dumps(info.value), bytes)
