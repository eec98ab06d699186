"""Weights in and out: the model zoos' Caffe and torchvision files, fine-tuning, and exports to
ONNX, torchvision, StableHLO and safetensors."""
