"""The stream at the scale of real shares: where an image lies in its shard does not change how
often it is drawn, and a resumed lane seeks to its position without decoding what it passes.

The streams read real tar shards of tiny payloads; decoding is replaced by a counter that hands
out a blank image (or refuses the samples named bad), so thousands of samples take a second."""

import collections
import io
import statistics
import tarfile
import zlib
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import cyclegan.data.stream as stream_module
from cyclegan.config import DataConfig
from cyclegan.data.shares import Piece, read_piece
from cyclegan.data.sources import ShardSet, count_samples, find_sources
from cyclegan.data.stream import UnpairedStream, iter_test_images
from cyclegan.errors import DataError
from cyclegan.images import ImageDecodeError


def write_shards(folder, domain, sizes, bad=()):
    """Shards of 1-byte samples named DOMAIN<shard>_<index>; the indices in `bad` are corrupt."""
    urls = []
    for shard, size in enumerate(sizes):
        urls.append(str(folder / f"{domain}-{shard}.tar"))
        with tarfile.open(urls[-1], "w") as tar:
            for i in range(size):
                info = tarfile.TarInfo(f"{domain}{shard}_{i:04d}{'bad' if i in bad else ''}.png")
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
    return ",".join(urls)


@pytest.fixture
def decoded(monkeypatch):
    """The keys of the samples decoded, in order; lanes are chosen by setting `lane[0]`."""
    keys, lane = [], [0]

    def decode(sample, decoding=None, draft=None):
        keys.append(sample["__key__"])
        if sample["__key__"].endswith("bad"):
            raise ImageDecodeError(f"{sample['__key__']} is corrupt")
        return Image.new("RGB", (8, 8), (zlib.crc32(sample["__key__"].encode()) % 256, 0, 0))

    monkeypatch.setattr(stream_module, "decode", decode)
    monkeypatch.setattr(stream_module, "get_worker_info", lambda: SimpleNamespace(id=lane[0]))
    return SimpleNamespace(keys=keys, lane=lane)


def stream_of(urls_a, urls_b, workers, batches, batch_size=1, **data):
    cfg = DataConfig(train_a=urls_a, train_b=urls_b, load_size=8, crop_size=8, num_workers=workers, **data)
    return UnpairedStream(find_sources(cfg), cfg, batch_size=batch_size, batches_per_epoch=batches, seed=0)


def test_images_late_in_a_shard_are_drawn_as_often_as_early_ones(tmp_path, decoded):
    # The case: A = 4 x 1000, B = 6000, 1 rank x 4 workers, 6000 draws a domain per epoch:
    # each lane draws 1500 of its 1000 A images, a full pass and half of a second one. Taken in
    # tar order through the 256-sample buffer, the first tenth of each shard was drawn 1.87
    # times an epoch and the last 1.00; every tenth must now be drawn 1.5 times.
    stream = stream_of(write_shards(tmp_path, "A", [1000] * 4), write_shards(tmp_path, "B", [6000]), 4, 6000)
    epochs, draws = 3, collections.Counter()
    for epoch in range(epochs):
        for decoded.lane[0] in range(4):
            stream.set_epoch(epoch)
            draws.update(d for sample in stream for d in (sample["key_a"], sample["key_b"]))
    tenths = [statistics.mean(draws[f"A{shard}_{i:04d}"] for shard in range(4) for i in range(t * 100, t * 100 + 100))
              / epochs for t in range(10)]
    assert all(abs(mean - 1.5) < 0.1 for mean in tenths), f"draws per epoch by tenth of the shard: {tenths}"
    assert set(draws[f"B0_{i:04d}"] for i in range(6000)) == {epochs}, "the larger domain: once an epoch each"


