"""nn.Modules shared by all models."""
from cnnkit.layers.attention import Attention, attend
from cnnkit.layers.conv_norm_act import ConvNormAct, get_act, get_norm
from cnnkit.layers.drop_path import DropPath, drop_path
from cnnkit.layers.init import init_cnn_, normal_linear
from cnnkit.layers.residual import DilatedConvStack, ResidualBlock
from cnnkit.layers.squeeze_excite import SqueezeExcitation, make_divisible
from cnnkit.layers.sync_batchnorm import GlobalBatchNorm, convert_to_global_batchnorm
from cnnkit.layers.transformer import (TORCHVISION_MLP_NAMES, Mlp, MultiheadSelfAttention,
                                       PatchEmbed, check_image_size, init_trunc_normal_)

__all__ = ["Attention", "attend", "ConvNormAct", "get_act", "get_norm", "DropPath", "drop_path",
           "init_cnn_", "normal_linear", "DilatedConvStack", "ResidualBlock", "SqueezeExcitation",
           "make_divisible", "TORCHVISION_MLP_NAMES", "Mlp", "MultiheadSelfAttention", "PatchEmbed",
           "check_image_size", "init_trunc_normal_"]
