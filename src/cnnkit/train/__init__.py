"""Training: config dataclass, schedules, the loop, checkpoints, metrics."""
from cnnkit.train.config import TrainConfig
from cnnkit.train.trainer import TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "train", "TrainResult", "TrainingDiverged"]
