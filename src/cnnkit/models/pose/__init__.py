"""Pose estimation models (task "pose").

Importing this package registers them: `hrnet` (pose_hrnet_w32, pose_hrnet_w48,
pose_hrnet_w16_small), top-down heatmap networks that take a person crop; `openpose`
(openpose_vgg19, openpose_small, openpose_resnet18, openpose_hrnet), bottom-up networks of
confidence maps and part affinity fields that take a whole image. The heatmap codec lives in
`cnnkit.ops.heatmaps`, the fields and their parsing in `cnnkit.ops.paf`.
"""
from cnnkit.models.pose.hrnet import (HighResolutionModule, HighResolutionTrunk, HRNetConfig,
                                      PoseHighResolutionNet)
from cnnkit.models.pose.openpose import OpenPose

__all__ = ["HRNetConfig", "HighResolutionModule", "HighResolutionTrunk", "PoseHighResolutionNet",
           "OpenPose"]
