"""Model zoo: small reference networks with named, standard layers (fx-traceable)."""

from shrinkage.zoo.convnet import ConvNet
from shrinkage.zoo.lenet import LeNet
from shrinkage.zoo.mlp import MLP
from shrinkage.zoo.registry import MODELS, ModelSpec, build_model
from shrinkage.zoo.resnet_cifar import BasicBlock, CifarResNet, resnet20, resnet32, resnet56

__all__ = [
    "MODELS",
    "MLP",
    "BasicBlock",
    "CifarResNet",
    "ConvNet",
    "LeNet",
    "ModelSpec",
    "build_model",
    "resnet20",
    "resnet32",
    "resnet56",
]
