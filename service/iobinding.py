"""IO binding with buffers allocated once per batch size and reused for every later batch.

``session.run`` allocates the device input, the device outputs and the host outputs on every call.
Here each batch size gets one input and one set of output ``OrtValue`` s on the binding device
(plus the ``IOBinding`` that names them) the first time it is seen; later batches of that size
copy their pixels into the same input buffer and read results from the same output buffers. Only
the host copy of the results is new per batch: results outlive the batch (they are rendered while
the next batch runs), so they must not alias a reused buffer.

One instance is used by one thread at a time (the engine keeps one per in-flight batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


@dataclass
class _Slot:
    binding: ort.IOBinding
    input: ort.OrtValue
    outputs: list[ort.OrtValue]


class BoundBuffers:
    """Runs ``session`` through IO binding on ``device`` (``"cuda"``, or ``"cpu"`` in tests)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        input_name: str,
        output_names: list[str],
        *,
        device: str,
        device_id: int = 0,
    ) -> None:
        self._session = session
        self._input_name = input_name
        self._output_names = output_names
        self._device = device
        self._device_id = device_id
        self._slots: dict[int, _Slot] = {}
        self.allocations = 0
        """How many batch sizes got buffers: grows once per new size, never per call."""
        shapes = {o.name: o.shape for o in session.get_outputs()}
        self._output_shapes = [shapes[name] for name in output_names]
        self._input_shape = next(i.shape for i in session.get_inputs() if i.name == input_name)

    def _allocate(self, batch_size: int) -> _Slot:
        # Output dims past the batch are symbolic in the graph: they are the input's (H, W), so
        # the (B, H, W) map and the (B,) score get their shapes from the input's.
        height, width = int(self._input_shape[1]), int(self._input_shape[2])
        spatial = [height, width]

        def output_shape(rank: int) -> list[int]:
            return [batch_size, *spatial[: rank - 1]]

        device, index = self._device, self._device_id
        new = ort.OrtValue.ortvalue_from_shape_and_type
        inp = new([batch_size, height, width, 3], np.uint8, device, index)
        outs = [
            new(output_shape(len(shape)), np.float32, device, index)
            for shape in self._output_shapes
        ]
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input_name, inp)
        for name, value in zip(self._output_names, outs, strict=True):
            binding.bind_ortvalue_output(name, value)
        self.allocations += 1
        slot = _Slot(binding, inp, outs)
        self._slots[batch_size] = slot
        return slot

    def buffer_addresses(self, batch_size: int) -> list[int]:
        """Device addresses of the buffers bound for ``batch_size`` (to check reuse)."""
        slot = self._slots[batch_size]
        return [slot.input.data_ptr(), *(o.data_ptr() for o in slot.outputs)]

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """uint8 ``(B, H, W, 3)`` → the outputs as fresh host arrays, in ``output_names`` order."""
        slot = self._slots.get(len(images)) or self._allocate(len(images))
        slot.input.update_inplace(np.ascontiguousarray(images))
        self._session.run_with_iobinding(slot.binding)
        # On a GPU, .numpy() copies device → host once into a new array; on the CPU it is a view
        # of the reused buffer, which the next batch would overwrite, so it is copied.
        if self._device == "cpu":
            return [value.numpy().copy() for value in slot.outputs]
        return [value.numpy() for value in slot.outputs]
