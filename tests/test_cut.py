"""CUT and FastCUT: the official arithmetic, the official networks' layout and files, and the
guarantees that depend on how PatchNCE draws and groups its patches (ranks, accumulation)."""

import json
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import cyclegan.objectives.cut as cut
from cyclegan import Translator
from cyclegan.build import build_training
from cyclegan.config import load_config
from cyclegan.models.antialias import binomial_filter
from cyclegan.models.generator import GeneratorSpec, ResnetGenerator
from cyclegan.objectives import objective_for
from tests.conftest import ROOT, final_weights, launch, max_difference, script, tiny
from tests.harness.cut_ranks import controlled, two_steps
from tests.test_step import fresh_accelerator, uniform

# Recorded by running the official CUT code (taesungp/contrastive-unpaired-translation at b3ac297,
# CUTModel.optimize_parameters with its networks.py and patchnce.py) in float64 on the CPU:
# resnet_6blocks, ngf = ndf = 8, basic 3-layer D, instance norm, anti-aliased (its default),
# netF mlp_sample with netF_nc 32, num_patches 32, nce_T 0.07, layers 0,4,8,12,16, lsgan, lr 2e-4,
# betas (0.5, 0.999), batch 2; CUT: lambda_NCE 1 with identity NCE; FastCUT: lambda_NCE 10, no
# identity NCE, flip equivariance (steps 2 and 3 mirrored). Every parameter of network N seeded as
# randn(generator seeded with crc32("N/key")) * 0.02 after F's lazy creation; three steps on
# real_A = rand(seed 1000 + i) * 2 - 1, real_B = rand(seed 2000 + i) * 2 - 1 (i = 1, 2, 3); the
# patch places of step i, term t (0: A, 1: identity), layer l drawn as the first 32 of
# randperm(H_l * W_l, generator seeded with 10000 i + 100 t + l). The same run with other CPU
# kernels (ONEDNN_MAX_CPU_ISA=SSE41, ATEN_CPU_CAPABILITY=default) agreed to 9e-14 on the losses and
# 4e-11 on the weight changes.
OFFICIAL = {
    "cut": {
        "losses": [
            {"D": 0.5090718228611232, "G_GAN": 1.0120041429230617, "NCE": 3.7193604906682607, "NCE_Y": 3.7173665139724577},
            {"D": 0.6605444605671155, "G_GAN": 0.9824456769349158, "NCE": 3.617100769347703, "NCE_Y": 3.672876062434561},
            {"D": 0.3505464203257557, "G_GAN": 0.7997787581316084, "NCE": 3.653047968187144, "NCE_Y": 3.624742123552964},
        ],
        "deltas": {"G": (38.11484875985759, 0.016203705521874178), "D": (16.4411314848056, 0.00769943877693142),
                   "F": (3.0271075114558608, 0.001388247310578794)},
    },
    "fastcut": {
        "losses": [
            {"D": 0.5090718228611232, "G_GAN": 1.0120041429230617, "NCE": 37.19360490668261},
            {"D": 0.6672129724589836, "G_GAN": 1.1516504363775033, "NCE": 36.323326112424795},
            {"D": 0.3120353915452499, "G_GAN": 0.7181796925898679, "NCE": 36.60970838644192},
        ],
        "deltas": {"G": (38.498637540226106, 0.016291535552496007), "D": (16.571196259527788, 0.007774264674143402),
                   "F": (2.9034285891486733, 0.0012855716797728195)},
    },
}
NAMES = {"g_ab": "G", "d_b": "D", "f": "F"}
OUR_LOSSES = {"D": "d_b", "G_GAN": "adv_ab", "NCE": "nce", "NCE_Y": "nce_idt"}
LAYOUT = json.loads((ROOT / "tests/data/official_cut_layout.json").read_text())  # the official code's networks at full size (ngf 64, head 256)


def recorded_patch_ids(seed, step, term, layer, positions, count, device):
    generator = torch.Generator().manual_seed(10000 * (step + 1) + 100 * term + layer)
    return torch.randperm(positions, generator=generator)[:count].to(device)


def official_scenario(objective: str) -> tuple[list[dict], dict]:
    """Our CUT update on the recorded scenario."""
    cfg = load_config(None, [f"model.objective={objective}", "model.ngf=8", "model.n_blocks=6", "model.ndf=8",
                             "model.head_nc=32", "train.num_patches=32"])
    accelerator = fresh_accelerator()
    nets, opts, pools = build_training(accelerator, cfg)
    start = {}
    for ours, theirs in NAMES.items():
        net = accelerator.unwrap_model(getattr(nets, ours))
        net.load_state_dict({k: v if k.endswith(".filt") else seeded(f"{theirs}/{k}", v.shape)
                             for k, v in net.state_dict().items()})
        start[theirs] = [p.detach().clone() for p in net.parameters()]
    losses = []
    for i in range(3):
        result = cut.train_step(accelerator, nets, opts, pools, {"A": uniform(1001 + i), "B": uniform(2001 + i)}, cfg, i)
        losses.append({k: getattr(result.losses, ours).item() for k, ours in OUR_LOSSES.items()})
    deltas = {}
    for ours, theirs in NAMES.items():
        delta = torch.cat([(p.detach() - p0).flatten() for p, p0 in
                           zip(accelerator.unwrap_model(getattr(nets, ours)).parameters(), start[theirs])])
        deltas[theirs] = (delta.abs().sum().item(), delta.square().sum().item())
    return losses, deltas


