"""The distributed streaming loader, with real shards and real processes."""

import collections
import io
import json
import shutil
import statistics
import subprocess
import sys
import tarfile

import pytest
import torch

from cyclegan.config import DataConfig
from cyclegan.data.sources import expand_urls, find_sources
from cyclegan.data.stream import UnpairedStream, iter_test_images, train_loader
from cyclegan.errors import DataError
from tests.conftest import ROOT


def read_ranks(data, world, workers, seed, batches=7, skip=0, epochs=2):
    """Start every rank as its own process, all at once, and collect their batches.
    `data` is a shard folder or a dict of DataConfig fields."""
    data = json.dumps(data if isinstance(data, dict) else {"root": str(data)})
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "tests/harness/read_stream.py"), data, str(rank), str(world),
                          str(workers), str(seed), str(batches), str(skip), str(epochs)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for rank in range(world)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def keys(batches, domain):
    return [k for b in batches for k in b[domain]]


def test_two_ranks_two_workers_equal_disjoint_reproducible(demo_shards):
    first = read_ranks(demo_shards, world=2, workers=2, seed=3)
    for epoch in ("0", "1"):
        assert [len(r[epoch]) for r in first] == [7, 7]
        assert all(len(b["A"]) == 2 for r in first for b in r[epoch])
        for domain in "AB":
            rank0, rank1 = set(keys(first[0][epoch], domain)), set(keys(first[1][epoch], domain))
            assert not rank0 & rank1, "ranks must not share samples"
    lane_keys = [set(keys(first[0]["0"][lane::2], "A")) for lane in (0, 1)]
    assert not lane_keys[0] & lane_keys[1], "workers of one rank must not share samples"
    assert first[0]["0"] != first[0]["1"], "each epoch draws a new order"
    assert read_ranks(demo_shards, world=2, workers=2, seed=3) == first
    assert read_ranks(demo_shards, world=2, workers=2, seed=4) != first


def test_resume_skips_exactly_the_consumed_batches(demo_shards):
    full = read_ranks(demo_shards, world=1, workers=2, seed=0)[0]["0"]
    resumed = read_ranks(demo_shards, world=1, workers=2, seed=0, skip=3)[0]["0"]
    assert resumed == full[3:]


def write_unequal_shards(folder, domain, sizes, image):
    """Shards of the given sizes, written as another tool would (no manifest)."""
    urls = []
    for shard, size in enumerate(sizes):
        urls.append(str(folder / f"{domain}-{shard}.tar"))
        write_tar(urls[-1], [(f"{domain}{shard}_{i:03d}.png", image) for i in range(size)])
    return ",".join(urls)


@pytest.mark.parametrize("counted", [True, False], ids=["counted", "remote"])
def test_every_image_is_drawn_equally_often(demo_folders, tmp_path, counted):
    # A: 7 unequal shards on 2 ranks x 2 workers (with shards owned by slots, images of the
    # 12-sample slot were drawn twice as often as those of the 24-sample ones); B: 3 shards on 4
    # slots. Remote shards (read through pipe:) come without sample counts.
    image = (demo_folders / "trainA" / "scene_0000.png").read_bytes()
    urls = {"A": write_unequal_shards(tmp_path, "A", [12, 12, 12, 12, 12, 12, 4], image),
            "B": write_unequal_shards(tmp_path, "B", [10, 10, 3], image)}
    if not counted:
        urls = {d: ",".join(f"pipe:cat {u}" for u in spec.split(",")) for d, spec in urls.items()}
    data = {"train_a": urls["A"], "train_b": urls["B"], "num_a": 76, "num_b": 23}
    epochs, batches = 6, 19  # 19 batches of 2 on each of 2 ranks: one epoch of A (76 images)
    ranks = read_ranks(data, world=2, workers=2, seed=0, batches=batches, epochs=epochs)
    for epoch in map(str, range(epochs)):
        for domain in "AB":  # slot = (rank, lane): batch i of a rank comes from lane i % 2
            slots = [set(keys(r[epoch][lane::2], domain)) for r in ranks for lane in (0, 1)]
            assert sum(map(len, slots)) == len(set().union(*slots)), "no two slots share an image in an epoch"
    for domain, images in (("A", 76), ("B", 23)):
        draws = collections.Counter(k for r in ranks for e in range(epochs) for k in keys(r[str(e)], domain))
        assert len(draws) == images and sum(draws.values()) == epochs * 76
        by_shard = collections.defaultdict(list)
        for key, count in draws.items():
            by_shard[key.split("_")[0]].append(count)
        mean = epochs * 76 / images
        assert all(abs(statistics.mean(counts) / mean - 1) < 0.1 for counts in by_shard.values()), \
            f"{domain}: the images of some shard are favoured: {dict(by_shard)}"
        if counted:  # A once per epoch; B 3 or 4 times (76 / 23 = 3.3), so 18 to 24 times in 6 epochs
            assert max(draws.values()) / min(draws.values()) <= (1 if domain == "A" else 24 / 18), draws


