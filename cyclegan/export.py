"""Exports of a generator for people who deploy and share it: ONNX, for onnxruntime and the
apps built on it, and the Hugging Face folder format (config.json, model.safetensors and a model
card written from the run). Any generator file `load_generator` reads can be exported, CUT's
anti-aliased one too; the architecture comes from the weights, and the direction (and, in a
Hugging Face folder, the objective that trained it) goes with the export.

The ONNX graph takes images whose height and width are multiples of 4 (any batch, any size):
the generator downsamples twice. `cyclegan.translate.onnx.OnnxGenerator` pads other sizes by
reflection and crops back, as translation does with the PyTorch generator; an app of its own
does the same before calling onnxruntime.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin

from cyclegan.errors import DataError, UserError
from cyclegan.io.files import atomic_folder, atomic_path
from cyclegan.io.records import read_json, read_jsonl
from cyclegan.models.generator import GeneratorSpec, ResnetGenerator
from cyclegan.models.loading import HF_WEIGHTS, ONE_WAY, describe, one_way, recorded_objective, save_weights

ONNX_OPSET = 18
ONNX_CHECK_SIZES = ((64, 64), (96, 128))  # the traced size and another, both checked
ONNX_TOLERANCE = 1e-4
TAGS = ["cyclegan", "image-to-image", "unpaired-image-translation"]
MODELS = {"cyclegan": ("CycleGAN", "Zhu et al. 2017, arXiv 1703.10593"),  # objective -> name, paper
          "cut": ("CUT", "contrastive unpaired translation, Park et al. 2020, arXiv 2007.15651"),
          "fastcut": ("FastCUT", "the faster CUT, Park et al. 2020, arXiv 2007.15651")}


class HubGenerator(ResnetGenerator, PyTorchModelHubMixin, library_name="cyclegan", tags=TAGS):
    """The generator with Hugging Face's save/load/push: its init arguments (the architecture, the
    direction it translates and the objective that trained it) are config.json (`hub_config`), its
    weights model.safetensors under the official state_dict keys. Keys a config leaves out take the
    defaults here."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", dropout: bool = False, antialias: bool = False, direction: str = "AtoB",
                 objective: str = "cyclegan") -> None:
        super().__init__(GeneratorSpec(in_channels, out_channels, ngf, n_blocks, norm, dropout, antialias))
        self.direction, self.objective = direction, objective

    def _save_pretrained(self, save_directory: Path) -> None:
        """The weights as every safetensors file of ours is written (mode by the umask, not 0600)."""
        save_weights(self, Path(save_directory) / HF_WEIGHTS)


def export_onnx(net: ResnetGenerator, path: Path, direction: str) -> float:
    """Write `net` as ONNX with dynamic batch, height and width, under a temporary name renamed
    once onnxruntime agrees with PyTorch at every check size. Returns the largest difference."""
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx and onnxruntime packages: pip install -e '.[export]'") from None
    if path.suffix != ".onnx":
        raise UserError(f"--output {path} should end in .onnx")
    net = net.eval().cpu()
    with atomic_path(path) as partial:
        with warnings.catch_warnings():  # reflection padding's slices and instance norm: harmless notes
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(net, (torch.zeros(1, net.spec.in_channels, 64, 64),), str(partial), dynamo=False,
                              input_names=["image"], output_names=["translated"], opset_version=ONNX_OPSET,
                              dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                            "translated": {0: "batch", 2: "height", 3: "width"}})
        model = onnx.load(str(partial))
        onnx.helper.set_model_props(model, {"cyclegan.generator": json.dumps(net.spec.to_dict()),
                                            "cyclegan.direction": direction,
                                            "cyclegan.input": "NCHW float32 in [-1, 1], sides multiples of 4"})
        onnx.save(model, str(partial))
        onnx.checker.check_model(str(partial))
        worst = check_onnx(net, partial)
    return worst


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
        raise UserError(f"the ONNX export differs from PyTorch by {worst:.2e} (more than {ONNX_TOLERANCE}); "
                        "nothing was written")
    return worst


