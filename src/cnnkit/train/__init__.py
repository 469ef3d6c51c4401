"""Training tasks on the shared run engine: classification, segmentation, detection and pose (`train`,
which runs the task the data set calls for), DDPM, DCGAN; their configs, schedules, metrics and the
learning-rate range test."""
from cnnkit.train.classify import TrainingDiverged, TrainResult
from cnnkit.train.config import TrainConfig


def train(config: TrainConfig, *, log=print):
    """`cnnkit train`: classification, segmentation for a data set of masks, detection for one of
    boxes, pose for one of joints (a resumed run: the task its checkpoint records)."""
    from cnnkit.engine.checkpoint import load_checkpoint  # noqa: PLC0415
    task = load_checkpoint(config.resume)["task"] if config.resume else config.task
    if task == "translate":
        from cnnkit.utils import CnnkitError  # noqa: PLC0415
        raise CnnkitError(f"{config.dataset} is two unpaired domains for image translation: "
                          f"train on it with `cnnkit cyclegan train --dataset {config.dataset}`")
    if task == "segment":
        from cnnkit.train.segment import train_segmentation  # noqa: PLC0415
        return train_segmentation(config, log=log)
    if task == "detect":
        from cnnkit.train.detect import train_detection  # noqa: PLC0415
        return train_detection(config, log=log)
    if task == "pose":
        from cnnkit.train.pose import train_pose  # noqa: PLC0415
        return train_pose(config, log=log)
    from cnnkit.train import classify  # noqa: PLC0415
    return classify.train(config, log=log)


__all__ = ["TrainConfig", "train", "TrainResult", "TrainingDiverged"]