def test_brace_patterns_and_comma_lists(demo_shards):
    pattern = str(demo_shards / "train" / "A-{000000..000003}.tar")
    assert [u.rsplit("/", 1)[1] for u in expand_urls(pattern)] == [f"A-00000{i}.tar" for i in range(4)]
    assert len(expand_urls(f"{pattern},{demo_shards}/train/B-000000.tar")) == 5
    cfg = DataConfig(train_a=pattern, train_b=str(demo_shards / "train/B-{000000..000003}.tar"),
                     num_a=160, num_b=160, load_size=36, crop_size=32, num_workers=0)
    batch = next(iter(train_loader(UnpairedStream(find_sources(cfg), cfg, 2, 3, seed=0))))
    assert batch["A"].shape == (2, 3, 32, 32) and batch["A"].dtype == torch.uint8


def test_missing_shards_and_missing_counts_fail_at_start(demo_shards, tmp_path):
    cfg = DataConfig(train_a=str(tmp_path / "A-{000000..000002}.tar"), train_b=str(demo_shards / "train/B-000000.tar"),
                     num_a=3, num_b=40)
    with pytest.raises(DataError, match="3 shard\\(s\\) for train domain A do not exist"):
        find_sources(cfg)
    with pytest.raises(DataError, match="set data.num_a"):
        find_sources(DataConfig(train_a="pipe:cat A-000000.tar", train_b=cfg.train_b, num_b=40))
    counted = find_sources(DataConfig(train_a=str(demo_shards / "train/A-000000.tar"), train_b=cfg.train_b))
    assert (counted.train_a.samples, counted.train_a.counts) == (40, (40,)), "local shards are counted"
    with pytest.raises(DataError, match="has no manifest.json"):
        find_sources(DataConfig(root=str(tmp_path)))
    with pytest.raises(DataError, match="no training data"):
        find_sources(DataConfig())
    (tmp_path / "fake.tar").write_text("not a tar at all")
    with pytest.raises(DataError, match="1 shard\\(s\\) for train domain A are not tar files"):
        find_sources(DataConfig(train_a=str(tmp_path / "fake.tar"), train_b=cfg.train_b, num_a=1, num_b=40))


