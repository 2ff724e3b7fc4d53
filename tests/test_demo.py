"""The demo page, through Gradio's own client against a real server (every input kind, both
directions and both kinds of weights, bad inputs, two requests at once), in a real Chromium,
and as the Space an export writes, started from a copy elsewhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import av
import numpy as np
import pytest
import tifffile
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from huggingface_hub import ModelCard
from packaging.requirements import Requirement
from PIL import Image

from cyclegan import Translator
from tests.conftest import ROOT, free_port, script
from tests.test_translate import make_clip, read_clip

TILE = 64  # the server's tile size: the largest test image (100 x 72 px) takes four tiles
MAX_PIXELS = 20_000


def start(args: list[str], cwd: Path, log: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A server process and its URL, once it answers (its output goes to `log`)."""
    with open(log, "w") as out:
        process = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, **(env or {})})
    deadline = time.time() + 180
    while "Running on local URL:" not in log.read_text():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"the demo page did not start:\n{log.read_text()}")
        time.sleep(0.2)
    url = log.read_text().split("Running on local URL:")[1].split()[0]
    return process, url


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def run(ema_run, tmp_path_factory) -> Path:
    """A tiny run with averaged generators (exported) beside the trained ones (its last checkpoint),
    and a best evaluation on record."""
    out = tmp_path_factory.mktemp("demo-run") / "run"
    shutil.copytree(ema_run, out, symlinks=True)
    (out / "best").mkdir()
    (out / "best" / "best.json").write_text(json.dumps({"step": 3, "results": {"AtoB/fid": 12.5, "BtoA/fid": 20.0}}))
    return out


@pytest.fixture(scope="module")
def space(run, tmp_path_factory) -> Path:
    """The run's A -> B generator exported as a Hugging Face folder, then copied elsewhere."""
    out = tmp_path_factory.mktemp("demo-export")
    script("export.py", "--checkpoint", run, "--format", "hf", "--output", out / "hf")
    shutil.copytree(out / "hf", out / "elsewhere" / "space")
    return out / "elsewhere" / "space"


@pytest.fixture(scope="module")
def inputs(demo_folders, tmp_path_factory) -> dict[str, Path]:
    """Inputs of every kind, by folder: domain A's 8-bit images (colour PNG large enough for
    tiles, JPEG, greyscale, a demo scene), domain B's deep data (16-bit PNG, 16-bit TIFF, a 16-bit .npy array)."""
    root = tmp_path_factory.mktemp("demo-inputs")
    rng = np.random.default_rng(0)
    a, b = root / "a", root / "b"
    a.mkdir(), b.mkdir()
    Image.fromarray(rng.integers(0, 256, (72, 100, 3), dtype=np.uint8)).save(a / "colour.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(a / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8), "L").save(a / "grey.png")
    shutil.copyfile(demo_folders / "testA" / "scene_0000.png", a / "scene.png")
    Image.fromarray(rng.integers(0, 65536, (32, 40), dtype=np.uint16)).save(b / "deep16.png")
    tifffile.imwrite(b / "deep.tif", rng.integers(0, 65536, (24, 40, 3), dtype=np.uint16))
    np.save(b / "values.npy", rng.integers(0, 65536, (32, 32, 3), dtype=np.uint16))
    return {"A": a, "B": b}


@pytest.fixture(scope="module")
def expected(run, inputs, tmp_path_factory) -> dict[str, Path]:
    """`cyclegan-translate`'s outputs of each input folder, in the server's tiles."""
    out = tmp_path_factory.mktemp("demo-expected")
    for domain, direction in (("A", "AtoB"), ("B", "BtoA")):
        script("translate.py", "--checkpoint", run, "--input", inputs[domain], "--output", out / domain,
               "--direction", direction, "--tile", str(TILE))
    return {"A": out / "A", "B": out / "B"}


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    """The demo page of the run, served by `cyclegan-demo` (two requests at once)."""
    log = tmp_path_factory.mktemp("demo-server") / "server.log"
    process, url = start([sys.executable, "scripts/demo.py", "--checkpoint", str(run), "--port", str(free_port()),
                          "--tile", str(TILE), "--max-pixels", str(MAX_PIXELS), "--concurrency", "2"], ROOT, log)
    yield Client(url, verbose=False), url, log
    stop(process)


def translate(client: Client, files: list[Path], direction: str = "AtoB", kind: str = "averaged (EMA)"):
    return client.predict([handle_file(str(f)) for f in files], direction, kind, api_name="/translate_images")


def same_file(got: str | Path, want: Path) -> bool:
    return Path(got).read_bytes() == want.read_bytes()


def test_every_image_kind_both_ways_equals_the_translation_command(server, inputs, expected):
    client, _, _ = server
    previews, files, notes = translate(client, sorted(inputs["A"].iterdir()))
    assert notes == "" and sorted(Path(f).name for f in files) == ["colour.png", "grey.png", "photo.png", "scene.png"]
    for f in files:  # the tiled colour image too: bit for bit
        assert same_file(f, expected["A"] / Path(f).name), Path(f).name
    captions = {p["caption"] for p in previews}
    assert "colour.png -> colour.png, in 64 px tiles" in captions
    side = np.asarray(Image.open(next(p["image"] for p in previews if p["caption"].startswith("colour"))))
    assert side.shape == (72, 200, 3), "input | translation, side by side"
    _, files, notes = translate(client, sorted(inputs["B"].iterdir()), "BtoA")
    names = sorted(Path(f).name for f in files)
    assert notes == "" and names == ["deep.tif", "deep16.png", "values.npy"], "deep data keeps its format"
    for f in files:
        assert same_file(f, expected["B"] / Path(f).name), Path(f).name
    assert np.load(next(f for f in files if f.endswith(".npy"))).dtype == np.uint16
    assert tifffile.imread(next(f for f in files if f.endswith(".tif"))).dtype == np.uint16


def test_trained_weights_beside_the_averaged_ones(server, run, inputs, expected):
    client, _, _ = server
    _, files, _ = translate(client, [inputs["A"] / "photo.jpg"], kind="trained")
    trained = Translator.from_pretrained(run / "checkpoints" / "step_0000003" / "g_ab.safetensors", tile=TILE)
    want = np.asarray(trained(Image.open(inputs["A"] / "photo.jpg")))
    got = np.asarray(Image.open(files[0]))
    assert np.array_equal(got, want)
    assert not np.array_equal(got, np.asarray(Image.open(expected["A"] / "photo.png"))), "not the averaged ones"


def test_the_model_page_and_the_examples(server):
    _, url, _ = server
    import urllib.request

    config = json.loads(urllib.request.urlopen(f"{url.rstrip('/')}/config").read())
    text = " ".join(str(c.get("props", {}).get("value", "")) for c in config["components"])
    assert "CycleGAN" in text and "A → B, averaged (EMA) weights" in text and "B → A, trained weights" in text
    assert "these weights: optimizer step 3, the averaged (EMA) generator" in text
    assert "best evaluation (these weights): fid 12.5000" in text
    gallery = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "examples")
    captions = [item["caption"] for item in gallery["props"]["value"]]
    assert len(captions) == 6 and captions[0].startswith("A → B: ") and captions[-1].startswith("B → A: "), \
        "the run's test images of each domain"


