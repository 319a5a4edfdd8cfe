"""Batch pose transfer with a trained RePoseDM: test-set generation for eval.py, or data augmentation.

    # every test pair of a dataset -> <out>/<source stem>_2_<target stem>.png (what train/eval.py reads)
    python train/generate.py --model runs/b2/ema.safetensors --data-root data/deepfashion --layout patn --out gen/
    # a list of (source image, target pose) -> a new dataset in the PATN layout (augmentation data)
    python train/generate.py --model runs/b2/ema.safetensors --list jobs.json --out aug/ --split train
    # several GPUs: each torchrun rank takes every world_size-th item
    torchrun --nproc-per-node 8 train/generate.py ...

--list is a JSON list of {"source": image path, "pose": pose file (any format repose_core.pose.load_pose_file reads:
POSE_KEYPOINT/OpenPose .json, GFLA .txt, HumanSD .npz), "name": output file name (optional)}; relative paths are
relative to the list file. Its output is `<out>/<split>_highres/<name>.png` + `fasion-resize-annotation-<split>.csv`
(the target poses in the generated image's frame) + `fasion-resize-pairs-<split>.csv` (every ordered pair of images
generated from the same source) + `dataset.json` (frame size, name -> source), so the result loads with
`--layout patn` like the synthetic or the CFLD data. Existing outputs are kept (--overwrite replaces them), so an
interrupted run continues where it stopped.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from repose_core.checkpoint import load_model
from repose_core.models.repose import as_repose_model
from repose_core.transfer_ops import final_timestep_of
from train.data import LAYOUTS, load_records, read_image, to_tensor_pm1
from repose_core.errors import InputError
from repose_core.pose import (
    load_pose_file, render_openpose, render_pidm_pose_map, resize_image, resize_pose, write_patn_annotations,
    write_patn_pairs,
)
from train.common import (
    cleanup_distributed, parse_options, run_script, setup_distributed, setup_logging,
)
from train.eval import generated_name
from train.sampling import load_codec, model_diffusion, transfer

log = logging.getLogger("repose")


@dataclass
class GenerateOptions:
    model: str = field(default="", metadata={"help": "repose_dm safetensors (ema.safetensors of a run)"})
    vae: str = field(default="", metadata={"help": "diffusers AutoencoderKL folder, for latent (sd_vae) models"})
    data_root: str = field(default="", metadata={"help": "dataset whose pairs to generate (mode 1)"})
    layout: str = field(default="patn", metadata={"help": "dataset layout", "choices": LAYOUTS})
    split: str = field(default="test", metadata={"help": "pairs split (mode 1) / output split name (mode 2)"})
    image_dir: str = field(default="", metadata={"help": "override the dataset image folder"})
    list: str = field(default="", metadata={"help": "JSON list of {source, pose, name} (mode 2)"})
    size: tuple = field(default=(0, 0), metadata={"help": "generation size H W (default: the model's)"})
    steps: int = field(default=50, metadata={"help": "DDIM steps"})
    cfg_scale: float = field(default=-1.0, metadata={"help": "classifier-free guidance w; -1 = the model's "
                                                            "(config cfg_scale; paper/PIDM: 2)"})
    final_timestep: int = field(default=-1, metadata={"help": "last timestep evaluated, its x̂0 the result; -1 = the "
                                                          "model's (config final_timestep), 0 = the whole trajectory"})
    batch_size: int = field(default=8, metadata={"help": "images per forward"})
    seed: int = field(default=0, metadata={"help": "noise seed (item i uses seed + i: shard-independent)"})
    overwrite: bool = field(default=False, metadata={"help": "regenerate existing outputs"})
    device: str = field(default="auto", metadata={"help": "auto | cuda | cpu"})
    out: str = field(default="generated", metadata={"help": "output folder"})


@dataclass
class Job:
    source: str
    pose: object          # target Pose on any canvas; stretched to the output size
    out_name: str


def dataset_jobs(opts: GenerateOptions) -> list[Job]:
    records = load_records(opts.data_root, opts.layout, opts.split, image_dir=opts.image_dir or None)
    jobs = []
    for rec in records:
        h, w = read_image(rec.target).shape[:2]
        jobs.append(Job(rec.sources[0], rec.target_pose.load(h, w), generated_name(rec.sources[0], rec.target)))
    return jobs


def list_jobs(opts: GenerateOptions) -> list[Job]:
    path = Path(opts.list)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"--list {path}: cannot read a JSON list of {{source, pose, name}} ({e})") from None
    if not isinstance(entries, list):
        raise InputError(f"--list {path}: expected a JSON list of {{source, pose, name}}")
    jobs = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "source" not in e or "pose" not in e:
            raise InputError(f"--list {path} entry {i}: needs 'source' and 'pose', got {e!r:.100}")
        frames = load_pose_file(path.parent / e["pose"])
        if not frames or not frames[0].people:
            raise InputError(f"--list {path} entry {i}: pose file {e['pose']} holds no person")
        name = e.get("name") or f"gen_{i:06d}_{Path(e['source']).stem}.png"
        jobs.append(Job(str(path.parent / e["source"]), frames[0].people[0], name if name.endswith(".png")
                        else name + ".png"))
    return jobs


def main(argv=None) -> int:
    opts = parse_options(GenerateOptions, argv, __doc__.splitlines()[0])
    dist = setup_distributed(opts.device)
    setup_logging(dist.master)
    if not opts.model or not (opts.data_root or opts.list):
        raise InputError("--model and one of --data-root (test pairs) or --list (jobs file) are required")
    model = as_repose_model(load_model(opts.model, device=dist.device)).eval()   # repose_dm, or a converted PIDM
    load_codec(model, opts.vae).to(dist.device)                      # latent models: the VAE, on the model
    diffusion = model_diffusion(model)
    cfg_scale = float(model.config.cfg_scale if opts.cfg_scale < 0 else opts.cfg_scale)
    final_t = final_timestep_of(model.config, opts.final_timestep)       # -1 = the model's
    H, W = (int(v) for v in opts.size) if all(opts.size) else model.config.image_size
    render = render_pidm_pose_map if model.config.pose_encoding == "pidm20" else render_openpose
    jobs = dataset_jobs(opts) if opts.data_root else list_jobs(opts)
    out = Path(opts.out)
    image_dir = out / f"{opts.split}_highres" if opts.list else out
    image_dir.mkdir(parents=True, exist_ok=True)

    mine = list(range(dist.rank, len(jobs), dist.world))            # shard: every world-th item
    todo = [i for i in mine if opts.overwrite or not (image_dir / jobs[i].out_name).exists()]
    log.info("rank %d: %d of %d items to generate (%d already done)", dist.rank, len(todo), len(mine),
             len(mine) - len(todo))
    from tqdm import tqdm
    for start in tqdm(range(0, len(todo), opts.batch_size), disable=not dist.master, desc="generate"):
        idx = todo[start:start + opts.batch_size]
        sources = torch.stack([to_tensor_pm1(resize_image(read_image(jobs[i].source), H, W)) for i in idx])
        poses = [resize_pose(jobs[i].pose, W, H) for i in idx]
        pose_pixels = torch.stack([torch.from_numpy(render(p, H, W)).permute(2, 0, 1) for p in poses])
        images = []
        for k, i in enumerate(idx):       # per-item seed: the output does not depend on batching or sharding
            gen = torch.Generator().manual_seed(opts.seed + i)
            img, _ = transfer(model, diffusion, sources[k:k + 1].to(dist.device),
                              pose_pixels[k:k + 1].to(dist.device), steps=opts.steps, cfg_scale=cfg_scale,
                              generator=gen, final_timestep=final_t)
            images.append(img[0])
        for i, img in zip(idx, images):
            arr = ((img.float().cpu().permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
            tmp = image_dir / f".{jobs[i].out_name}.tmp.png"
            Image.fromarray(arr).save(tmp)
            tmp.replace(image_dir / jobs[i].out_name)              # never a half-written image
    if dist.enabled:
        torch.distributed.barrier()
    if opts.list and dist.master:
        poses = {j.out_name: resize_pose(j.pose, W, H) for j in jobs}
        write_patn_annotations(out / f"fasion-resize-annotation-{opts.split}.csv", poses)
        by_source: dict[str, list[str]] = {}
        for j in jobs:
            by_source.setdefault(j.source, []).append(j.out_name)
        write_patn_pairs(out / f"fasion-resize-pairs-{opts.split}.csv",
                         [(a, b) for names in by_source.values() for a in names for b in names if a != b])
        (out / "dataset.json").write_text(json.dumps({
            "format": "repose-generated", "model": str(opts.model), "size": {"height": H, "width": W},
            "steps": opts.steps, "cfg_scale": cfg_scale, "final_timestep": final_t, "seed": opts.seed,
            "items": {j.out_name: j.source for j in jobs}}, indent=2) + "\n", encoding="utf-8")
    cleanup_distributed(dist)
    return 0


if __name__ == "__main__":
    run_script(main)
