"""Single source of truth for the pack's example workflows.

Each graph is described once (GRAPHS below: nodes, widget values by input name, links by input name). This script
writes, for every graph,
    workflows/ui/<name>.json     ComfyUI's UI format (drag-and-drop into the browser)
    workflows/api/<name>.json    the API format (POST /prompt {"prompt": ...})
    example_workflows/<name>.json  a copy of the UI file: ComfyUI lists a pack's `example_workflows/*.json` in its
                                   template browser (served under /api/workflow_templates/<pack>/)
so the two formats agree by construction. (Sub-folders, because ComfyUI also lists `<pack>/workflows/*.json` as
templates: API files there would show up as broken templates, UI files twice.) Node input order, socket types and widget defaults come from the node
definitions (INPUT_TYPES of this pack's nodes, a table of the ComfyUI core nodes used), i.e. the same order
/object_info reports; tests/comfyui_host/test_workflows.py checks the committed files against this generator and against a
running ComfyUI.

    python workflows/build.py            # rewrite the files
    python workflows/build.py --check    # exit 1 if a committed file differs from the generator output
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# --------------------------------------------------------------------------------------------------------------------
# Node schemas


def _core_schemas() -> dict:
    """The ComfyUI core nodes the workflows use, as in ComfyUI 0.3.75's nodes.py (input order = /object_info order).
    Combo option lists are not needed here (values are checked against a live server by the tests)."""
    seed = ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True})
    return {
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": ("COMBO", {})}},
                                   "output": ["MODEL", "CLIP", "VAE"], "output_name": ["MODEL", "CLIP", "VAE"]},
        "CLIPTextEncode": {"input": {"required": {"text": ("STRING", {"multiline": True}), "clip": ("CLIP", {})}},
                           "output": ["CONDITIONING"], "output_name": ["CONDITIONING"]},
        "EmptyLatentImage": {"input": {"required": {"width": ("INT", {"default": 512}),
                                                    "height": ("INT", {"default": 512}),
                                                    "batch_size": ("INT", {"default": 1})}},
                             "output": ["LATENT"], "output_name": ["LATENT"]},
        "KSampler": {"input": {"required": {
            "model": ("MODEL", {}), "seed": seed, "steps": ("INT", {"default": 20}), "cfg": ("FLOAT", {"default": 8.0}),
            "sampler_name": ("COMBO", {}), "scheduler": ("COMBO", {}), "positive": ("CONDITIONING", {}),
            "negative": ("CONDITIONING", {}), "latent_image": ("LATENT", {}), "denoise": ("FLOAT", {"default": 1.0})}},
            "output": ["LATENT"], "output_name": ["LATENT"]},
        "VAEDecode": {"input": {"required": {"samples": ("LATENT", {}), "vae": ("VAE", {})}},
                      "output": ["IMAGE"], "output_name": ["IMAGE"]},
        "SaveImage": {"input": {"required": {"images": ("IMAGE", {}),
                                             "filename_prefix": ("STRING", {"default": "ComfyUI"})}},
                      "output": [], "output_name": []},
        "PreviewImage": {"input": {"required": {"images": ("IMAGE", {})}}, "output": [], "output_name": []},
        "LoadImage": {"input": {"required": {"image": ("COMBO", {"image_upload": True})}},
                      "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"]},
        # Frontend-only: a text note on the canvas (no server node; left out of the API prompt).
        "Note": {"input": {"required": {"text": ("STRING", {"multiline": True, "default": ""})}},
                 "output": [], "output_name": [], "frontend_only": True},
    }


def _import_pack():
    """This checkout imported the way ComfyUI does (a package named after its path); works without ComfyUI."""
    name = "repose_workflow_build_pack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _spec_type(spec) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, (list, tuple)) else kind


def node_schemas() -> dict:
    """{class_type: {"input": {"required"/"optional": {name: (TYPE, opts)}}, "output": [...], "output_name": [...],
    "display_name": ...}} for the pack's nodes and the core nodes used."""
    schemas = _core_schemas()
    pack = _import_pack()
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        types = cls.INPUT_TYPES()
        schemas[key] = {
            "input": {section: {n: (_spec_type(s), s[1] if len(s) > 1 else {}) for n, s in types.get(section, {}).items()}
                      for section in ("required", "optional")},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "display_name": pack.NODE_DISPLAY_NAME_MAPPINGS.get(key, key),
        }
    return schemas


