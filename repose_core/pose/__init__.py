"""Pose toolkit: keypoint sets, file formats, renderers and geometry."""
from .formats import (  # noqa: F401
    from_pose_keypoint, load_pose_file, read_gfla_pairs, read_gfla_pose, read_humansd_npz, read_openpose_json,
    read_patn_annotations, read_patn_pairs, to_pose_keypoint, write_gfla_pairs, write_gfla_pose, write_humansd_npz,
    write_openpose_json, write_patn_annotations, write_patn_pairs,
)
from .geometry import (  # noqa: F401
    crop_pose, fit_params, fit_to_canvas, hflip_pose, resize_image, resize_pose, retarget_pose, transform_pose,
)
from .keypoints import (  # noqa: F401
    COCO17, COCO17_LIMBS, LAYOUTS, MIRROR, OPENPOSE18, OPENPOSE18_LIMBS, OPENPOSE25, Pose, PoseFrame,
    body25_to_openpose18, coco17_to_openpose18, openpose18_to_coco17, to_layout,
)
from .render import (  # noqa: F401
    HUMANSD_COLORS, OPENPOSE_COLORS, PIDM_CHANNELS, gaussian_heatmaps_torch, hls_palette, l1_distance_transform,
    render_heatmaps, render_humansd, render_openpose, render_pidm_pose_map,
)
from .validate import check_pose_plausible, validate_pose  # noqa: F401
