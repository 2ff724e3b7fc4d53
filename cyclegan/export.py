"""Exports of a generator for people who deploy and share it: ONNX, for onnxruntime and the
apps built on it, and the Hugging Face folder format (config.json, model.safetensors and a model
card written from the run). Any generator file `load_generator` reads can be exported; the
architecture comes from the weights.

The ONNX graph takes images whose height and width are multiples of 4 (any batch, any size):
the generator downsamples twice. `cyclegan.translate.onnx.OnnxGenerator` pads other sizes by
reflection and crops back, as translation does with the PyTorch generator.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin

from cyclegan.errors import UserError
from cyclegan.models.generator import GeneratorSpec, ResnetGenerator
from cyclegan.models.loading import describe

ONNX_OPSET = 18
ONNX_CHECK_SIZES = ((64, 64), (96, 128))  # exported at one size, checked at two others too
ONNX_TOLERANCE = 1e-4


class HubGenerator(ResnetGenerator, PyTorchModelHubMixin, library_name="cyclegan",
                   tags=["cyclegan", "image-to-image", "unpaired-image-translation"]):
    """The generator with Hugging Face's save/load/push: its init arguments become config.json and
    its weights model.safetensors, under the official state_dict keys."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", dropout: bool = False) -> None:
        super().__init__(GeneratorSpec(in_channels, out_channels, ngf, n_blocks, norm, dropout))


def export_onnx(net: ResnetGenerator, path: Path) -> float:
    """Write `net` as ONNX with dynamic batch, height and width; check it with onnxruntime against
    PyTorch at several sizes. Returns the largest difference seen."""
    import onnx

    net = net.eval().cpu()
    example = torch.zeros(1, net.spec.in_channels, 64, 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # reflection padding's slices cannot be constant-folded: harmless
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(net, (example,), str(path), input_names=["image"], output_names=["translated"],
                          opset_version=ONNX_OPSET, dynamo=False,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "translated": {0: "batch", 2: "height", 3: "width"}})
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {"cyclegan.generator": json.dumps(net.spec.to_dict()),
                                        "cyclegan.input": "NCHW float32 in [-1, 1], height and width multiples of 4"})
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))
    return check_onnx(net, path)


def check_onnx(net: ResnetGenerator, path: Path) -> float:
    """The largest |onnxruntime - PyTorch| over the check sizes; an error if above the tolerance."""
    from cyclegan.translate.onnx import OnnxGenerator

    session, worst = OnnxGenerator(path), 0.0
    generator = torch.Generator().manual_seed(0)
    for height, width in ONNX_CHECK_SIZES:
        x = torch.rand(2, net.spec.in_channels, height, width, generator=generator) * 2 - 1
        with torch.no_grad():
            worst = max(worst, (session(x) - net(x)).abs().max().item())
    if worst > ONNX_TOLERANCE:
        raise RuntimeError(f"the ONNX export of {path} differs from PyTorch by {worst:.2e} (> {ONNX_TOLERANCE})")
    return worst


def export_hf(net: ResnetGenerator, folder: Path, direction: str, run: Path | None) -> Path:
    """Write `folder` as a Hugging Face model: config.json, model.safetensors, and README.md, the
    model card, with what the run folder tells (and its newest sample grid as sample.png)."""
    hub = HubGenerator(**net.spec.to_dict())
    hub.load_state_dict(net.state_dict())
    hub.save_pretrained(folder)
    sample = newest_sample(run, direction) if run else None
    if sample is not None:
        shutil.copy2(sample, folder / "sample.png")
    card = ModelCard.from_template(
        ModelCardData(library_name="cyclegan", tags=["cyclegan", "image-to-image"], pipeline_tag="image-to-image"),
        template_str=CARD, title=f"CycleGAN generator {direction}", body=card_body(net.spec, direction, run, sample))
    card.save(folder / "README.md")
    return folder


CARD = """---
{{ card_data }}
---

# {{ title }}

{{ body }}
"""