def ordered_inputs(schema: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) in /object_info order: required then optional."""
    out = []
    for section in ("required", "optional"):
        for name, (kind, opts) in schema["input"].get(section, {}).items():
            out.append((name, kind, opts))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Graph description


@dataclass
class Node:
    id: int
    type: str
    widgets: dict = field(default_factory=dict)   # input name -> value (unset widgets take their default)
    links: dict = field(default_factory=dict)     # input name -> (source node id, output index)
    title: str | None = None
    col: int = 0                                  # layout column (left to right); rows follow the list order
    image: int = 0                                # height reserved for the images the node shows after a run
    models: tuple = ()                            # ((file name, url, models/ sub-folder), ...) for the frontend


@dataclass
class Graph:
    name: str          # file stem of workflows/ui and workflows/api
    title: str         # template title in ComfyUI's template browser (= file name in example_workflows/)
    description: str
    nodes: list
    groups: tuple = ()  # (title, columns) per group: a box around those columns


def _pose_json(points, width, height) -> str:
    """POSE_KEYPOINT text for an inline target pose (OpenPose-18 (x, y) in pixels, all confident)."""
    flat = []
    for x, y in points:
        flat += [x, y, 1.0]
    return json.dumps([{"people": [{"pose_keypoints_2d": flat}], "canvas_width": width, "canvas_height": height}])


# A person walking, arms slightly out, on DeepFashion's 176x256 canvas (OpenPose-18 order).
_WALK_176x256 = [(88, 40), (88, 62), (66, 63), (56, 98), (50, 132), (110, 63), (122, 96), (130, 128), (76, 132),
                 (70, 180), (62, 226), (100, 132), (110, 178), (118, 222), (84, 36), (92, 36), (79, 39), (97, 39)]
TARGET_POSE_DEEPFASHION = _pose_json(_WALK_176x256, 176, 256)
TARGET_POSE_512 = _pose_json([(x * 2 + 80, y * 2) for x, y in _WALK_176x256], 512, 512)

DEFAULT_MODEL = "repose_default_full.safetensors"
DEFAULT_ESTIMATOR = "repose_default_estimator.safetensors"
EXAMPLE_SIZE = "64x44"     # the bundled default model's size
PREVIEW_SCALE = 4          # enlarged previews of the 44x64 results: 176x256 on screen

# Official downloads the frontend offers in its missing-models dialog (node properties.models).
SD15 = ("v1-5-pruned-emaonly-fp16.safetensors",
        "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
        "v1-5-pruned-emaonly-fp16.safetensors", "checkpoints")
SD21_BASE = ("v2-1_512-ema-pruned.safetensors",
             "https://huggingface.co/stabilityai/stable-diffusion-2-1-base/resolve/main/v2-1_512-ema-pruned.safetensors",
             "checkpoints")
HUMANSD = ("humansd-v1.ckpt", "https://drive.google.com/drive/folders/1NLQAlF7i0zjEpd-XY0EcVw9iXP5bB5BJ", "repose")
HIGHERHRNET = ("higher_hrnet32_coco_512x512-8ae85183_20200713.pth",
               "https://download.openmmlab.com/mmpose/bottom_up/higher_hrnet32_coco_512x512-8ae85183_20200713.pth",
               "pose_estimators")
PIDM_URL = "https://drive.google.com/drive/folders/1PhnaFNg9zxMZM-ccJAzLIt2iqWFRzXSw"

NOTE_BUNDLED = ("Runs as is: the bundled example person and the bundled 64x44 model (trained here on procedural "
                "figures, so expect a rough figure, not a photo).\n\nYour own photo: replace 'RePose Load Example' "
                "by Load Image (+ RePose Load Pose or Pose From Image for the pose).\n\nPhoto quality: convert PIDM's "
                f"DeepFashion checkpoint ({PIDM_URL}) with `python train/convert_pidm.py last.pt "
                "models/repose/pidm_deepfashion256.safetensors` and pick it in RePose Load Model (256x176 images).")


def _example_label(k: int) -> str:
    pack = _import_pack()
    examples = sys.modules[f"{pack.__name__}.nodes.example_nodes"]
    return examples.example_labels()[k]


def _graphs() -> list[Graph]:
    # the bundled default corrects RPA's aligned source (prediction "aligned_x0"): it samples best at CFG w = 1 (w = 2
    # doubles the aligned image's contrast, docs/ablation.md) and with a stochastic sampler (η = 1 beats η = 0)
    sampler = dict(seed=0, steps=30, cfg=1.0, sampler_name="euler_ancestral", scheduler="karras", denoise=1.0)
    big = {"scale": PREVIEW_SCALE}
    img = 300   # room for a 176x256 enlarged preview
    return [
        Graph("repose_pose_transfer", "RePose 1 - Pose transfer, bundled model (runs as is)",
              "Pose transfer with RePoseDM: the person of the source image in the target pose, with the Recurrent "
              "Pose Alignment warps of every iteration and the flow. Runs with the bundled example and model.", [
                  Node(1, "LoadRePoseModel", {"ckpt_name": DEFAULT_MODEL, "dtype": "auto"}, col=0),
                  Node(2, "RePoseLoadExample", {"example": _example_label(0), "size": EXAMPLE_SIZE},
                       title="Source person and target pose (bundled example)", col=0),
                  Node(12, "RePosePreviewEnlarged", big, {"images": (2, 0)}, title="Source person (x4 preview)",
                       col=0, image=img),
                  Node(9, "RePoseRenderPose", {"style": "openpose", "width": 176, "height": 256},
                       {"pose_keypoint": (2, 2)}, title="Render target skeleton (176x256)", col=1),
                  Node(10, "PreviewImage", {}, {"images": (9, 0)}, title="Target skeleton", col=1, image=img),
                  Node(4, "RecurrentPoseAlign", {"iterations": 0},
                       {"repose_model": (1, 0), "source": (2, 0), "target_pose": (2, 2)}, col=1),
                  Node(7, "RePosePreviewEnlarged", big, {"images": (4, 1)},
                       title="RPA warps, one per iteration (x4 preview)", col=2, image=img),
                  Node(8, "RePosePreviewEnlarged", big, {"images": (4, 2)}, title="RPA flow (x4 preview)", col=2,
                       image=img),
                  Node(5, "RePoseKSampler", sampler, {"repose_model": (1, 0), "repose_cond": (4, 0)}, col=3),
                  Node(11, "RePosePreviewEnlarged", big, {"images": (5, 1)},
                       title="Result (x4 nearest-neighbour preview)", col=3, image=img),
                  Node(6, "SaveImage", {"filename_prefix": "repose/pose_transfer"}, {"images": (5, 1)},
                       title="Save result (model size, 44x64)", col=3, image=120),
                  Node(13, "Note", {"text": NOTE_BUNDLED}, title="What this needs", col=0, image=150),
              ], groups=(("Inputs", (0,)), ("Target pose and Recurrent Pose Alignment", (1, 2)),
                         ("Sampling and result", (3,)))),
        Graph("repose_pose_from_photo", "RePose 2 - Target pose from a photo, bundled models (runs as is)",
              "Pose transfer where the target pose is detected in a second photo (pose estimator), retargeted to "
              "the source person's proportions, then transferred with RePoseDM. Runs with the bundled examples, "
              "model and estimator.", [
                  Node(1, "LoadRePoseModel", {"ckpt_name": DEFAULT_MODEL, "dtype": "auto"}, col=0),
                  Node(2, "RePoseLoadExample", {"example": _example_label(0), "size": EXAMPLE_SIZE},
                       title="Source person (bundled example)", col=0),
                  Node(3, "RePoseLoadExample", {"example": _example_label(1), "size": EXAMPLE_SIZE},
                       title="Photo with the target pose (bundled example)", col=0),
                  Node(4, "RePoseLoadPoseEstimator", {"ckpt_name": DEFAULT_ESTIMATOR, "dtype": "fp32"}, col=0),
                  Node(5, "RePosePoseFromImage", {"threshold": 0.1, "multi_person": False, "allow_empty": False},
                       {"image": (3, 3), "pose_estimator": (4, 0)}, title="Target pose from the photo", col=1),
                  Node(6, "RePosePoseFromImage", {"threshold": 0.1, "multi_person": False, "allow_empty": False},
                       {"image": (2, 0), "pose_estimator": (4, 0)}, title="Source pose", col=1),
                  Node(7, "RePoseRetargetPose", {"anchor": "target"}, {"target_pose": (5, 0), "source_pose": (6, 0)},
                       col=1),
                  Node(14, "RePosePreviewEnlarged", big, {"images": (3, 3)},
                       title="Photo with the target pose (x4 preview)", col=1, image=img),
                  Node(11, "RePoseRenderPose", {"style": "openpose", "width": 176, "height": 256},
                       {"pose_keypoint": (7, 0)}, title="Render retargeted pose (176x256)", col=2),
                  Node(12, "PreviewImage", {}, {"images": (11, 0)}, title="Retargeted pose", col=2, image=img),
                  Node(8, "RecurrentPoseAlign", {"iterations": 0},
                       {"repose_model": (1, 0), "source": (2, 0), "target_pose": (7, 0)}, col=2),
                  Node(13, "RePosePreviewEnlarged", big, {"images": (8, 1)}, title="RPA warps (x4 preview)", col=2,
                       image=img),
                  Node(9, "RePoseKSampler", sampler, {"repose_model": (1, 0), "repose_cond": (8, 0)}, col=3),
                  Node(15, "RePosePreviewEnlarged", big, {"images": (9, 1)},
                       title="Result (x4 nearest-neighbour preview)", col=3, image=img),
                  Node(10, "SaveImage", {"filename_prefix": "repose/pose_from_photo"}, {"images": (9, 1)},
                       title="Save result (model size, 44x64)", col=3, image=120),
              ], groups=(("Inputs", (0,)), ("Poses: detect, retarget", (1,)), ("Recurrent Pose Alignment", (2,)),
                         ("Sampling and result", (3,)))),
        Graph("sd_pose_gradient_guidance", "RePose 4 - Pose guidance for SD 1.5 (needs SD 1.5 and HigherHRNet)",
              "Pose control for any Stable Diffusion checkpoint without retraining: RePose Pose Gradient Guidance "
              "patches the model, and ComfyUI's own KSampler pulls the generated person towards the target pose "
              "(Pose Interaction Field gradients through the VAE decoder and the pose estimator). Needs SD 1.5 and "
              "HigherHRNet-W32 (mmpose); ComfyUI offers both downloads when they are missing.", [
                  Node(1, "CheckpointLoaderSimple", {"ckpt_name": SD15[0]}, col=0, models=(SD15,)),
                  Node(2, "CLIPTextEncode", {"text": "full-body photo of a person walking, street, detailed"},
                       {"clip": (1, 1)}, title="Positive", col=0, image=60),
                  Node(3, "CLIPTextEncode", {"text": "lowres, bad anatomy, extra limbs, blurry"}, {"clip": (1, 1)},
                       title="Negative", col=0, image=60),
                  Node(4, "RePoseLoadPoseEstimator", {"ckpt_name": HIGHERHRNET[0], "dtype": "fp32"}, col=1,
                       models=(HIGHERHRNET,)),
                  Node(5, "RePoseLoadPoseJSON", {"pose_json": TARGET_POSE_512, "coordinates": "auto"},
                       title="Target pose", col=1, image=60),
                  Node(11, "RePoseRenderPose", {"style": "openpose", "width": 512, "height": 512},
                       {"pose_keypoint": (5, 0)}, col=1),
                  Node(12, "PreviewImage", {}, {"images": (11, 0)}, title="Target skeleton", col=1, image=img),
                  Node(6, "PoseGradientGuidance",
                       {"scale": 1.0, "start": 0.0, "end": 0.5, "energy": "keypoint", "decoder": "vae", "every": 2,
                        "estimator_size": 256, "clip_grad_norm": 0.0, "schedule": "constant"},
                       {"pose_estimator": (4, 0), "target_pose": (5, 0), "model": (1, 0), "vae": (1, 2)}, col=2),
                  Node(7, "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, col=2),
                  Node(8, "KSampler", dict(seed=0, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal",
                                           denoise=1.0),
                       {"model": (6, 1), "positive": (2, 0), "negative": (3, 0), "latent_image": (7, 0)}, col=3),
                  Node(9, "VAEDecode", {}, {"samples": (8, 0), "vae": (1, 2)}, col=3),
                  Node(10, "SaveImage", {"filename_prefix": "repose/sd_pose_guidance"}, {"images": (9, 0)}, col=3,
                       image=img),
              ], groups=(("SD 1.5 and prompts", (0,)), ("Target pose", (1,)), ("Pose gradient guidance", (2,)),
                         ("Sampling", (3,)))),
        Graph("repose_sd_text_and_pose", "RePose 5 - Text and pose with HumanSD (needs SD 2.1 and HumanSD)",
              "RePoseSD / HumanSD: text-to-image with a pose. The 8-channel UNet reads the VAE-encoded skeleton "
              "from the conditioning; text encoder and VAE come from the SD 2.1-base checkpoint. Needs SD 2.1-base "
              "and the HumanSD checkpoint (or a RePoseSD UNet from train/train_sd.py) in models/repose.", [
                  Node(1, "CheckpointLoaderSimple", {"ckpt_name": SD21_BASE[0]}, col=0, models=(SD21_BASE,)),
                  Node(2, "CLIPTextEncode", {"text": "a woman in a red dress dancing on a beach, detailed background, "
                                                     "best quality"}, {"clip": (1, 1)}, title="Positive", col=0,
                       image=60),
                  Node(3, "CLIPTextEncode", {"text": "longbody, lowres, bad anatomy, bad hands, missing fingers, "
                                                     "extra digit, fewer digits, cropped, worst quality"},
                       {"clip": (1, 1)}, title="Negative", col=0, image=60),
                  Node(4, "RePoseSDLoadUNet", {"unet_name": HUMANSD[0], "dtype": "auto", "prediction": "eps"}, col=0,
                       models=(HUMANSD,)),
                  Node(5, "RePoseLoadPoseJSON", {"pose_json": TARGET_POSE_512, "coordinates": "auto"},
                       title="Target pose", col=1, image=60),
                  Node(6, "RePoseRenderPose", {"style": "humansd", "width": 512, "height": 512},
                       {"pose_keypoint": (5, 0)}, col=1),
                  Node(11, "PreviewImage", {}, {"images": (6, 0)}, title="Pose image", col=1, image=img),
                  Node(7, "RePoseSDPoseConditioning", {},
                       {"positive": (2, 0), "negative": (3, 0), "vae": (1, 2), "pose_image": (6, 0)}, col=2),
                  Node(8, "KSampler", dict(seed=0, steps=30, cfg=9.0, sampler_name="euler", scheduler="normal",
                                           denoise=1.0),
                       {"model": (4, 0), "positive": (7, 0), "negative": (7, 1), "latent_image": (7, 2)}, col=2),
                  Node(9, "VAEDecode", {}, {"samples": (8, 0), "vae": (1, 2)}, col=3),
                  Node(10, "SaveImage", {"filename_prefix": "repose/sd_text_and_pose"}, {"images": (9, 0)}, col=3,
                       image=img),
              ], groups=(("Models and prompts", (0,)), ("Pose", (1,)), ("Sampling", (2, 3)))),
        Graph("repose_appearance_edit", "RePose 3 - Appearance edit with a mask, bundled model (runs as is)",
              "Appearance editing with a mask: regenerate only the masked part of a reference image (here the torso "
              "of a bundled example person) with the appearance of another person, keeping the rest. Runs with the "
              "bundled examples and model; paint your own mask in the mask editor of a Load Image.", [
                  Node(1, "LoadRePoseModel", {"ckpt_name": DEFAULT_MODEL, "dtype": "auto"}, col=0),
                  Node(2, "RePoseLoadExample", {"example": _example_label(1), "size": EXAMPLE_SIZE},
                       title="Appearance source (bundled example)", col=0),
                  Node(5, "RePoseLoadExample", {"example": _example_label(0), "size": EXAMPLE_SIZE},
                       title="Reference, its pose and torso mask (bundled example)", col=0),
                  Node(8, "RePosePreviewEnlarged", big, {"images": (5, 3)}, title="Reference (x4 preview)", col=1,
                       image=img),
                  Node(4, "RecurrentPoseAlign", {"iterations": 0},
                       {"repose_model": (1, 0), "source": (2, 0), "target_pose": (5, 2)}, col=1),
                  Node(6, "RePoseKSampler", sampler,
                       {"repose_model": (1, 0), "repose_cond": (4, 0), "edit_mask": (5, 4), "reference": (5, 3)},
                       col=2),
                  Node(9, "RePosePreviewEnlarged", big, {"images": (6, 1)},
                       title="Edited result (x4 nearest-neighbour preview)", col=3, image=img),
                  Node(7, "SaveImage", {"filename_prefix": "repose/appearance_edit"}, {"images": (6, 1)},
                       title="Save result (model size, 44x64)", col=3, image=120),
              ], groups=(("Inputs", (0,)), ("Alignment to the reference pose", (1,)), ("Masked sampling", (2,)),
                         ("Result", (3,)))),
    ]


GRAPHS = _graphs()


# --------------------------------------------------------------------------------------------------------------------
# Emitters


def _widget_inputs(schema) -> list[tuple[str, str, dict]]:
    return [(n, k, o) for n, k, o in ordered_inputs(schema) if k in WIDGET_TYPES]


def _socket_inputs(schema) -> list[tuple[str, str, dict]]:
    return [(n, k, o) for n, k, o in ordered_inputs(schema) if k not in WIDGET_TYPES]


def _check(graph: Graph, schemas: dict) -> None:
    ids = {n.id for n in graph.nodes}
    assert len(ids) == len(graph.nodes), f"{graph.name}: duplicate node ids"
    for node in graph.nodes:
        if node.type not in schemas:
            raise KeyError(f"{graph.name}: node {node.id} has unknown type {node.type}")
        schema = schemas[node.type]
        names = {n for n, _, _ in ordered_inputs(schema)}
        widgets = {n for n, _, _ in _widget_inputs(schema)}
        for name in node.widgets:
            if name not in widgets:
                raise KeyError(f"{graph.name}: node {node.id} ({node.type}) has no widget input {name!r}")
        for name, (src, slot) in node.links.items():
            if name not in names or name in widgets:
                raise KeyError(f"{graph.name}: node {node.id} ({node.type}) has no socket input {name!r}")
            if src not in ids:
                raise KeyError(f"{graph.name}: node {node.id} input {name!r} links to missing node {src}")
            src_type = schemas[next(n.type for n in graph.nodes if n.id == src)]["output"][slot]
            want = schema["input"]["required"].get(name, schema["input"].get("optional", {}).get(name))[0]
            if src_type != want:
                raise TypeError(f"{graph.name}: node {node.id} input {name!r} wants {want}, gets {src_type}")
        for name, (kind, _opts) in schema["input"].get("required", {}).items():
            if kind not in WIDGET_TYPES and name not in node.links:
                raise KeyError(f"{graph.name}: node {node.id} ({node.type}) required input {name!r} is not linked")


def _widget_value(node: Node, name: str, opts: dict):
    if name in node.widgets:
        return node.widgets[name]
    if "default" in opts:
        return opts["default"]
    raise KeyError(f"node {node.id} ({node.type}): widget {name!r} has no default; set it")


def to_api(graph: Graph, schemas: dict) -> dict:
    """API format: {id: {"class_type", "inputs": {name: value | [source id, output index]}, "_meta": {"title"}}}."""
    _check(graph, schemas)
    prompt = {}
    for node in graph.nodes:
        schema = schemas[node.type]
        if schema.get("frontend_only"):
            continue
        inputs = {}
        for name, kind, opts in ordered_inputs(schema):
            if kind in WIDGET_TYPES:
                inputs[name] = _widget_value(node, name, opts)
            elif name in node.links:
                src, slot = node.links[name]
                inputs[name] = [str(src), slot]
        prompt[str(node.id)] = {"class_type": node.type, "inputs": inputs,
                                "_meta": {"title": node.title or schema.get("display_name", node.type)}}
    return prompt


# Layout (canvas units = screen pixels at zoom 1). Heights follow the frontend's drawing: title bar, one row per
# socket, one per widget (multiline text boxes taller), plus the room a node needs for the images it shows after a
# run, so that nothing grows over its neighbour when the results arrive.
COL_WIDTH, COL_GAP, ROW_GAP = 340, 60, 40
TITLE_H, SLOT_H, WIDGET_H, MULTILINE_H = 30, 22, 26, 90
GROUP_PAD, GROUP_TITLE_H = 16, 46
ORIGIN = (40, 80)
VIEWPORT = (1500, 860)   # canvas area the saved view is fitted to (a 1600x1000 window minus the menus)


def node_height(node: Node, schema: dict) -> int:
    widgets = _widget_inputs(schema)
    sockets = _socket_inputs(schema)
    rows = max(len(sockets), len(schema["output"]))
    multiline = sum(1 for _, kind, opts in widgets if kind == "STRING" and opts.get("multiline"))
    return TITLE_H + SLOT_H * rows + WIDGET_H * (len(widgets) - multiline) + MULTILINE_H * multiline + 16 + node.image


def layout(graph: Graph, schemas: dict) -> tuple[dict, list, dict]:
    """-> ({node id: (pos, size)}, groups in UI format, the saved view {"scale", "offset"})."""
    boxes, bottoms = {}, {}
    for node in graph.nodes:  # each column is a stack in list order
        x = ORIGIN[0] + node.col * (COL_WIDTH + COL_GAP)
        y = bottoms.get(node.col, ORIGIN[1] + GROUP_TITLE_H)
        h = node_height(node, schemas[node.type])
        boxes[node.id] = ([x, y], [COL_WIDTH, h])
        bottoms[node.col] = y + h + ROW_GAP + TITLE_H   # the title bar is drawn above pos
    groups = []
    for title, cols in graph.groups:
        members = [boxes[n.id] for n in graph.nodes if n.col in cols]
        x0 = min(p[0] for p, _ in members) - GROUP_PAD
        y0 = min(p[1] for p, _ in members) - TITLE_H - GROUP_TITLE_H + 6
        x1 = max(p[0] + s[0] for p, s in members) + GROUP_PAD
        y1 = max(p[1] + s[1] for p, s in members) + GROUP_PAD
        groups.append({"title": title, "bounding": [x0, y0, x1 - x0, y1 - y0], "color": "#3f789e",
                       "font_size": 22, "flags": {}})
    width = max(p[0] + s[0] for p, s in boxes.values()) + ORIGIN[0]
    height = max(p[1] + s[1] for p, s in boxes.values()) + GROUP_PAD
    scale = round(min(1.0, VIEWPORT[0] / width, VIEWPORT[1] / height), 3)
    # Leave room for the frontend's side bar (left) and tab bar / banner (top) at the saved zoom.
    view = {"scale": scale, "offset": [round(70 / scale - ORIGIN[0] + GROUP_PAD, 1),
                                       round(110 / scale - ORIGIN[1] + TITLE_H, 1)]}
    return boxes, groups, view


def to_ui(graph: Graph, schemas: dict) -> dict:
    """ComfyUI UI (LiteGraph) format, version 0.4: nodes with positional widgets_values, links
    [id, src, src_slot, dst, dst_slot, type]; seed-like INTs (control_after_generate) carry an extra "fixed" value and
    image-upload combos an extra "image" value, as the frontend saves them. Nodes sit in columns inside titled
    groups; models a node needs are listed in its properties.models (the frontend's missing-models dialog)."""
    _check(graph, schemas)
    links, link_id = [], 0
    out_links: dict = {}
    in_links: dict = {}
    for node in graph.nodes:  # link ids in node order, then input order
        sockets = [n for n, _, _ in _socket_inputs(schemas[node.type])]
        for name in sockets:
            if name in node.links:
                src, slot = node.links[name]
                link_id += 1
                src_type = schemas[next(n.type for n in graph.nodes if n.id == src)]["output"][slot]
                links.append([link_id, src, slot, node.id, sockets.index(name), src_type])
                out_links.setdefault((src, slot), []).append(link_id)
                in_links[(node.id, name)] = link_id
    boxes, groups, view = layout(graph, schemas)
    order = {nid: i for i, nid in enumerate(n.id for n in sorted(graph.nodes, key=lambda n: (_depths(graph)[n.id],
                                                                                              n.id)))}
    nodes = []
    for node in graph.nodes:
        schema = schemas[node.type]
        widgets = _widget_inputs(schema)
        sockets = _socket_inputs(schema)
        values = []
        for name, _kind, opts in widgets:
            value = _widget_value(node, name, opts)
            values.append(value)
            if opts.get("control_after_generate"):
                values.append("fixed")
            if opts.get("image_upload"):
                values.append("image")
        pos, size = boxes[node.id]
        properties = {"Node name for S&R": node.type}
        if node.models:
            properties["models"] = [{"name": n, "url": u, "directory": d} for n, u, d in node.models]
        entry = {
            "id": node.id, "type": node.type, "pos": pos, "size": size,
            "flags": {}, "order": order[node.id], "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": in_links.get((node.id, name))} for name, kind, _ in sockets],
            "outputs": [{"name": oname, "type": otype, "links": out_links.get((node.id, slot), []), "slot_index": slot}
                        for slot, (otype, oname) in enumerate(zip(schema["output"], schema["output_name"]))],
            "properties": properties,
            "widgets_values": values,
        }
        if node.title:
            entry["title"] = node.title
        if schema.get("frontend_only"):
            entry.update(inputs=[], outputs=[], properties={}, color="#432", bgcolor="#653")
        nodes.append(entry)
    nodes.sort(key=lambda n: n["id"])
    return {"last_node_id": max(n.id for n in graph.nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": groups, "config": {}, "extra": {"ds": view, "info": {"title": graph.title,
                                                                          "description": graph.description}},
            "version": 0.4}


def _depths(graph: Graph) -> dict:
    depth = {}

    def visit(node_id):
        if node_id not in depth:
            node = next(n for n in graph.nodes if n.id == node_id)
            depth[node_id] = 1 + max((visit(src) for src, _ in node.links.values()), default=-1)
        return depth[node_id]

    for node in graph.nodes:
        visit(node.id)
    return depth


def outputs(schemas: dict | None = None) -> dict[Path, str]:
    """{path relative to the repository root: file text} for every generated file."""
    schemas = schemas or node_schemas()
    files = {}
    for graph in GRAPHS:
        ui = json.dumps(to_ui(graph, schemas), indent=2) + "\n"
        files[Path("workflows") / "ui" / f"{graph.name}.json"] = ui
        files[Path("workflows") / "api" / f"{graph.name}.json"] = json.dumps(to_api(graph, schemas), indent=2) + "\n"
        files[Path("example_workflows") / f"{graph.title}.json"] = ui
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    stale = []
    for rel, text in outputs().items():
        path = ROOT / rel
        if path.exists() and path.read_text() == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for rel in stale:
        print(("stale: " if args.check else "wrote: ") + str(rel))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
