"""Procedural pose-transfer data: textured articulated people rendered in pairs of poses (issue 7).

- `sample_identity(rng)` draws a person (proportions, skin, hair, garments with patterns, backdrop);
- `sample_pose(rng, H, W, identity)` draws an OpenPose-18 pose from a joint-angle prior (views incl. back views);
- `render_figure(identity, pose, H, W, rng)` draws them with numpy (uint8 RGB), textures moving with the body parts;
- `generate_dataset(out_dir, ...)` writes train/test pairs in the DeepFashion PATN layout (PNG images).
"""
from .dataset import GENERATOR_VERSION, SIZES, generate_dataset, image_name  # noqa: F401
from .identity import Identity, Proportions, Texture, sample_identity  # noqa: F401
from .pose_prior import POSE_KINDS, VIEWS, PoseParams, pose_from_params, sample_pose, sample_pose_params  # noqa: F401
from .render import PART_NAMES, render_figure, render_figure_with_labels  # noqa: F401
