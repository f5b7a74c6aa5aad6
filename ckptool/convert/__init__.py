"""Writers: safetensors and torch zip (streamed, torch-free), ONNX export (torch + parity)."""
