"""Shared helpers: real subprocesses, real shards, tiny configurations."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run(args: list[str], check: bool = True, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command from the repository root; on failure show what it printed."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run(args, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def script(name: str, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, str(SCRIPTS / name), *map(str, args)], check=check, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(num_processes: int, target: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch` on the CPU: gloo DDP for two or more processes."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    if num_processes > 1:
        head = [accelerate, "launch", "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
                "--main_process_port", str(free_port())]
    else:
        head = [accelerate, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1"]
    head += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    return run(head + [target, *map(str, args)], check=check, env={"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="session")
def demo_folders(tmp_path_factory) -> Path:
    from cyclegan.data.demo import write_demo_folders

    root = tmp_path_factory.mktemp("demo") / "folders"
    write_demo_folders(root)
    return root


@pytest.fixture(scope="session")
def demo_shards(demo_folders: Path) -> Path:
    out = demo_folders.parent / "shards"
    script("make_shards.py", "--input", demo_folders, "--output", out, "--shard-size", "40", "--workers", "2")
    return out


@pytest.fixture(scope="session")
def noise_shards(tmp_path_factory) -> Path:
    """Random-texture images: unlike the flat demo scenes, no crop has a near-constant channel,
    whose instance norm would blow rounding differences up (for tests that compare numbers)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("noise")
    rng = np.random.default_rng(0)
    for domain in "AB":
        (root / "folders" / f"train{domain}").mkdir(parents=True)
        for i in range(16):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "folders" / f"train{domain}" / f"{i:03d}.png")
    script("make_shards.py", "--input", root / "folders", "--output", root / "shards", "--workers", "1")
    return root / "shards"


def tiny(shards: Path, output: Path, *extra: str) -> list[str]:
    """Overrides for a network small enough that a step takes milliseconds on a CPU."""
    return [
        f"data.root={shards}", f"output_dir={output}", "model.ngf=8", "model.n_blocks=1", "model.ndf=8",
        "model.n_layers_d=1", "data.load_size=36", "data.crop_size=32", "data.num_workers=0", "train.batch_size=2",
        "tracking.log_every=1", "tracking.image_every=1000", "train.checkpoint_every=1000", *extra,
    ]


def checkpoint_weights(folder: Path) -> dict:
    """The trained networks' weights in a checkpoint folder, by name (g_ab, d_b, ...; not the averages)."""
    from safetensors.torch import load_file

    return {p.stem: load_file(str(p)) for p in sorted(folder.glob("*.safetensors")) if not p.stem.endswith("_ema")}


def final_weights(output: Path) -> dict:
    """The networks' weights in a run's newest checkpoint."""
    from cyclegan.checkpoint import complete_checkpoints

    return checkpoint_weights(complete_checkpoints(output / "checkpoints")[-1])


def max_difference(weights: dict, reference: dict) -> float:
    """The largest absolute difference between two runs' weights, over every tensor."""
    return max((weights[n][k].double() - reference[n][k].double()).abs().max().item() for n in reference
               for k in reference[n])


def read_only_folder(folder: Path) -> Path:
    """A new folder nobody may write into: by its mode, and for root (whom modes do not stop, as
    in CI) by the immutable attribute. `writable_again` undoes it."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
    return folder


def writable_again(root: Path) -> None:
    """Undo `read_only_folder` for every folder at and below `root`, so pytest can clean up."""
    for folder in [root, *root.rglob("*")]:
        if folder.is_dir() and not folder.is_symlink():
            if os.geteuid() == 0:
                subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)
            folder.chmod(0o755)


def make_image_zoo(folder: Path) -> dict[str, str]:
    """Images of every awkward kind, plus broken files; returns name -> what it is."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    rgb.save(folder / "rgb.jpg", quality=90)
    rgb.save(folder / "rgb.png")
    rgb.convert("L").save(folder / "grey.png")
    rgb.convert("RGBA").save(folder / "alpha.png")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 48), dtype=np.uint16)).save(folder / "deep16.png")
    rgb.save(folder / "rgb.tiff")
    rgb.save(folder / "rgb.bmp")
    rgb.save(folder / "rgb.webp")
    (folder / "nested").mkdir(exist_ok=True)
    rgb.save(folder / "nested" / "inner.v2.png")
    (folder / "empty.png").write_bytes(b"")
    good = (folder / "rgb.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "not_an_image.png").write_text("this is text")
    return {"good": 11, "bad": 3}


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """A weights file with the layout of the FID Inception network but random values: the real
    code path (file, loading, 2048 features) without downloading the real weights. Its batch-norm
    statistics are measured on random images, so that features tell images apart (with the
    default statistics every image maps to nearly the same features, and every FID is ~0)."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *args, **kwargs: None)
        torch.manual_seed(0)
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    for norm in net.modules():
        if isinstance(norm, torch.nn.BatchNorm2d):
            norm.momentum = None  # a plain average over the calibration batch
            norm.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)))
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def generators(tmp_path_factory) -> Path:
    """A folder with a tiny pair of generators, as an export holds them (tests only read it)."""
    import torch

    from cyclegan.models import GeneratorSpec, ResnetGenerator
    from cyclegan.models.loading import export_generator

    folder = tmp_path_factory.mktemp("generators")
    torch.manual_seed(0)
    for name in ("g_ab", "g_ba"):
        export_generator(ResnetGenerator(GeneratorSpec(ngf=8, n_blocks=1)), folder / f"{name}.safetensors")
    return folder


@pytest.fixture(scope="session")
def trained_run(demo_shards, tmp_path_factory) -> Path:
    """One tiny real run folder shared by every module that only reads a run: config, metrics, a
    sample grid, checkpoints, export. Tests that change a run copy it first."""
    out = tmp_path_factory.mktemp("run") / "run"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(demo_shards, out, "train.max_steps=3", "tracking.image_every=3", "tracking.mode=disabled"))
    return out


@pytest.fixture
def float64():
    """float64 as the default dtype for one test: equivalence tests that must hold on any CPU."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def ema_run(demo_shards, tmp_path_factory) -> Path:
    """The same with averaged generators (train.ema_decay=0.5): exported, and beside the trained ones
    in its last checkpoint."""
    out = tmp_path_factory.mktemp("ema-run") / "run"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(demo_shards, out, "train.max_steps=3", "train.ema_decay=0.5", "tracking.image_every=3",
                 "tracking.mode=disabled"))
    return out


@pytest.fixture(scope="session")
def cut_run(demo_shards, tmp_path_factory) -> Path:
    """The same for model.objective=cut: one generator (g_ab, anti-aliased), d_b and the patch head."""
    out = tmp_path_factory.mktemp("cut-run") / "run"
    script("train.py", "--config", "configs/demo.yaml",
           *tiny(demo_shards, out, "model.objective=cut", "model.n_blocks=5", "train.num_patches=16",
                 "model.head_nc=16", "train.max_steps=3", "tracking.image_every=3", "tracking.mode=disabled"))
    return out


@pytest.fixture
def generator(tmp_path) -> Path:
    """A tiny exported generator (g_ab.safetensors and its JSON)."""
    from cyclegan.models.generator import GeneratorSpec, ResnetGenerator
    from cyclegan.models.loading import export_generator

    path = tmp_path / "gen" / "g_ab.safetensors"
    path.parent.mkdir()
    export_generator(ResnetGenerator(GeneratorSpec(ngf=4, n_blocks=1)), path)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """trainA/ and trainB/ of three random 24 px PNGs each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for domain in "AB":
        (tmp_path / "photos" / f"train{domain}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                tmp_path / "photos" / f"train{domain}" / f"{i}.png")
    return tmp_path / "photos"
