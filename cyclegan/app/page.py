"""The demo page as a Gradio app: images (several at once, any format translation reads) and
videos, the direction and the weights to use, input and translation side by side, the
translations to download at full resolution, examples to click, and a page on the model.

Every handler turns a visitor's mistake (`UserError`) into a message on the page; anything else
is logged with its traceback on the server and shown as one line, and the server keeps serving.
Gradio's queue runs `concurrency` requests at once, each in a folder of its own.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import signal
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from PIL import Image

from cyclegan.app.model import WAYS, Served
from cyclegan.app.work import thumbnail, translate_upload_video, translate_uploads
from cyclegan.errors import UserError, user_message

DEFAULT_MAX_PIXELS = 50_000_000  # 50 megapixels: about 7,000 x 7,000; larger images are refused
HOW = ("Upload images (PNG, JPEG, TIFF, 16-bit and greyscale ones, `.npy` arrays) or a video, pick the "
       "direction, and translate. Large images are translated in exact tiles. Downloads keep the full "
       "resolution and the input's depth.")


def on_page(handler: Callable) -> Callable:
    """`handler` with every failure shown on the page: a visitor's mistake as its message, a bug
    as one line (its traceback goes to the server's log)."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except UserError as err:
            raise gr.Error(user_message(err), print_exception=False) from None
        except Exception as err:
            traceback.print_exc()
            raise gr.Error(f"the translation failed ({type(err).__name__}); the server's log has the details",
                           print_exception=False) from None

    return wrapped


def build_page(served: Served, work: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> gr.Blocks:
    """The Gradio app for `served`, working under `work`."""
    kinds = list(dict.fromkeys(kind for direction in served.directions for kind in served.weight_kinds(direction)))
    thumbs, examples = [], []
    for example in served.examples(work / "examples"):
        try:
            thumbs.append((thumbnail(served.translator(example.direction), example.path),
                           f"{WAYS[example.direction]}: {example.path.name}"))
            examples.append(example)
        except UserError:  # one the generator cannot read (its bands) is left out
            continue

    @on_page
    def images(files: list[str] | None, direction: str, kind: str, progress=gr.Progress(track_tqdm=True)):
        if not files:
            raise UserError("upload one or more images first")
        result = translate_uploads(served.translator(direction, kind), [Path(f) for f in files], work, max_pixels)
        notes = "\n".join(f"- skipped {note}" for note in result.notes)
        return result.previews, [str(f) for f in result.files], notes

    @on_page
    def video(upload: str | None, direction: str, kind: str, progress=gr.Progress(track_tqdm=True)):
        if not upload:
            raise UserError("upload a video first")
        target, short = translate_upload_video(served.translator(direction, kind), Path(upload), work, max_pixels)
        return str(target), f"- {short}" if short else ""

    def pick(evt: gr.SelectData):
        chosen = examples[evt.index]
        return [str(chosen.path)], chosen.direction

    with gr.Blocks(title=served.title, delete_cache=(3600, 3600)) as page:
        gr.Markdown(f"# {served.title}\n\n{HOW}")
        with gr.Row():
            direction = gr.Radio([(WAYS[d], d) for d in served.directions], value=served.directions[0],
                                 label="Direction", interactive=len(served.directions) > 1)
            kind = gr.Radio(kinds, value=kinds[0], label="Weights", visible=len(kinds) > 1)
        with gr.Tab("Images"):
            files = gr.File(file_count="multiple", label="Images", elem_id="images-in")
            translate = gr.Button("Translate", variant="primary", elem_id="translate-images")
            shown = gr.Gallery(label="Input | translation", columns=1, format="png", elem_id="previews")
            downloads = gr.File(label="Translations at full resolution", file_count="multiple",
                                elem_id="images-out")
            notes = gr.Markdown(elem_id="images-notes")
            translate.click(images, [files, direction, kind], [shown, downloads, notes], api_name="translate_images")
            if examples:
                gallery = gr.Gallery(thumbs, label="Examples: click one to load it", columns=6, height=180,
                                     allow_preview=False, format="png", elem_id="examples")
                gallery.select(pick, None, [files, direction], api_visibility="private")
        with gr.Tab("Video"):
            clip = gr.Video(label="Video", sources=["upload"], elem_id="video-in")
            translate_clip = gr.Button("Translate video", variant="primary")
            clip_out = gr.Video(label="Translated video, with its audio", elem_id="video-out")
            clip_notes = gr.Markdown()
            translate_clip.click(video, [clip, direction, kind], [clip_out, clip_notes], api_name="translate_video")
        with gr.Tab("Model"):
            gr.Markdown(served.about())
            for way in served.directions:
                if (grid := served.sample_grid(way)) is not None:
                    gr.Image(str(grid), label=f"The run's newest sample grid, {WAYS[way]}", interactive=False)
    return page


def serve(checkpoint: str | Path, host: str | None = None, port: int | None = None, device: str = "auto",
          precision: str = "fp32", tile: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
          concurrency: int = 1) -> None:
    """Serve the demo page of `checkpoint` until interrupted. `host` and `port` None: Gradio's
    (GRADIO_SERVER_NAME and GRADIO_SERVER_PORT, else 127.0.0.1:7860), as a Space sets them."""
    for option, value, least in (("--max-pixels", max_pixels, 1), ("--concurrency", concurrency, 1),
                                 ("--tile", 0 if tile is None else tile, 0)):
        if value < least:
            raise UserError(f"{option} {value}: must be at least {least}")
    served = Served(Path(checkpoint), device, precision, tile)
    Image.MAX_IMAGE_PIXELS = None  # headers are checked against --max-pixels before any pixel is decoded
    work = Path(tempfile.mkdtemp(prefix="cyclegan-demo-"))
    atexit.register(shutil.rmtree, work, True)
    # a stop as Ctrl-C: Gradio then shuts its server down (removing the files it cached) and atexit ours
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    page = build_page(served, work, max_pixels)
    print(f"uploads and translations go to {work}, removed when the server stops", flush=True)
    page.queue(default_concurrency_limit=concurrency)
    try:
        page.launch(server_name=host, server_port=port, show_error=True)
    except OSError as err:
        raise UserError(f"cannot serve on {host or '127.0.0.1'}:{port or 7860} ({err}): pass another --port") from None