def test_a_video_with_its_audio(server, tmp_path):
    client, _, _ = server
    make_clip(tmp_path / "clip.mp4", frames=6, size=(64, 48))
    out, notes = client.predict(handle_file(str(tmp_path / "clip.mp4")), "BtoA", "trained",
                                api_name="/translate_video")
    frames, rate, audio = read_clip(out)
    source, _, _ = read_clip(tmp_path / "clip.mp4")
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3) and audio == ["aac"] and notes == ""
    assert not np.array_equal(frames[0], source[0])


def sound_only(path: Path) -> None:
    """A video file whose video stream got no frame: half a second of silence alone."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=12)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        sound = container.add_stream("aac", rate=16000)
        for _ in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
            frame.sample_rate = 16000
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
        container.mux(video.encode())


def test_bad_inputs_get_a_message_and_the_server_keeps_serving(server, inputs, tmp_path):
    client, _, log = server
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "fake.png").write_text("not an image either")
    shutil.copyfile(inputs["A"] / "photo.jpg", tmp_path / "y.jpg")
    shutil.copyfile(inputs["A"] / "colour.png", tmp_path / "y.jpg.png")
    shutil.copyfile(inputs["A"] / "grey.png", tmp_path / "y.png")  # y.jpg's output is then y.jpg.png too
    np.save(tmp_path / "bands.npy", np.zeros((16, 16, 4), np.float32))
    Image.new("RGB", (200, 120)).save(tmp_path / "huge.png")
    sound_only(tmp_path / "empty.mp4")
    cases = [([tmp_path / "notes.txt"], "notes.txt: not a file this page reads"),
             ([tmp_path / "fake.png"], "fake.png: cannot be decoded"),
             ([tmp_path / n for n in ("y.png", "y.jpg", "y.jpg.png")], "would both be translated to y.jpg.png"),
             ([tmp_path / "bands.npy"], "bands.npy: has 4 band(s), but its domain has 3"),
             ([tmp_path / "huge.png"], "200 x 120 px = 24,000 pixels, more than this page takes (20,000, --max-pixels)")]
    for files, message in cases:
        with pytest.raises(AppError, match=re.escape(message)) as refused:
            translate(client, files)
        assert tempfile.gettempdir() not in str(refused.value), "no server path in a message"
    (tmp_path / "broken.mp4").write_text("no video at all")
    for clip, message in (("empty.mp4", "empty.mp4 holds no video stream"), ("broken.mp4", "broken.mp4 cannot be read")):
        with pytest.raises(AppError, match=message) as refused:
            client.predict(handle_file(str(tmp_path / clip)), "AtoB", "trained", api_name="/translate_video")
        assert tempfile.gettempdir() not in str(refused.value), "no server path in a message"
    _, files, notes = translate(client, [tmp_path / "notes.txt", inputs["A"] / "photo.jpg"])
    assert [Path(f).name for f in files] == ["photo.png"] and "skipped notes.txt: not a file this page reads" in notes
    assert "Traceback" not in log.read_text()


def test_two_visitors_at_once_get_their_own_results(server, inputs, expected):
    client, _, _ = server
    # one generator for both, two inputs: each gets its own translation back
    jobs = [client.submit([handle_file(str(inputs["A"] / name))], "AtoB", "averaged (EMA)", api_name="/translate_images")
            for name in ("colour.png", "photo.jpg")]
    (_, first, _), (_, second, _) = (job.result(timeout=120) for job in jobs)
    assert same_file(first[0], expected["A"] / "colour.png") and same_file(second[0], expected["A"] / "photo.png")


def test_the_page_in_a_real_browser(server, inputs, expected, tmp_path):
    from playwright.sync_api import sync_playwright

    _, url, _ = server
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (.ci/run installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        page.locator("#images-in input[type=file]").set_input_files(str(inputs["A"] / "scene.png"))
        page.locator("#translate-images").click()
        link = page.locator("#images-out a").first
        link.wait_for(timeout=120_000)
        body = page.request.get(link.get_attribute("href")).body()
        page.locator("#previews img").first.wait_for()
        shot = tmp_path / "demo.jpg"
        page.screenshot(path=str(shot), full_page=True, type="jpeg", quality=85)
        browser.close()
    assert body == (expected["A"] / "scene.png").read_bytes()
    assert shot.stat().st_size < 300_000
    if os.environ.get("CYCLEGAN_SCREENSHOT"):  # how docs/demo.jpg is made
        shutil.copyfile(shot, os.environ["CYCLEGAN_SCREENSHOT"])


def test_an_exported_folder_runs_as_a_space(space, inputs, tmp_path):
    card = ModelCard.load(space / "README.md")
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py" and card.data.sdk_version
    for line in (space / "requirements.txt").read_text().split():
        metadata.version(Requirement(line).name)  # installed here by the project's extras
    assert len(list((space / "examples" / "A").iterdir())) == 3, "the run's test images as examples"
    imported = subprocess.run([sys.executable, "-c", "import cyclegan; print(cyclegan.__file__)"], cwd=space,
                              capture_output=True, text=True, check=True).stdout.strip()
    assert Path(imported) == space / "cyclegan" / "__init__.py", "the Space runs the package copy it carries"
    assert (space / "cyclegan" / "app" / "page.py").is_file()
    process, url = start([sys.executable, "app.py"], space, tmp_path / "space.log",
                         env={"GRADIO_SERVER_PORT": str(free_port())})
    work = Path((tmp_path / "space.log").read_text().split("uploads and translations go to ")[1].split(",")[0])
    try:
        _, files, _ = translate(Client(url, verbose=False), [inputs["A"] / "photo.jpg"], kind="exported")
        assert any(work.rglob("photo.jpg")), "the upload, in the server's folder"
    finally:
        stop(process)
    assert process.returncode == 0 and not work.exists(), "a stopped server leaves no upload behind"
    want = Translator.from_pretrained(space)(Image.open(inputs["A"] / "photo.jpg"))
    assert np.array_equal(np.asarray(Image.open(files[0])), np.asarray(want))


def test_every_checkpoint_kind_offers_what_it_holds(run, space, generators, tmp_path):
    import torch

    from cyclegan.app.model import Served
    from cyclegan.models import load_generator

    step = run / "checkpoints" / "step_0000003"
    both = {"AtoB": {"averaged (EMA)": "g_ab_ema", "trained": "g_ab"},
            "BtoA": {"averaged (EMA)": "g_ba_ema", "trained": "g_ba"}}
    names = lambda served: {d: {k: p.stem for k, p in kinds.items()} for d, kinds in served.files.items()}  # noqa: E731
    assert names(Served(step)) == both, "a checkpoint folder: both kinds side by side"
    export = Served(run / "export")
    assert export.files["AtoB"] == {"averaged (EMA)": run / "export" / "g_ab.safetensors",
                                    "trained": step / "g_ab.safetensors"}, \
        "an export of averaged weights: the trained ones from the checkpoint of its step"
    assert names(Served(generators)) == {"AtoB": {"trained": "g_ab"}, "BtoA": {"trained": "g_ba"}}
    torch.save(load_generator(generators / "g_ab.safetensors").state_dict(), tmp_path / "latest_net_G_A.pth")
    official = Served(tmp_path / "latest_net_G_A.pth")
    assert list(official.files) == ["AtoB"] and "came without their training run" in official.about()
    scenes = official.examples(tmp_path / "examples")
    assert [e.path.name for e in scenes] == ["scene_0.png", "scene_1.png", "scene_2.png"], "the bundled demo scenes"
    hub = Served(space)
    assert list(hub.files) == ["AtoB"] and list(hub.files["AtoB"]) == ["exported"]
    assert "The model card of this folder" in hub.about() and "the averaged (EMA) generator" in hub.about()
    carried = hub.examples(tmp_path / "hub-examples")
    assert [e.path.parent for e in carried] == [tmp_path / "hub-examples" / "A"] * 3, \
        "an exported folder's examples, copied where the page serves them from"
