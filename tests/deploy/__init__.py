"""Deployment tests: compacted models through ONNX, torch.export and torch.compile."""