def seeded(name: str, shape: torch.Size) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator, dtype=torch.float64) * 0.02


def matches_official(objective: str, losses: list[dict], deltas: dict) -> bool:
    # float64 rounding on other kernels moved these by 9e-14 (losses) and 4e-11 (deltas)
    recorded = OFFICIAL[objective]
    same_losses = all(mine[k] == pytest.approx(theirs[k], rel=1e-10)
                      for mine, theirs in zip(losses, recorded["losses"]) for k in theirs)
    return same_losses and all(deltas[n] == pytest.approx(recorded["deltas"][n], rel=1e-8) for n in recorded["deltas"])


@pytest.mark.parametrize("objective", ["cut", "fastcut"])
def test_update_matches_the_official_cut_code(float64, monkeypatch, objective):
    monkeypatch.setattr(cut, "patch_ids", recorded_patch_ids)
    monkeypatch.setattr(cut, "flipped", lambda seed, step: step >= 1)
    losses, deltas = official_scenario(objective)
    for mine, theirs in zip(losses, OFFICIAL[objective]["losses"]):
        assert {k: mine[k] for k in theirs} == pytest.approx(theirs, rel=1e-10)
    for name, figures in OFFICIAL[objective]["deltas"].items():
        assert deltas[name] == pytest.approx(figures, rel=1e-8), name
    # negative control: negatives drawn from the whole batch instead of each patch's own image
    loss = cut.patch_nce_loss
    monkeypatch.setattr(cut, "patch_nce_loss", lambda query, key, images, temperature: loss(query, key, 1, temperature))
    assert not matches_official(objective, *official_scenario(objective))


def test_networks_have_the_official_cut_layout_and_features():
    torch.manual_seed(0)
    cfg = load_config(None, ["model.objective=cut"])
    nets, _, _ = build_training(fresh_accelerator(), cfg)
    for ours, theirs in NAMES.items():
        state = getattr(nets, ours).state_dict()
        assert {k: list(v.shape) for k, v in state.items()} == LAYOUT[theirs], ours
    assert torch.equal(nets.g_ab.state_dict()["model.7.filt"][0, 0], binomial_filter(3))
    features = nets.g_ab(torch.zeros(LAYOUT["input_shape"]), tuple(cfg.model.nce_layers))
    assert [list(f.shape) for f in features] == LAYOUT["feature_shapes"]
    # the same semantic points on the CycleGAN layout: both downsampling outputs, blocks 1 and 5
    plain = ResnetGenerator(GeneratorSpec(ngf=8))
    points = [plain.model[i] for i in GeneratorSpec().feature_layers]
    assert [type(m).__name__ for m in points] == ["ReflectionPad2d", "Conv2d", "Conv2d", "ResnetBlock", "ResnetBlock"]
    assert points[3] is plain.model[10] and points[4] is [m for m in plain.model if type(m).__name__ == "ResnetBlock"][4]


@pytest.mark.slow
@pytest.mark.parametrize("objective, layouts", [
    ("cut", [(2, 1), (1, 4), (2, 2)]),
    pytest.param("fastcut", [(2, 2)], marks=pytest.mark.heavy),  # heavy: make test's budget; CUT's layouts stay
])
def test_two_ranks_and_accumulation_equal_one_large_batch(float64, monkeypatch, tmp_path, objective, layouts):
    """Four images: on one rank at once against (ranks, micro-batches) of the rest; float64, and
    Adam's eps at 1 makes its first steps nearly linear in the gradient. (1, 4) passes one image at
    a time, where a channels-last gradient once broke instance norm's backward on the CPU. One
    rank runs in this process, two are launched."""
    def weights(nproc, accum, control=None):
        if nproc > 1:
            out = tmp_path / f"{nproc}x{accum}-{control}.pt"
            launch(nproc, str(ROOT / "tests/harness/cut_ranks.py"), out, objective, accum, *[control] * bool(control))
            return torch.load(out, weights_only=True)
        with monkeypatch.context() as patched:
            for name, replacement in controlled(control, 1).items():
                patched.setattr(cut, name, replacement)
            return two_steps(fresh_accelerator(gradient_accumulation_steps=accum), objective, accum)

    def difference(a, b):
        return max((a[n][k] - b[n][k]).abs().max().item() for n in a for k in a[n])

    one = weights(1, 1)
    for nproc, accum in layouts:
        assert difference(weights(nproc, accum), one) < 1e-12, (nproc, accum)
    if objective == "cut":  # negative controls: patches grouped by the global batch (CUT issue #67),
        # and new patch places for each micro-batch
        assert difference(weights(2, 1, "global-reshape"), one) > 1e-7
        assert difference(weights(1, 2, "ids-per-micro-batch"), one) > 1e-7


