"""Datasets as in-memory uint8 tensors with a fast batched loader (no torchvision needed)."""

from tuneless.data.cifar import load_cifar10
from tuneless.data.fashion_mnist import load_fashion_mnist
from tuneless.data.loader import TensorDataset, TensorLoader, get_dataset

__all__ = ["TensorDataset", "TensorLoader", "get_dataset", "load_cifar10", "load_fashion_mnist"]
