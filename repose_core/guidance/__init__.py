"""Gradient guidance from Pose Interaction Fields (paper Sec. 3.3-3.4, eq. 10-17).

energies    heatmap mask W_h, feature energy (eq. 11), keypoint energy for inference
targets     Pose / keypoints -> COCO-17 -> Gaussian heatmaps
config      GuidanceConfig: every guidance setting and its one set of defaults
hook        PoseGuidance (the sampler's x0_hook), guide_denoised (k-diffusion / ComfyUI x̂0)
training    guided_eps_target (eq. 3 + 15 as a modified ε target)
latent_rgb  LatentRGBApprox, a cheap differentiable latent -> RGB decoder
"""
from .energies import feature_energy, heatmap_mask, keypoint_energy, reference_features  # noqa: F401
from .config import GuidanceConfig  # noqa: F401
from .hook import CHEAP_WINDOW, PoseGuidance, guide_denoised, resize_longer_side  # noqa: F401
from .latent_rgb import LatentRGBApprox  # noqa: F401
from .targets import KeypointTarget, gaussian_heatmaps, pose_to_coco17  # noqa: F401
from .training import guided_eps_target  # noqa: F401
