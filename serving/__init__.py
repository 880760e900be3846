"""Serving: TorchServe as a child process (`torchserve_process`), the proxy that speaks the product's HTTP API
(`app`), and a helper for TorchServe's management API (`manage`). `client_infer.py` wires them together."""