def export_hf(net: ResnetGenerator, folder: Path, direction: str, weights: Path, run: Path | None) -> Path:
    """Write `folder` as a Hugging Face model: config.json, model.safetensors, and README.md, the
    model card, with what the run folder tells of the weights (and a sample grid as sample.png);
    with the files that run it as a Space (`write_space`).
    A CUT model's folder also holds its run's identity grid as identity.png. Written beside
    `folder` and swapped in whole, so an existing export is replaced only by a complete one."""
    objective = objective_of(weights, run)
    config = hub_config(net.spec, direction, objective)
    hub = HubGenerator(**config)
    hub.load_state_dict(net.state_dict())
    with atomic_folder(folder) as staging:
        hub.save_pretrained(staging, config=config)
        grids = {"sample.png": direction, **({"identity.png": "identity"} if objective in ONE_WAY else {})}
        samples = {name: found for name, grid in grids.items() if run and (found := newest_sample(run, grid))}
        for name, found in samples.items():
            shutil.copy2(found, staging / name)
        gradio = write_space(staging, run, direction)
        card = ModelCard.from_template(
            ModelCardData(library_name="cyclegan", tags=TAGS, pipeline_tag="image-to-image", sdk="gradio",
                          sdk_version=gradio, app_file=SPACE_APP),
            template_str=CARD, title=f"{MODELS[objective][0]} generator {direction}",
            body=card_body(net.spec, direction, weights, run, list(samples), objective))
        card.save(staging / "README.md")
    return folder


