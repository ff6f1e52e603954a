package org.tsvllm.frontend;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Map;
import org.pytorch.serve.servingsdk.Context;
import org.pytorch.serve.servingsdk.ModelServerEndpoint;
import org.pytorch.serve.servingsdk.annotations.Endpoint;
import org.pytorch.serve.servingsdk.annotations.helpers.EndpointTypes;
import org.pytorch.serve.servingsdk.http.Request;
import org.pytorch.serve.servingsdk.http.Response;
import org.pytorch.serve.util.JsonUtils;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.ModelVersionedRefs;
import org.pytorch.serve.wlm.WorkerState;
import org.pytorch.serve.wlm.WorkerThread;

/**
 * {@code GET /ping} that tells the truth: Healthy (200) only when every model that should
 * have workers has at least one READY worker, i.e. the next request to it is served.
 *
 * <p>TorchServe 0.12's own {@code /ping} counts a worker as healthy from the moment its
 * process starts, while it still loads the model (ApiUtils.isModelHealthy,
 * WorkerThread.isHealthy). tsvllm's worker reports the model loaded only once the engine
 * serves, so READY (WorkerState.WORKER_MODEL_LOADED) is the signal to use.
 *
 * <p>Loading this plugin also starts {@link Sweeper}.
 */
@Endpoint(
        urlPattern = "ping",
        endpointType = EndpointTypes.INFERENCE,
        description = "Healthy only when every model has a READY worker (tsvllm)")
public class ReadyPing extends ModelServerEndpoint {

    public ReadyPing() {
        Sweeper.start();
    }

    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        JsonArray waiting = new JsonArray();
        ModelManager manager = ModelManager.getInstance();
        for (Map.Entry<String, ModelVersionedRefs> entry : manager.getAllModels()) {
            Model model = entry.getValue().getDefaultModel();
            if (model == null || model.getMinWorkers() == 0) {
                continue; // scaled to zero on purpose: nothing to wait for
            }
            int ready = 0;
            int workers = 0;
            for (WorkerThread worker : manager.getWorkers(model.getModelVersionName())) {
                workers += 1;
                if (worker.getState() == WorkerState.WORKER_MODEL_LOADED) {
                    ready += 1;
                }
            }
            if (ready == 0) {
                JsonObject item = new JsonObject();
                item.addProperty("model", entry.getKey());
                item.addProperty("workers", workers);
                item.addProperty("ready", ready);
                waiting.add(item);
            }
        }
        JsonObject body = new JsonObject();
        if (waiting.size() == 0) {
            body.addProperty("status", "Healthy");
            rsp.setStatus(200);
        } else {
            body.addProperty("status", "Unhealthy");
            body.addProperty("reason", "a model has no READY worker yet (loading or restarting)");
            body.add("models", waiting);
            rsp.setStatus(503, "Service Unavailable");
        }
        rsp.setHeader("Content-Type", "application/json");
        String text = JsonUtils.GSON_PRETTY.toJson(body) + "\n";
        rsp.getOutputStream().write(text.getBytes(StandardCharsets.UTF_8));
    }

    @Override
    public void doPost(Request req, Response rsp, Context ctx) throws IOException {
        doGet(req, rsp, ctx); // TorchServe's own /ping answers POST too
    }
}
