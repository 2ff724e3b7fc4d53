"""scripts/make_shards.py on real folders: the bad-image zoo, round trips, atomic output."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from cyclegan.data.shards import find_domains, write_shards
from cyclegan.data.sources import count_samples
from cyclegan.errors import DataError
from tests.conftest import make_image_zoo, script


def read_tar(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture
def zoo_root(tmp_path):
    make_image_zoo(tmp_path / "src" / "trainA")
    make_image_zoo(tmp_path / "src" / "trainB")
    return tmp_path / "src"


def test_zoo_finishes_with_report_and_loadable_shards(zoo_root, tmp_path):
    out = tmp_path / "shards"
    result = script("make_shards.py", "--input", zoo_root, "--output", out, "--shard-size", "5", "--workers", "2")
    assert "skipped 6 file(s)" in result.stdout
    for name in ("empty.png: empty file", "truncated.jpg: cannot be decoded", "not_an_image.png: cannot be decoded"):
        assert name in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["A"]
    assert entry["samples"] == 11 and entry["shards"] == ["train/A-000000.tar", "train/A-000001.tar", "train/A-000002.tar"]
    assert entry["shard_samples"] == [5, 5, 1] == [count_samples(str(out / shard)) for shard in entry["shards"]]
    assert len(manifest["skipped"]) == 6 and "test" not in manifest["splits"]
    assert manifest["converted"]["CMYK"] == 2 and manifest["converted"]["I;16"] == 2
    members = {}
    for shard in entry["shards"]:
        members.update(read_tar(out / shard))
    assert "nested/inner_v2.png" in members and "rgb_jpg.jpg" in members and "rgb_tiff.png" in members
    for name, data in members.items():
        with Image.open(io.BytesIO(data)) as image:
            assert image.mode == "RGB", name


def test_png_round_trip_same_pixels_and_jpeg_bytes_kept(zoo_root, tmp_path):
    manifest = write_shards(find_domains(zoo_root, None, None), tmp_path / "s", shard_size=100, workers=1)
    members = read_tar(tmp_path / "s" / manifest["splits"]["train"]["B"]["shards"][0])
    assert members["rgb_jpg.jpg"] == (zoo_root / "trainB" / "rgb.jpg").read_bytes()
    original = np.asarray(Image.open(zoo_root / "trainB" / "rgb.png"))
    keys = [k for k in members if k.startswith("rgb") and k.endswith(".png")]
    assert any(np.array_equal(np.asarray(Image.open(io.BytesIO(members[k]))), original) for k in keys)
    grey = np.asarray(Image.open(io.BytesIO(members["grey.png"])))
    assert grey.shape == (40, 48, 3)


def test_deterministic_output(zoo_root, tmp_path):
    first = write_shards(find_domains(zoo_root, None, None), tmp_path / "a", shard_size=4, workers=2)
    second = write_shards(find_domains(zoo_root, None, None), tmp_path / "b", shard_size=4, workers=1)
    assert first["splits"] == second["splits"]
    for shard in first["splits"]["train"]["A"]["shards"]:
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()


def test_max_side_downsizes(tmp_path):
    for domain in "AB":
        (tmp_path / "src" / f"train{domain}").mkdir(parents=True)
        Image.new("RGB", (400, 200), (1, 2, 3)).save(tmp_path / "src" / f"train{domain}" / "big.png")
    manifest = write_shards(find_domains(tmp_path / "src", None, None), tmp_path / "s", max_side=100, workers=1)
    data = read_tar(tmp_path / "s" / manifest["splits"]["train"]["A"]["shards"][0])["big.png"]
    assert Image.open(io.BytesIO(data)).size == (100, 50)


def test_existing_output_refused_unless_overwrite(zoo_root, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    result = script("make_shards.py", "--input", zoo_root, "--output", out, check=False)
    assert result.returncode == 2 and "already exists: pass --overwrite" in result.stderr
    script("make_shards.py", "--input", zoo_root, "--output", out, "--overwrite", "--workers", "1")
    assert (out / "manifest.json").is_file()


def test_empty_domain_fails_and_leaves_nothing(tmp_path):
    make_image_zoo(tmp_path / "src" / "trainA")
    (tmp_path / "src" / "trainB").mkdir()
    (tmp_path / "src" / "trainB" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    result = script("make_shards.py", "--input", tmp_path / "src", "--output", tmp_path / "out", check=False)
    assert result.returncode == 2 and "train/B" in result.stderr and "no usable image" in result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_interrupted_run_leaves_no_complete_looking_output(zoo_root, tmp_path, monkeypatch):
    from cyclegan.data import shards

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards, "_write_domain", explode)
    with pytest.raises(KeyboardInterrupt):
        write_shards(find_domains(zoo_root, None, None), tmp_path / "out", workers=1)
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_two_explicit_folders_and_missing_layout(zoo_root, tmp_path):
    sources = find_domains(None, zoo_root / "trainA", zoo_root / "trainB")
    assert set(sources) == {("train", "A"), ("train", "B")}
    with pytest.raises(DataError, match="no trainB/ folder"):
        (tmp_path / "only" / "trainA").mkdir(parents=True)
        find_domains(tmp_path / "only", None, None)
    with pytest.raises(DataError, match="go together"):
        find_domains(None, zoo_root / "trainA", None)
