"""Export a PSViT to ONNX (FP32/FP16) and verify it against PyTorch."""
