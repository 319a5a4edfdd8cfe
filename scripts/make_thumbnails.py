"""Template thumbnails from real runs: each workflow is run through a real, headless ComfyUI host with this checkout
as its custom node pack, and `example_workflows/<template title>.jpg` is composed from the images that run produced.

    python scripts/make_thumbnails.py            # needs REPOSE_COMFY (set by `source scripts/bootstrap.sh comfy`)

Templates that run with the bundled models (RePose 1-3) show source -> result (x4 nearest-neighbour, as on the
canvas). The SD templates need checkpoints that are not bundled: their thumbnail is the pose image their own
Render Pose node draws (the part of the graph that runs without downloads), labelled with what they need.
Re-run it whenever the bundled weights change.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    """A helper module of this repository by its file (workflows/ and tests/comfyui_host/ are not packages)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


build = _load(ROOT / "workflows" / "build.py")
ComfyServer = _load(ROOT / "tests" / "comfyui_host" / "comfy_harness.py").ComfyServer

THUMB_H = 300
# Per workflow: the node titles whose images make the thumbnail, left to right.
SHOW = {
    "repose_pose_transfer": ("Source person (x4 preview)", "Target skeleton",
                             "Result (x4 nearest-neighbour preview)"),
    "repose_pose_from_photo": ("Photo with the target pose (x4 preview)", "Retargeted pose",
                               "Result (x4 nearest-neighbour preview)"),
    "repose_appearance_edit": ("Reference (x4 preview)", "Edited result (x4 nearest-neighbour preview)"),
    "sd_pose_gradient_guidance": ("Target skeleton",),
    "repose_sd_text_and_pose": ("Pose image",),
}
NEEDS = {
    "sd_pose_gradient_guidance": "needs SD 1.5 + HigherHRNet",
    "repose_sd_text_and_pose": "needs SD 2.1-base + HumanSD",
}


def _pose_part(prompt: dict, titles) -> dict:
    """Only the nodes the titled preview nodes depend on (runs without the SD checkpoints)."""
    keep, todo = set(), [k for k, v in prompt.items() if v["_meta"]["title"] in titles]
    while todo:
        k = todo.pop()
        if k not in keep:
            keep.add(k)
            todo += [v[0] for v in prompt[k]["inputs"].values() if isinstance(v, list)]
    return {k: prompt[k] for k in keep}


def compose(images: list[Image.Image], label: str | None) -> Image.Image:
    h = THUMB_H - 40
    scaled = [im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h), Image.NEAREST) for im in images]
    width = sum(im.width for im in scaled) + 20 * (len(scaled) + 1)
    width = max(width, round(THUMB_H * 4 / 3))
    canvas = Image.new("RGB", (width, THUMB_H), (32, 32, 36))
    x = (width - sum(im.width for im in scaled) - 20 * (len(scaled) - 1)) // 2
    for im in scaled:
        canvas.paste(im, (x, 20))
        x += im.width + 20
    if label:
        draw = ImageDraw.Draw(canvas)
        draw.rectangle([0, THUMB_H - 34, width, THUMB_H], fill=(150, 40, 40))
        draw.text((12, THUMB_H - 28), label, fill=(255, 255, 255), font_size=20)
    return canvas


def main() -> int:
    comfy = os.environ.get("REPOSE_COMFY")
    if not comfy:
        print("set REPOSE_COMFY (source scripts/bootstrap.sh comfy)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as work:
        server = ComfyServer(Path(comfy), ROOT, Path(work)).start()
        try:
            for graph in build.GRAPHS:
                prompt = json.loads((ROOT / "workflows" / "api" / f"{graph.name}.json").read_text())
                titles = SHOW[graph.name]
                if graph.name in NEEDS:
                    prompt = _pose_part(prompt, titles)
                entry = server.run_prompt(prompt, timeout=900)
                images = []
                for title in titles:
                    node_id = next(k for k, v in prompt.items() if v["_meta"]["title"] == title)
                    images += [Image.open(p) for p in server.output_images(entry, node_id)][:1]
                out = ROOT / "example_workflows" / f"{graph.title}.jpg"
                compose(images, NEEDS.get(graph.name)).save(out, quality=90)
                print(f"wrote {out.relative_to(ROOT)}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
