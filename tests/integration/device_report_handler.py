"""Test handler: VLLMHandler whose engine only reports the GPUs the handler gave it.

No vLLM: ``build_engine`` returns a tiny engine whose ``/v1/models`` answer carries this
worker's pid, TorchServe's ``gpu_id`` and the ``CUDA_VISIBLE_DEVICES`` the handler set. With
``DEVICE_REPORT_DIR`` set, every worker also writes that report (or why its GPUs could not
be placed) to ``<dir>/<model>-<pid>.json`` at initialize, so a test sees every worker.
"""

import json
import os
from pathlib import Path

from tsvllm import VLLMHandler
from tsvllm.errors import BadRequest


def _device_engine(report):
    # defined in a function: TorchServe wants exactly one class at module level
    class DeviceReportEngine:
        dead = False

        async def generate(self, api, body, *, request_id):
            raise BadRequest("this test engine only answers /v1/models")

        async def abort(self, request_id):
            return None

        async def models(self):
            return {"object": "list", "data": [{"id": "devices", "object": "model", **report}]}

        async def health(self):
            return None

        def running_requests(self):
            return 0

        def shutdown(self):
            return None

    return DeviceReportEngine()


class DeviceReportHandler(VLLMHandler):
    def initialize(self, context):
        self.ts_gpu_id = context.system_properties.get("gpu_id")
        self.ts_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        super().initialize(context)
        directory = os.environ.get("DEVICE_REPORT_DIR")
        if directory:
            path = Path(directory) / f"{context.model_name}-{os.getpid()}.json"
            path.write_text(json.dumps(self.report()))

    def report(self):
        error = self.placement_error
        return {
            "pid": os.getpid(),
            "gpu_id": self.ts_gpu_id,
            "torchserve_visible": self.ts_visible,
            "devices": None if error else os.environ.get("CUDA_VISIBLE_DEVICES"),
            "error": None if error is None else str(error),
        }

    async def build_engine(self, *, model_dir):
        return _device_engine(self.report())
