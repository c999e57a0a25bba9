"""The rdad inference service: FastAPI over ONNX Runtime with dynamic batching.

Torch-free by design (a test proves it). Entry points: :func:`rdad.service.app.create_app` and
``rdad serve``. Module map: settings → engine (ORT sessions) → batcher → pipeline (decode, infer,
render) → routes; errors maps domain failures to HTTP; metrics holds the Prometheus registry.
"""