def write_space(folder: Path, run: Path | None, direction: str) -> str:
    """What makes a model folder run as a Hugging Face Space as it is (`python app.py` starts the
    demo page): app.py, requirements.txt (the package's own requirements and its demo extra's),
    a copy of this package (not on PyPI: the Space imports the copy) and, where the run's shard
    folder is there to read, a few of its test images as the page's examples. Returns the Gradio
    version the Space should run: the one installed here, else the demo extra's least."""
    from importlib import metadata

    from cyclegan.app.model import EXAMPLES, test_images

    (folder / SPACE_APP).write_text(APP)
    try:
        requires = metadata.requires("cyclegan") or []
    except metadata.PackageNotFoundError:
        raise UserError("the Space's requirements.txt is written from the installed package: pip install -e . "
                        "first") from None
    needed = [line.split(";")[0].strip() for line in requires if ";" not in line or 'extra == "demo"' in line]
    (folder / "requirements.txt").write_text("\n".join(needed) + "\n")
    shutil.copytree(Path(__file__).parent, folder / "cyclegan", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if run is not None:
        test_images(run, direction[0], folder / "examples" / direction[0], EXAMPLES)
    try:
        return metadata.version("gradio")
    except metadata.PackageNotFoundError:
        least = next(line.split(">=")[1] for line in needed if line.startswith("gradio>="))
        return ".".join((least.split(".") + ["0", "0"])[:3])  # as a Space's sdk_version is written: 6.0.0


def hub_config(spec: GeneratorSpec, direction: str, objective: str) -> dict:
    """config.json: the architecture and the direction, and `antialias` and `objective` only where
    they are not HubGenerator's defaults (anti-aliased, CUT or FastCUT): a CycleGAN export keeps the
    keys of releases before CUT, which build the generator from every key but `direction`."""
    config = {**spec.to_dict(), "direction": direction}
    if not spec.antialias:
        del config["antialias"]
    return config | ({"objective": objective} if objective != "cyclegan" else {})


SPACE_APP = "app.py"
APP = '''"""This model's demo page: upload images or a video and translate them (the cyclegan package's
`cyclegan-demo`). A Hugging Face Space runs it as it is; locally: pip install -r requirements.txt,
then python app.py."""

from pathlib import Path

from cyclegan.app.page import serve

if __name__ == "__main__":
    serve(Path(__file__).resolve().parent)
'''

CARD = """---
{{ card_data }}
---

# {{ title }}

{{ body }}
"""


def objective_of(weights: Path, run: Path | None) -> str:
    """The objective that trained `weights`: as the record beside them says, else their run's
    config; `cut` for the official CUT files; `cyclegan` where nothing says (older exports)."""
    objective = recorded_objective(weights.parent)
    if objective is None and run is not None:
        model = (_json(run / "run.json") or {}).get("model")
        objective = model.get("objective") if isinstance(model, dict) else None
    if objective is None and one_way(weights):  # the official CUT files: by their head, or by their blur filters
        objective = "cut"
    return objective if objective in MODELS else "cyclegan"


def card_body(spec: GeneratorSpec, direction: str, weights: Path, run: Path | None, samples: list[str],
              objective: str = "cyclegan") -> str:
    """What a reader of the card wants: the architecture, the data, the training and the scores.
    `samples`: the grids the folder holds (sample.png, identity.png)."""
    name, paper = MODELS[objective]
    one_way_note = " It translates A to B only: CUT trains one generator." if objective in ONE_WAY else ""
    lines = [f"A {name} ({paper}) generator translating domain {direction[0]} to domain {direction[-1]}: "
             f"{describe(spec)}. {official_code(spec, objective)}" + one_way_note, "", "## How to use", "",
             "With the `cyclegan` package (this model's training code):", "", "```python", "from PIL import Image",
             "from cyclegan import Translator", "",
             'translator = Translator.from_pretrained("this/repo-or-folder")',
             'translated = translator(Image.open("input.jpg"))', "```", ""]
    lines += ["## Try it", "", f"This folder runs as a Gradio app: `{SPACE_APP}` (a Hugging Face Space runs it as it is; "
              f"locally `pip install -r requirements.txt` and `python {SPACE_APP}`) serves a page to upload images or a "
              "video and translate them. It holds a copy of the `cyclegan` package that wrote it.", ""]
    if run is None:
        return "\n".join(lines + ["Exported from a weights file without its training run."])
    lines += ["## Training", ""] + [f"- {fact}" for fact in run_facts(run, weights, direction, objective)]
    if "sample.png" in samples:
        if objective in ONE_WAY:  # the columns of `cyclegan.grids.sample_grids`
            columns = "real A | G(A)"
        else:
            columns = "real | translated | reconstructed" + (" | identity" if spec.in_channels == spec.out_channels
                                                              else "")
        lines += ["", "## Samples", "", f"Test images of the run, each row {columns} (from the run's newest sample "
                  "grid).", "", "![sample grid](sample.png)"]
    if "identity.png" in samples:
        lines += ["", "Test images of domain B, each row real B | identity G(B): what G does to an image that is "
                  "already of its output domain (it should change little).", "", "![identity grid](identity.png)"]
    return "\n".join(lines)


def official_code(spec: GeneratorSpec, objective: str) -> str:
    """Which official code loads the weights: their layout follows the anti-aliasing, whatever the
    objective (the official CycleGAN code builds no blur layers; the official CUT code builds them
    unless told not to)."""
    if spec.antialias:
        as_g = "" if objective in ONE_WAY else " as a generator (G_A or G_B) of its `--model cycle_gan`"
        return (f"The weights use the official CUT implementation's state_dict keys, so its code loads them{as_g}; "
                "the official CycleGAN code cannot, as it builds no blur layers.")
    return ("The weights use the official implementations' state_dict keys: the official CycleGAN code loads them, "
            "and so does the official CUT code with `--no_antialias --no_antialias_up`.")


def run_facts(run: Path, weights: Path, direction: str, objective: str = "cyclegan") -> list[str]:
    """Lines about the exported weights and their run: settings, data, step, losses (with the
    objective's loss weights), scores."""
    record = _json(run / "run.json") or {}
    state = _json(weights.parent / "state.json") or {}
    facts = []
    t = record.get("train") if isinstance(record.get("train"), dict) else {}
    if record:  # a hand-written or older run.json may lack keys: "?" for those
        def get(key: str, where: dict = t) -> object:
            return where.get(key, "?")

        precision = {"no": "fp32"}.get(get("mixed_precision"), get("mixed_precision"))
        if objective in ONE_WAY:
            weighting = (f"model.objective {objective}: lambda_GAN {get('lambda_gan')}, lambda_NCE "
                         f"{get('lambda_nce')}, identity NCE {get('nce_idt')}, flip equivariance "
                         f"{get('flip_equivariance')}, {get('num_patches')} patches per layer, temperature "
                         f"{get('nce_temperature')}")
        else:
            weighting = f"lambda_cycle {get('lambda_cycle')}, lambda_identity {get('lambda_identity')}"
        facts.append(f"global batch {get('global_batch', record)} ({get('batch_size')} per device x "
                     f"{get('grad_accum')} accumulation x {get('world_size', record)} process(es)); precision "
                     f"{precision}; Adam lr {get('lr')}, betas ({get('beta1')}, {get('beta2')}); {get('epochs')} "
                     f"constant + {get('decay_epochs')} decay epochs; {weighting}")
        images = record.get("images") if isinstance(record.get("images"), dict) else {}
        facts.append("images: " + ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in sorted(images.items())))
    step = state.get("step")
    rows = [row for row in _json_lines(run / "metrics.jsonl") if "loss/adv_ab" in row
            and (step is None or row["step"] <= step)]
    averaged = is_averaged(weights)
    kind = "averaged (EMA)" if averaged else "trained"
    if step is not None:
        facts.append(f"these weights: optimizer step {step}, the {kind} generator")
    if rows:
        facts.append(f"losses logged at step {rows[-1]['step']}: "
                     + ", ".join(f"{k[5:]} {v:.4f}" for k, v in rows[-1].items() if k.startswith("loss/")))
    best = _json(run / "best" / "best.json")
    if best:
        scores = {k.split("/", 1)[1]: v for k, v in best.get("results", {}).items() if k.startswith(f"{direction}/")}
        evaluated_averaged = bool(t.get("ema_decay"))  # evaluation uses the average
        if best.get("step") == step and evaluated_averaged == averaged:
            whose = "these weights"
        else:
            whose = f"the {'averaged' if evaluated_averaged else 'trained'} generators of step {best.get('step', '?')}, in best/"
        facts.append(f"best evaluation ({whose}): " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items())))
    return facts


