"""scripts/translate.py on real files: sizes, modes, bad files, and the official arithmetic."""

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from cyclegan.models import GeneratorSpec, ResnetGenerator
from tests.conftest import make_image_zoo, script


def save_generator(path, spec=GeneratorSpec(ngf=8, n_blocks=2), seed=0):
    torch.manual_seed(seed)
    net = ResnetGenerator(spec)
    torch.save(net.state_dict(), path)
    return net


def test_folder_keeps_sizes_names_and_reports_bad_files(tmp_path):
    save_generator(tmp_path / "g.pth")
    make_image_zoo(tmp_path / "in")
    Image.new("RGB", (50, 37), (10, 200, 30)).save(tmp_path / "in" / "odd.png")
    result = script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "in",
                    "--output", tmp_path / "out", "--device", "cpu")
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert "nested/inner.v2.png" in written and "odd.png" in written and "deep16.png" in written
    assert len(written) == 12 and "rgb.png" in written and "rgb.jpg.png" in written and "rgb.tiff.png" in written
    with Image.open(tmp_path / "out" / "odd.png") as out:
        assert out.size == (50, 37) and out.mode == "RGB"
    assert "skipped 3 unreadable file(s)" in result.stdout
    for name in ("empty.png", "truncated.jpg", "not_an_image.png"):
        assert name in result.stdout
    assert "converted to RGB from:" in result.stdout and "I;16" in result.stdout and "CMYK (1)" in result.stdout


def test_matches_official_test_pipeline_within_one_level(tmp_path):
    net = save_generator(tmp_path / "latest_net_G_A.pth", GeneratorSpec(ngf=16, n_blocks=3)).eval()
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    script("translate.py", "--checkpoint", tmp_path / "latest_net_G_A.pth", "--input", tmp_path / "x.png",
           "--output", tmp_path / "out", "--load-size", "256", "--device", "cpu")
    official = transforms.Compose([
        transforms.Resize([256, 256], transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    with torch.no_grad():
        y = net(official(image).unsqueeze(0))[0]
    expected = ((np.transpose(y.numpy(), (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)
    ours = np.asarray(Image.open(tmp_path / "out" / "x.png"))
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1


def test_empty_and_missing_input_are_errors(tmp_path):
    save_generator(tmp_path / "g.pth")
    (tmp_path / "empty").mkdir()
    result = script("translate.py", "--checkpoint", tmp_path / "g.pth", "--input", tmp_path / "empty",
                    "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and "no images found" in result.stderr and "Traceback" not in result.stderr
    result = script("translate.py", "--checkpoint", tmp_path / "missing.pth", "--input", tmp_path / "empty",
                    "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and "missing.pth does not exist" in result.stderr