def test_a_run_warm_starts_from_official_cut_files_and_from_a_cyclegan_run(demo_shards, trained_run, tmp_path):
    # an official CUT folder is three plain state_dicts under the official keys, which ours have (above)
    cfg = load_config(None, ["model.objective=cut", "model.ngf=8", "model.n_blocks=1", "model.ndf=8",
                             "model.n_layers_d=1"])
    nets = objective_for(cfg).build_networks(cfg)
    official = tmp_path / "official"
    official.mkdir()
    for ours, name in (("g_ab", "G"), ("d_b", "D"), ("f", "F")):
        torch.save(getattr(nets, ours).state_dict(), official / f"latest_net_{name}.pth")
    nearly_frozen = ["model.objective=cut", "train.max_steps=1", "train.lr=1e-12", "tracking.mode=disabled"]
    out = tmp_path / "from-official"
    result = script("train.py", "--config", "configs/demo.yaml", *tiny(demo_shards, out, *nearly_frozen,
                                                                       f"init_from={official}"))
    assert f"initialised g_ab, d_b, f from {official}" in result.stdout
    trained = final_weights(out)
    assert sorted(trained) == ["d_b", "f", "g_ab"]
    assert max_difference(trained, {n: getattr(nets, n).state_dict() for n in trained}) < 1e-9
    # a CycleGAN run's g_ab and d_b fit a CUT run of the same (plain) layout; the patch head starts fresh
    result = script("train.py", "--config", "configs/demo.yaml",
                    *tiny(demo_shards, tmp_path / "from-cyclegan", *nearly_frozen, "model.antialias=false",
                          f"init_from={trained_run}"))
    assert "initialised g_ab, d_b from" in result.stdout and "f starts fresh" in result.stdout
    refused = script("train.py", "--config", "configs/demo.yaml",
                     *tiny(demo_shards, tmp_path / "refused", *nearly_frozen, f"init_from={trained_run}"), check=False)
    assert refused.returncode != 0 and "set model.antialias=false" in refused.stderr


def test_a_cut_run_logs_its_losses_health_and_grids(cut_run):
    rows = [json.loads(line) for line in (cut_run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/adv_ab", "loss/nce", "loss/nce_idt", "loss/d_b", "health/d_b_real", "health/d_b_fake",
            "health/g_ab_change", "grad_norm/g", "grad_norm/d", "grad_norm/f", "lr/f"} <= set(rows[-1])
    assert not any(key.endswith(("_ba", "_a")) or "d_a" in key for key in rows[-1]), "no second generator's numbers"
    assert sorted(p.name for p in (cut_run / "samples").iterdir()) == ["step_0000003_AtoB.png",
                                                                     "step_0000003_identity.png"]
    config = (cut_run / "config.yaml").read_text()  # the objective's values, resolved, as the run used them
    assert "objective: cut" in config and "antialias: true" in config and "nce_layers:" in config
    # each grid's right column is the trained G applied to its left one: G(real A), and G(real B)
    translator = Translator.from_pretrained(cut_run)
    grids = {name: np.asarray(Image.open(cut_run / "samples" / f"step_0000003_{name}.png"), dtype=np.int16)
             for name in ("AtoB", "identity")}
    for name, grid in grids.items():
        size = grid.shape[1] // 2
        assert grid.shape[0] % size == 0 and grid.shape[1] == 2 * size, "two columns: real | G(real)"
        for row in range(grid.shape[0] // size):
            real, shown = (grid[row * size:(row + 1) * size, column * size:(column + 1) * size] for column in (0, 1))
            translated = np.asarray(translator(Image.fromarray(real.astype(np.uint8))), dtype=np.int16)
            assert np.abs(translated - shown).max() <= 2, (name, row)  # 8-bit rounding of the grid's panels
    # negative control: G(real A) is not what the identity grid shows beside real B
    assert np.abs(grids["AtoB"][:, size:] - grids["identity"][:, size:]).mean() > 5
    changes = [row["health/g_ab_change"] for row in rows if "health/g_ab_change" in row]
    assert changes and all(0 < c < 2 for c in changes), "mean |G(x) - x| of images in [-1, 1]"


@pytest.mark.parametrize("objective, overrides, init", [("cut", [], "xavier"), ("fastcut", [], "xavier"),
                                                       ("cut", ["model.init=normal"], "normal")])
def test_cut_networks_start_from_the_official_cut_init_unless_told_otherwise(objective, overrides, init):
    # Xavier-normal with gain 0.02: std = 0.02 * sqrt(2 / (fan_in + fan_out)); normal: std = 0.02
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.objective={objective}", "model.ngf=16", "model.n_blocks=5", *overrides])
    nets = objective_for(cfg).build_networks(cfg)
    for name, net in nets.named().items():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.weight.numel() > 10_000:
                fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(module.weight)
                expected = 0.02 * (2 / (fan_in + fan_out)) ** 0.5 if init == "xavier" else 0.02
                assert module.weight.std().item() == pytest.approx(expected, rel=0.05), name
                assert module.bias is None or not module.bias.any()
