"""Why TorchServe stopped during its start: read from its output, named in the error."""

from __future__ import annotations

from tsvllm.host.torchserve import TorchServe

BIND_FAILURE = """\
2026-12-07T17:46:57,402 [INFO ] main org.pytorch.serve.ModelServer - Initialize Inference server
2026-12-07T17:46:59,457 [INFO ] main org.pytorch.serve.ModelServer - Torchserve stopped.
java.io.IOException: Failed to bind to address: http://127.0.0.1:8080
\tat org.pytorch.serve.ModelServer.initializeServer(ModelServer.java:354)
Caused by: io.netty.channel.unix.Errors$NativeIoException: bind(..) failed: Address already in use
java.lang.InterruptedException: null
"""


def test_a_failed_start_names_its_exception(tmp_path):
    ts = TorchServe(workdir=tmp_path, model_store=tmp_path, models=[])
    ts.log_path.write_text(BIND_FAILURE)
    assert ts.exit_reason() == (
        "java.io.IOException: Failed to bind to address: http://127.0.0.1:8080; "
        "Caused by: io.netty.channel.unix.Errors$NativeIoException: bind(..) failed: "
        "Address already in use"
    )


def test_no_output_no_reason(tmp_path):
    ts = TorchServe(workdir=tmp_path, model_store=tmp_path, models=[])
    assert ts.exit_reason() == ""
    ts.log_path.write_text("Torchserve stopped.\n")
    assert ts.exit_reason() == ""
