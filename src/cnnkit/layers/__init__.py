"""nn.Modules shared by all models."""
from cnnkit.layers.conv_norm_act import ConvNormAct, get_act, get_norm
from cnnkit.layers.drop_path import DropPath, drop_path

__all__ = ["ConvNormAct", "get_act", "get_norm", "DropPath", "drop_path"]