def card_body(spec: GeneratorSpec, direction: str, run: Path | None, sample: Path | None) -> str:
    """What a reader of the card wants: the architecture, the data, the training and the scores."""
    lines = [f"A CycleGAN (Zhu et al. 2017, arXiv 1703.10593) generator translating {direction[0]} to "
             f"{direction[-1]}: {describe(spec)}. Weights use the official implementation's state_dict keys.",
             "", "## How to use", "", "```python", "from PIL import Image", "from cyclegan import Translator", "",
             'translator = Translator.from_pretrained("path/or/hub-id")',
             'translated = translator(Image.open("input.jpg"))', "```", ""]
    if run is None:
        return "\n".join(lines + ["Exported from a weights file without its training run."])
    lines += ["## Training", ""] + [f"- {line}" for line in run_facts(run)]
    if sample is not None:
        lines += ["", "## Samples", "", "Each row: real | translated | reconstructed | identity.", "",
                  "![sample grid](sample.png)"]
    return "\n".join(lines)


def run_facts(run: Path) -> list[str]:
    """Lines about a run folder: training settings, data sizes, steps, final losses, eval scores."""
    from omegaconf import OmegaConf

    from cyclegan.checkpoint import complete_checkpoints, read_train_state

    facts = []
    config = OmegaConf.load(run / "config.yaml")
    t, saved = config.train, complete_checkpoints(run / "checkpoints")
    world = read_train_state(saved[-1]).world_size if saved else None
    batch = f"{t.batch_size * t.grad_accum * world} ({t.batch_size} per device x {t.grad_accum} accumulation x " \
            f"{world} process(es))" if world else f"{t.batch_size} per device x {t.grad_accum} accumulation"
    precision = {"no": "fp32"}.get(t.mixed_precision, t.mixed_precision)
    facts.append(f"global batch {batch}; precision {precision}; Adam lr {t.lr}, betas ({t.beta1}, {t.beta2}); "
                 f"{t.epochs} constant + {t.decay_epochs} decay epochs; lambda_cycle {t.lambda_cycle}, "
                 f"lambda_identity {t.lambda_identity}")
    manifest = Path(config.data.root or "") / "manifest.json"
    if config.data.root and manifest.is_file():
        train = json.loads(manifest.read_text())["splits"].get("train", {})
        facts.append("training images: " + ", ".join(f"{d} {e['samples']}" for d, e in sorted(train.items())))
    losses = [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss/adv_ab" in row]
    if losses:
        facts.append(f"trained {losses[-1]['step']} optimizer steps; final losses: "
                     + ", ".join(f"{k[5:]} {v:.4f}" for k, v in losses[-1].items() if k.startswith("loss/")))
    best = run / "best" / "best.json"
    if best.is_file():
        record = json.loads(best.read_text())
        facts.append(f"best evaluation at step {record['step']}: "
                     + ", ".join(f"{k} {v:.4f}" for k, v in record.get("results", {}).items()))
    return facts


def newest_sample(run: Path, direction: str) -> Path | None:
    samples = sorted((run / "samples").glob(f"step_*_{direction}.png")) if (run / "samples").is_dir() else []
    return samples[-1] if samples else None


def run_folder(checkpoint: Path) -> Path | None:
    """The training run a generator file or folder comes from, if it sits in one."""
    for folder in [checkpoint, *checkpoint.parents][:4]:
        if (folder / "config.yaml").is_file() and (folder / "metrics.jsonl").is_file():
            return folder
    return None


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload an exported folder; a clear message where the Hub cannot be reached."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        return api.upload_folder(repo_id=repo, folder_path=str(folder)).commit_url
    except Exception as err:  # no network, no token, no permission: all end the same way for the user
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"could not upload to the Hugging Face Hub repo {repo} ({reason}). The export is complete in "
                        f"{folder}: upload it later with `huggingface-cli upload {repo} {folder}`, after "
                        "`huggingface-cli login`") from None

