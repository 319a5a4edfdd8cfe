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


@dataclass
class Graph:
    name: str
    description: str
    nodes: list


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
SOURCE_IMAGE = "repose_source.png"


def _graphs() -> list[Graph]:
    sampler = dict(seed=0, steps=30, cfg=2.0, sampler_name="euler", scheduler="karras", denoise=1.0)
    return [
        Graph("repose_pose_transfer",
              "Pose transfer with RePoseDM: the person of the source photo in the target pose, with the Recurrent "
              "Pose Alignment warps of every iteration and the flow.", [
                  Node(1, "LoadRePoseModel", {"ckpt_name": DEFAULT_MODEL, "dtype": "auto"}),
                  Node(2, "LoadImage", {"image": SOURCE_IMAGE}, title="Source person"),
                  Node(3, "RePoseLoadPoseJSON", {"pose_json": TARGET_POSE_DEEPFASHION, "coordinates": "auto"},
                       title="Target pose"),
                  Node(4, "RecurrentPoseAlign", {"iterations": 0},
                       {"repose_model": (1, 0), "source": (2, 0), "target_pose": (3, 0)}),
                  Node(5, "RePoseKSampler", sampler, {"repose_model": (1, 0), "repose_cond": (4, 0)}),
                  Node(6, "SaveImage", {"filename_prefix": "repose/pose_transfer"}, {"images": (5, 1)}),
                  Node(7, "PreviewImage", {}, {"images": (4, 1)}, title="RPA warps (one per iteration)"),
                  Node(8, "PreviewImage", {}, {"images": (4, 2)}, title="RPA flow"),
                  Node(9, "RePoseRenderPose", {"style": "openpose", "width": 0, "height": 0}, {"pose_keypoint": (3, 0)}),
                  Node(10, "PreviewImage", {}, {"images": (9, 0)}, title="Target skeleton"),
              ]),
        Graph("repose_pose_from_photo",
              "Pose transfer where the target pose is detected in a second photo (pose estimator), retargeted to "
              "the source person's proportions, then transferred with RePoseDM.", [
                  Node(1, "LoadRePoseModel", {"ckpt_name": DEFAULT_MODEL, "dtype": "auto"}),
                  Node(2, "LoadImage", {"image": SOURCE_IMAGE}, title="Source person"),
                  Node(3, "LoadImage", {"image": "repose_target_person.png"}, title="Photo with the target pose"),
                  Node(4, "RePoseLoadPoseEstimator", {"ckpt_name": DEFAULT_ESTIMATOR, "dtype": "fp32"}),
                  Node(5, "RePosePoseFromImage", {"threshold": 0.1, "multi_person": False, "allow_empty": False},
                       {"image": (3, 0), "pose_estimator": (4, 0)}, title="Target pose from photo"),
                  Node(6, "RePosePoseFromImage", {"threshold": 0.1, "multi_person": False, "allow_empty": False},
                       {"image": (2, 0), "pose_estimator": (4, 0)}, title="Source pose"),
                  Node(7, "RePoseRetargetPose", {"anchor": "target"}, {"target_pose": (5, 0), "source_pose": (6, 0)}),
                  Node(8, "RecurrentPoseAlign", {"iterations": 0},
                       {"repose_model": (1, 0), "source": (2, 0), "target_pose": (7, 0)}),
                  Node(9, "RePoseKSampler", sampler, {"repose_model": (1, 0), "repose_cond": (8, 0)}),
                  Node(10, "SaveImage", {"filename_prefix": "repose/pose_from_photo"}, {"images": (9, 1)}),
                  Node(11, "RePoseRenderPose", {"style": "openpose", "width": 0, "height": 0},
                       {"pose_keypoint": (7, 0)}),
                  Node(12, "PreviewImage", {}, {"images": (11, 0)}, title="Retargeted pose"),
                  Node(13, "PreviewImage", {}, {"images": (8, 1)}, title="RPA warps"),
              ]),
        Graph("sd_pose_gradient_guidance",
              "Pose control for any Stable Diffusion checkpoint without retraining: RePose Pose Gradient Guidance "
              "patches the model, and ComfyUI's own KSampler pulls the generated person towards the target pose "
              "(Pose Interaction Field gradients through the VAE decoder and the pose estimator).", [
                  Node(1, "CheckpointLoaderSimple", {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}),
                  Node(2, "CLIPTextEncode", {"text": "full-body photo of a person walking, street, detailed"},
                       {"clip": (1, 1)}, title="Positive"),
                  Node(3, "CLIPTextEncode", {"text": "lowres, bad anatomy, extra limbs, blurry"}, {"clip": (1, 1)},
                       title="Negative"),
                  Node(4, "RePoseLoadPoseEstimator", {"ckpt_name": DEFAULT_ESTIMATOR, "dtype": "fp32"}),
                  Node(5, "RePoseLoadPoseJSON", {"pose_json": TARGET_POSE_512, "coordinates": "auto"},
                       title="Target pose"),
                  Node(6, "PoseGradientGuidance",
                       {"scale": 1.0, "start": 0.0, "end": 0.5, "energy": "keypoint", "decoder": "vae", "every": 2,
                        "estimator_size": 256, "clip_grad_norm": 0.0, "schedule": "constant"},
                       {"pose_estimator": (4, 0), "target_pose": (5, 0), "model": (1, 0), "vae": (1, 2)}),
                  Node(7, "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
                  Node(8, "KSampler", dict(seed=0, steps=20, cfg=7.0, sampler_name="euler", scheduler="normal",
                                           denoise=1.0),
                       {"model": (6, 1), "positive": (2, 0), "negative": (3, 0), "latent_image": (7, 0)}),
                  Node(9, "VAEDecode", {}, {"samples": (8, 0), "vae": (1, 2)}),
                  Node(10, "SaveImage", {"filename_prefix": "repose/sd_pose_guidance"}, {"images": (9, 0)}),
                  Node(11, "RePoseRenderPose", {"style": "openpose", "width": 512, "height": 512},
                       {"pose_keypoint": (5, 0)}),
                  Node(12, "PreviewImage", {}, {"images": (11, 0)}, title="Target skeleton"),
              ]),
        Graph("repose_sd_text_and_pose",
              "RePoseSD / HumanSD: text-to-image with a pose. The 8-channel UNet reads the VAE-encoded skeleton "
              "from the conditioning; text encoder and VAE come from the SD 2.1-base checkpoint.", [
                  Node(1, "CheckpointLoaderSimple", {"ckpt_name": "v2-1_512-ema-pruned.safetensors"}),
                  Node(2, "CLIPTextEncode", {"text": "a woman in a red dress dancing on a beach, detailed background, "
                                                     "best quality"}, {"clip": (1, 1)}, title="Positive"),
                  Node(3, "CLIPTextEncode", {"text": "longbody, lowres, bad anatomy, bad hands, missing fingers, "
                                                     "extra digit, fewer digits, cropped, worst quality"},
                       {"clip": (1, 1)}, title="Negative"),
                  Node(4, "RePoseSDLoadUNet", {"unet_name": "humansd-v1.ckpt", "dtype": "auto", "prediction": "eps"}),
                  Node(5, "RePoseLoadPoseJSON", {"pose_json": TARGET_POSE_512, "coordinates": "auto"},
                       title="Target pose"),
                  Node(6, "RePoseRenderPose", {"style": "humansd", "width": 512, "height": 512},
                       {"pose_keypoint": (5, 0)}),
                  Node(7, "RePoseSDPoseConditioning", {},
                       {"positive": (2, 0), "negative": (3, 0), "vae": (1, 2), "pose_image": (6, 0)}),
                  Node(8, "KSampler", dict(seed=0, steps=30, cfg=9.0, sampler_name="euler", scheduler="normal",
                                           denoise=1.0),
                       {"model": (4, 0), "positive": (7, 0), "negative": (7, 1), "latent_image": (7, 2)}),
                  Node(9, "VAEDecode", {}, {"samples": (8, 0), "vae": (1, 2)}),
                  Node(10, "SaveImage", {"filename_prefix": "repose/sd_text_and_pose"}, {"images": (9, 0)}),
                  Node(11, "PreviewImage", {}, {"images": (6, 0)}, title="Pose image"),
              ]),
        Graph("repose_appearance_edit",
              "Appearance editing with a mask: regenerate only part of a reference image (e.g. a previous pose-"
              "transfer result; paint the region to change in the mask editor) with the appearance of the source "
              "person, keeping the rest.", [
                  Node(1, "LoadRePoseModel", {"ckpt_name": DEFAULT_MODEL, "dtype": "auto"}),
                  Node(2, "LoadImage", {"image": SOURCE_IMAGE}, title="Source person (appearance)"),
                  Node(3, "RePoseLoadPoseJSON", {"pose_json": TARGET_POSE_DEEPFASHION, "coordinates": "auto"},
                       title="Target pose"),
                  Node(4, "RecurrentPoseAlign", {"iterations": 0},
                       {"repose_model": (1, 0), "source": (2, 0), "target_pose": (3, 0)}),
                  Node(5, "LoadImage", {"image": "repose_edit_reference.png"},
                       title="Reference + mask (masked = regenerate)"),
                  Node(6, "RePoseKSampler", sampler,
                       {"repose_model": (1, 0), "repose_cond": (4, 0), "edit_mask": (5, 1), "reference": (5, 0)}),
                  Node(7, "SaveImage", {"filename_prefix": "repose/appearance_edit"}, {"images": (6, 1)}),
              ]),
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


def to_ui(graph: Graph, schemas: dict) -> dict:
    """ComfyUI UI (LiteGraph) format, version 0.4: nodes with positional widgets_values, links
    [id, src, src_slot, dst, dst_slot, type]; seed-like INTs (control_after_generate) carry an extra "fixed" value and
    image-upload combos an extra "image" value, as the frontend saves them."""
    _check(graph, schemas)
    depth = _depths(graph)
    order = sorted(graph.nodes, key=lambda n: (depth[n.id], n.id))
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
    rows: dict = {}
    nodes = []
    for index, node in enumerate(order):
        schema = schemas[node.type]
        col = depth[node.id]
        row = rows.get(col, 0)
        widgets = _widget_inputs(schema)
        sockets = _socket_inputs(schema)
        height = 46 + 24 * (len(widgets) + max(len(sockets), len(schema["output"])))
        rows[col] = row + height + 40
        values = []
        for name, kind, opts in widgets:
            value = _widget_value(node, name, opts)
            values.append(value)
            if opts.get("control_after_generate"):
                values.append("fixed")
            if opts.get("image_upload"):
                values.append("image")
        entry = {
            "id": node.id, "type": node.type, "pos": [40 + 360 * col, 40 + row], "size": [320, height],
            "flags": {}, "order": index, "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": in_links.get((node.id, name))} for name, kind, _ in sockets],
            "outputs": [{"name": oname, "type": otype, "links": out_links.get((node.id, slot), []), "slot_index": slot}
                        for slot, (otype, oname) in enumerate(zip(schema["output"], schema["output_name"]))],
            "properties": {"Node name for S&R": node.type},
            "widgets_values": values,
        }
        if node.title:
            entry["title"] = node.title
        nodes.append(entry)
    nodes.sort(key=lambda n: n["id"])
    return {"last_node_id": max(n.id for n in graph.nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]},
                                                  "info": {"description": graph.description}},
            "version": 0.4}


def outputs(schemas: dict | None = None) -> dict[Path, str]:
    """{path relative to the repository root: file text} for every generated file."""
    schemas = schemas or node_schemas()
    files = {}
    for graph in GRAPHS:
        ui = json.dumps(to_ui(graph, schemas), indent=2) + "\n"
        files[Path("workflows") / "ui" / f"{graph.name}.json"] = ui
        files[Path("workflows") / "api" / f"{graph.name}.json"] = json.dumps(to_api(graph, schemas), indent=2) + "\n"
        files[Path("example_workflows") / f"{graph.name}.json"] = ui
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
