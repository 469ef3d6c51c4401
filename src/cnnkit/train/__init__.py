"""Training tasks on the shared run engine: classification and segmentation (`train`, which runs
the task the data set calls for), DDPM, DCGAN; their configs, schedules, metrics and the
learning-rate range test."""
from cnnkit.train.classify import TrainingDiverged, TrainResult
from cnnkit.train.config import TrainConfig


def train(config: TrainConfig, *, log=print):
    """`cnnkit train`: classification, or segmentation for a data set of masks (a resumed run:
    the task its checkpoint records)."""
    from cnnkit.engine.checkpoint import load_checkpoint  # noqa: PLC0415
    from cnnkit.train import classify, segment  # noqa: PLC0415  (segment imports classify)
    task = load_checkpoint(config.resume)["task"] if config.resume else config.task
    if task == "segment":
        return segment.train_segmentation(config, log=log)
    return classify.train(config, log=log)


__all__ = ["TrainConfig", "train", "TrainResult", "TrainingDiverged"]