def test_sample_counts_from_old_manifests_and_from_compressed_or_broken_shards(demo_shards, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(demo_shards, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for domains in manifest["splits"].values():
        for entry in domains.values():
            del entry["shard_samples"]  # written before per-shard counts: every shard full but the last
    (old / "manifest.json").write_text(json.dumps(manifest))
    before, now = find_sources(DataConfig(root=str(old))), find_sources(DataConfig(root=str(demo_shards)))
    assert (before.train_a.counts, before.train_b.counts) == (now.train_a.counts, now.train_b.counts) == ((40,) * 4,) * 2
    with tarfile.open(demo_shards / "train/A-000000.tar") as plain, tarfile.open(tmp_path / "A.tar.gz", "w:gz") as gz:
        for member in plain:
            gz.addfile(member, plain.extractfile(member))
    cfg = DataConfig(train_a=str(tmp_path / "A.tar.gz"), train_b=str(demo_shards / "train/B-000000.tar"))
    assert find_sources(cfg).train_a.counts == (40,)
    data = (demo_shards / "train/A-000000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.tar cannot be read to count its samples"):
        find_sources(DataConfig(train_a=str(tmp_path / "cut.tar"), train_b=cfg.train_b))


def write_tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_corrupt_samples_inside_a_shard_are_skipped_and_counted(demo_folders, tmp_path):
    good = [(f"good{i}.png", (demo_folders / "trainA" / f"scene_{i:04d}.png").read_bytes()) for i in range(6)]
    bad = [("bad0.jpg", b"\xff\xd8\xff garbage"), ("bad1.txt", b"no image at all")]
    write_tar(tmp_path / "A.tar", good[:3] + bad + good[3:])
    write_tar(tmp_path / "B.tar", good)
    cfg = DataConfig(train_a=str(tmp_path / "A.tar"), train_b=str(tmp_path / "B.tar"), num_a=8, num_b=6,
                     load_size=64, crop_size=64, num_workers=0, shuffle_buffer=1)
    batches = list(train_loader(UnpairedStream(find_sources(cfg), cfg, 2, 3, seed=0)))
    assert len(batches) == 3 and sum(int(b["skipped"].sum()) for b in batches) == 2
    assert not any(k.startswith("bad") for b in batches for k in b["key_a"])


def test_empty_or_too_small_streams_fail_with_a_clear_message(demo_folders, tmp_path):
    write_tar(tmp_path / "empty.tar", [])
    cfg = DataConfig(train_a=str(tmp_path / "empty.tar"), train_b=str(tmp_path / "empty.tar"), num_workers=0)
    with pytest.raises(DataError, match="train domain A has no samples"):
        find_sources(cfg)
    image = (demo_folders / "trainA" / "scene_0000.png").read_bytes()
    write_tar(tmp_path / "three.tar", [(f"x{i}.png", image) for i in range(3)])
    cfg = DataConfig(train_a=str(tmp_path / "three.tar"), train_b=str(tmp_path / "three.tar"), num_workers=2)
    with pytest.raises(DataError, match="holds 3 sample\\(s\\) in its shards: too few to give each of the 2 x 2"):
        UnpairedStream(find_sources(cfg), cfg, 1, 8, seed=0, rank=0, world_size=2)


def test_test_images_are_ordered_and_split_across_ranks(demo_shards):
    sources = find_sources(DataConfig(root=str(demo_shards)))
    everything = [k for _, k, _ in iter_test_images(sources.test_a, 32)]
    assert everything == sorted(everything) and len(everything) == 24
    shares = [[k for _, k, _ in iter_test_images(sources.test_a, 32, rank=r, world_size=2)] for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == everything and not set(shares[0]) & set(shares[1])
    _, key, image = next(iter_test_images(sources.test_b, 48))
    assert key == everything[0] and image.shape == (3, 48, 48) and image.dtype == torch.float32


def test_an_error_inside_a_loader_worker_reaches_the_user_as_one_line(tmp_path):
    from tests.conftest import script

    write_tar(tmp_path / "A.tar", [(f"bad{i}.jpg", b"\xff\xd8\xff garbage") for i in range(3)])
    result = script("train.py", "--config", "configs/demo.yaml", f"data.train_a={tmp_path / 'A.tar'}",
                    f"data.train_b={tmp_path / 'A.tar'}", "data.num_workers=1",
                    f"output_dir={tmp_path / 'run'}", "tracking.mode=disabled", "tracking.num_images=0", check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: every sample this loader slot reads from" in result.stderr and "Traceback" not in result.stderr
