"""rdad: industrial visual anomaly detection with Reverse Distillation.

This package holds what both sides of the product share and nothing heavy: the version, the ONNX
metadata schema (:mod:`rdad.metadata`), torch-free image decoding (:mod:`rdad.imaging`) and the
command line (:mod:`rdad.cli`). Importing it never imports torch or FastAPI.
"""

__version__ = "0.1.0"