def lane_batches(stream, decoded, epoch, skip=0, position=None):
    """Every lane's batches of an epoch (lane -> list), and what each lane decoded, in order."""
    batches, decodes = {}, {}
    for worker in range(stream.lanes):
        decoded.lane[0] = worker
        stream.set_epoch(epoch, skip, position)
        first = len(decoded.keys)
        lane = (worker + skip) % stream.lanes
        batches[lane] = list(DataLoader(stream, batch_size=stream.batch_size))
        decodes[lane] = decoded.keys[first:]
    return batches, decodes


@pytest.mark.parametrize("counted", [True, False], ids=["counted", "remote"])
@pytest.mark.parametrize("skip", [41, 301])  # in the first pass; in the second, partial one
def test_a_resumed_lane_seeks_to_its_position_and_decodes_nothing_before_it(tmp_path, decoded, counted, skip):
    # 2 lanes, batches of 2: each lane draws 500 A samples of a share of about 335, with corrupt
    # ones among them, so the raw position differs from the number of samples trained on.
    urls = {"A": write_shards(tmp_path, "A", [300, 250, 120], bad={3, 77, 140}),
            "B": write_shards(tmp_path, "B", [400, 270], bad={5})}
    if not counted:
        urls = {d: ",".join(f"pipe:cat {u}" for u in spec.split(",")) for d, spec in urls.items()}

    def make():
        return stream_of(urls["A"], urls["B"], 2, 500, batch_size=2, num_a=670, num_b=670, shuffle_buffer=64)

    stream = make()
    full, full_decodes = lane_batches(stream, decoded, epoch=1)
    position = None
    for i in range(skip):  # what the training loop records as it takes batch after batch
        position = stream.advance(position, full[i % 2][i // 2])
    resumed, decodes = lane_batches(make(), decoded, 1, skip, position)
    for lane in (0, 1):
        done = len(range(lane, skip, 2))
        assert len(resumed[lane]) == len(full[lane]) - done
        for got, want in zip(resumed[lane], full[lane][done:]):
            assert got["key_a"] == want["key_a"] and got["key_b"] == want["key_b"]
            assert torch.equal(got["A"], want["A"]) and torch.equal(got["B"], want["B"])
        read = position["read"][lane]
        for domain in "AB":
            mine = lambda keys: [k for k in keys if k.startswith(domain)]
            assert mine(decodes[lane]) == mine(full_decodes[lane])[read[domain]:], "decodes only what comes after"
    assert any(k.endswith("bad") for k in full_decodes[0] + full_decodes[1]), "corrupt samples were met"


def test_without_counts_each_lane_draws_its_images_its_draws_over_its_share_times(tmp_path, decoded):
    # What the README says holds for remote shards given without counts: 1 rank x 2 lanes, 1801
    # batches of 1, so lane 0 draws 901 samples and lane 1 900; each keeps every second sample
    # of each shard: 600 of A's 2 x 600, 900 of B's 1800. A's images are drawn 901 / 600 and
    # 900 / 600 times an epoch, as often late in a shard as early (after the first pass).
    urls = {d: ",".join(f"pipe:cat {u}" for u in write_shards(tmp_path, d, sizes).split(","))
            for d, sizes in (("A", [600, 600]), ("B", [1800]))}
    stream = stream_of(urls["A"], urls["B"], 2, 1801, num_a=1200, num_b=1800)
    epochs, total = 3, collections.Counter()
    for epoch in range(epochs):
        draws = {}
        for decoded.lane[0] in (0, 1):
            stream.set_epoch(epoch)
            draws[decoded.lane[0]] = collections.Counter(d for sample in stream for d in (sample["key_a"], sample["key_b"]))
        assert not set(draws[0]) & set(draws[1]), "no two lanes share an image in an epoch"
        for lane, drawn in draws.items():
            for domain, share in (("A", 600), ("B", 900)):
                mine = [n for k, n in drawn.items() if k.startswith(domain)]
                assert len(mine) == share and sum(mine) == 901 - lane, "each of its images: its draws / its share"
        total += draws[0] + draws[1]
    tenths = [statistics.mean(total[f"A{shard}_{i:04d}"] for shard in (0, 1) for i in range(t * 60, t * 60 + 60))
              / epochs for t in range(10)]
    assert all(abs(mean - 1.5) < 0.12 for mean in tenths), f"draws per epoch by tenth of the shard: {tenths}"


def test_an_elastic_resume_then_a_second_resume_continues_the_new_split_exactly(tmp_path, decoded):
    # 2 lanes train 41 batches; an elastic resume goes on with 3 lanes (the old lanes' counts do not
    # fit the new split); at batch 301 the 3-lane run checkpoints and resumes again. The position it
    # saved must describe the 3-lane split, so that the second resume seeks past the corrupt samples
    # read since the first one and gives what the uninterrupted 3-lane run gives.
    urls = {"A": write_shards(tmp_path, "A", [300, 250, 120], bad={3, 77, 140, 141, 200}),
            "B": write_shards(tmp_path, "B", [400, 270], bad={5, 60, 61})}

    def make(workers):
        return stream_of(urls["A"], urls["B"], workers, 500, batch_size=2, shuffle_buffer=64)

    before = make(2)
    two, _ = lane_batches(before, decoded, epoch=1)
    position = None
    for i in range(41):
        position = before.advance(position, two[i % 2][i // 2])
    assert position["layout"] == [1, 2]
    three = make(3)
    after_elastic, _ = lane_batches(three, decoded, 1, 41, position)
    for i in range(41, 301):  # the elastic run takes batch after batch, and checkpoints at 301
        position = three.advance(position, after_elastic[i % 3][i // 3 - len(range(i % 3, 41, 3))])
    assert position["layout"] == [1, 3] and sorted(position["read"]) == [0, 1, 2]
    done = {lane: 2 * len(range(lane, 301, 3)) for lane in range(3)}
    assert any(position["read"][lane] != {"A": done[lane], "B": done[lane]} for lane in range(3)), \
        "corrupt samples were read between the two resumes"
    resumed, _ = lane_batches(make(3), decoded, 1, 301, position)
    for lane in range(3):
        want = after_elastic[lane][len(range(lane, 301, 3)) - len(range(lane, 41, 3)):]
        assert len(resumed[lane]) == len(want)
        for got, expected in zip(resumed[lane], want):
            assert (got["key_a"], got["key_b"]) == (expected["key_a"], expected["key_b"])
            assert torch.equal(got["A"], expected["A"]) and torch.equal(got["B"], expected["B"])


def png(value):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_counting_training_and_test_reading_group_a_shard_into_the_same_samples(tmp_path):
    # metadata and extension-less files belong to no sample; a sample's files share the name before
    # the first dot of the base name, so a dot in a folder's name does not split it
    names = ["__meta__", "README", "a.png", "a.json", "dir.v1/b.png", "dir.v1/b.cls", "c.png", "d.png"]
    path = tmp_path / "odd.tar"
    with tarfile.open(path, "w") as tar:
        for i, name in enumerate(names):
            data = png(i) if name.endswith(".png") else b"{}"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    keys = ["a", "dir.v1/b", "c", "d"]
    assert [sample["__key__"] for _, sample in read_piece(Piece(str(path)))] == keys
    assert count_samples(str(path)) == len(keys)
    shards = ShardSet((str(path),), len(keys))
    assert [(position, key) for position, key, _ in iter_test_images(shards, 8)] == list(enumerate(keys))


def test_a_sample_with_two_files_of_one_suffix_is_refused_naming_both(tmp_path):
    path = tmp_path / "twice.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("x.png", "y.png", "y.PNG"):
            info = tarfile.TarInfo(name)
            info.size = len(png(0))
            tar.addfile(info, io.BytesIO(png(0)))
    with pytest.raises(DataError, match=r"twice.tar: sample y holds two files ending in .png \(y.PNG is the second\)"):
        list(read_piece(Piece(str(path))))
