"""PyTorch side of rdad: teacher, OCBE, student, loss, anomaly map, data, trainer, calibration,
evaluation and ONNX export. Never imports FastAPI.

This ``__init__`` imports nothing on purpose: the service imports torch-free helpers from the top
level ``rdad`` package only, and ``import rdad.model.metrics`` must not pull in torch.
"""
