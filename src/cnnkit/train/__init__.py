"""Training tasks on the shared run engine: classification (`train`), DDPM, DCGAN; their configs,
schedules, metrics and the learning-rate range test."""
from cnnkit.train.classify import TrainingDiverged, TrainResult, train
from cnnkit.train.config import TrainConfig

__all__ = ["TrainConfig", "train", "TrainResult", "TrainingDiverged"]
