"""Export trained twins as ONNX graphs with a checksummed manifest."""
