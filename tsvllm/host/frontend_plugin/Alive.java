package org.tsvllm.frontend;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import org.pytorch.serve.servingsdk.Context;
import org.pytorch.serve.servingsdk.ModelServerEndpoint;
import org.pytorch.serve.servingsdk.annotations.Endpoint;
import org.pytorch.serve.servingsdk.annotations.helpers.EndpointTypes;
import org.pytorch.serve.servingsdk.http.Request;
import org.pytorch.serve.servingsdk.http.Response;

/**
 * {@code GET /alive}: 200 whenever the frontend answers, for liveness probes. ({@code /ping}
 * is 503 while a model loads or its worker restarts, which must not get the container
 * killed.)
 */
@Endpoint(
        urlPattern = "alive",
        endpointType = EndpointTypes.INFERENCE,
        description = "Always Alive while the frontend runs (tsvllm)")
public class Alive extends ModelServerEndpoint {
    private static final byte[] BODY =
            "{\n  \"status\": \"Alive\"\n}\n".getBytes(StandardCharsets.UTF_8);

    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        rsp.setStatus(200);
        rsp.setHeader("Content-Type", "application/json");
        rsp.getOutputStream().write(BODY);
    }
}