def is_averaged(weights: Path) -> bool:
    """Whether a generator file holds averaged (EMA) weights: as the state.json beside it says (an
    export's), else by its name (a checkpoint's `g_ab_ema`)."""
    state = _json(weights.parent / "state.json") or {}
    return bool(state.get("averaged", weights.stem.endswith("_ema")))


def _json(path: Path) -> dict | None:
    """A record the model card draws on; missing or damaged, the card leaves its facts out."""
    try:
        return read_json(path)
    except DataError:
        return None


def _json_lines(path: Path) -> list[dict]:
    """A JSONL log's rows, as `_json` (none if missing or damaged)."""
    try:
        return read_jsonl(path) if path.is_file() else []
    except DataError:
        return []


def newest_sample(run: Path, grid: str) -> Path | None:
    """The run's newest sample grid of this name (AtoB, BtoA, identity), if any."""
    samples = sorted((run / "samples").glob(f"step_*_{grid}.png")) if (run / "samples").is_dir() else []
    return samples[-1] if samples else None


def run_folder(weights: Path) -> Path | None:
    """The training run a generator file comes from, if it sits in one (export/, checkpoints/, best/)."""
    for folder in weights.parents[:3]:
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
                        f"{folder}: upload it later with `hf upload {repo} {folder}`, after `hf auth login`") from None
