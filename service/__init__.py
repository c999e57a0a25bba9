"""The rdad inference service: FastAPI over ONNX Runtime (or OpenVINO) with dynamic batching.

Torch-free by design (a test proves it). Entry points: :func:`rdad.service.app.create_app` and
``rdad serve``. A request's path: ``server`` (uvicorn, header deadline) → ``middleware`` (body
size and read deadline, API key, metrics) → ``routes/predict`` (admission by images and upload
bytes, the multipart body as it streams) → ``scoring`` (the one flow: ``plan`` → ``decode`` →
``batcher`` → ``engine`` → merge → ``render`` → ``verdict``), held in the ``memory`` budget and the
model's ``admission``. Models: ``model_folder`` (the folder scan) → ``model_repository`` (loading,
polling, reload, draining) → ``model_version`` (one loaded version: engine, batcher, admission,
scorer). ``errors`` gives each domain failure its status, ``http_errors`` answers it. Several
processes on one port (``rdad serve --workers N``): ``workers`` (the supervisor) → ``run_dir``
(what they share) → ``worker_metrics`` (one ``/metrics`` for all) and ``reload_requests``.
"""
