"""A standing person in OpenPose-18 order on PIDM's 176x256 canvas: the pose the pose-format, rendering and
geometry tests share (import it as `from sample_poses import ...`; pytest puts tests/ on the import path)."""
from __future__ import annotations

import numpy as np

from repose_core.pose import Pose

STANDING = {0: (88, 40), 1: (88, 70), 2: (60, 72), 3: (50, 110), 4: (45, 150), 5: (116, 72), 6: (126, 110),
            7: (131, 150), 8: (70, 140), 9: (68, 190), 10: (66, 240), 11: (106, 140), 12: (108, 190),
            13: (110, 240), 14: (80, 35), 15: (96, 35), 16: (72, 40), 17: (104, 40)}


def standing_pose(width=176, height=256, missing=()):
    """STANDING scaled to a width x height canvas; joints in `missing` are absent (confidence 0)."""
    kp = np.zeros((18, 3), np.float32)
    for j, (x, y) in STANDING.items():
        if j not in missing:
            kp[j] = (x * width / 176, y * height / 256, 1.0)
    return Pose(kp, width, height)
