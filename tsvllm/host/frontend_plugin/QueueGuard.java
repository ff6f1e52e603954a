package org.tsvllm.frontend;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonNull;
import com.google.gson.JsonObject;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingDeque;
import org.pytorch.serve.job.Job;
import org.pytorch.serve.job.RestJob;
import org.pytorch.serve.util.messages.WorkerCommands;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.ModelVersionedRefs;
import org.pytorch.serve.wlm.WorkerState;
import org.pytorch.serve.wlm.WorkerThread;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Answers the requests queued for a model that has no READY worker with a 503 in OpenAI's
 * error shape and {@code Retry-After}, instead of leaving them waiting.
 *
 * <p>TorchServe 0.12 refuses a request only when a model has no worker at all
 * (ModelManager.addJob); while its workers load the model (at start, after a restart, or
 * for good once TorchServe stops retrying a worker whose load fails) a request waits in
 * the model's queue (Model.jobsDb) with no answer and no bound. tsvllm's worker reports
 * its load done only once the engine serves, which can take minutes.
 *
 * <p>Only plain HTTP inference requests that have sent nothing yet are answered here; a
 * stream TorchServe put back into the queue after its first chunks is left as it is.
 */
final class QueueGuard {
    private static final Logger logger = LoggerFactory.getLogger(QueueGuard.class);
    /** seconds a client should wait before it retries (tsvllm.drain.RETRY_AFTER_S) */
    private static final String RETRY_AFTER_S = "5";
    /** OpenAI's error body has "param": null */
    private static final Gson GSON = new GsonBuilder().serializeNulls().create();

    private final Field jobsDb;
    private final Field numStreams;

    private QueueGuard(Field jobsDb, Field numStreams) {
        this.jobsDb = jobsDb;
        this.numStreams = numStreams;
    }

    /** The guard, or null (logged) on a frontend whose internals differ from 0.12.0. */
    static QueueGuard create() {
        try {
            Field jobs = Model.class.getDeclaredField("jobsDb");
            jobs.setAccessible(true);
            Field streams = RestJob.class.getDeclaredField("numStreams");
            streams.setAccessible(true);
            return new QueueGuard(jobs, streams);
        } catch (ReflectiveOperationException | RuntimeException e) {
            logger.warn("tsvllm: requests for a loading model wait in TorchServe's queue", e);
            return null;
        }
    }

    void sweep(ModelManager manager) throws ReflectiveOperationException {
        for (Map.Entry<String, ModelVersionedRefs> entry : manager.getAllModels()) {
            for (Map.Entry<String, Model> version : entry.getValue().getAllVersions()) {
                Model model = version.getValue();
                if (!hasReadyWorker(manager, model)) {
                    answerQueued(model, entry.getKey(), version.getKey());
                }
            }
        }
    }

    private static boolean hasReadyWorker(ModelManager manager, Model model) {
        for (WorkerThread worker : manager.getWorkers(model.getModelVersionName())) {
            if (worker.getState() == WorkerState.WORKER_MODEL_LOADED) {
                return true;
            }
        }
        return false;
    }

    @SuppressWarnings("unchecked")
    private void answerQueued(Model model, String name, String version)
            throws ReflectiveOperationException {
        Map<String, BlockingDeque<Job>> queues = (Map<String, BlockingDeque<Job>>) jobsDb.get(model);
        BlockingDeque<Job> queue = queues.get(Model.DEFAULT_DATA_QUEUE);
        if (queue == null || queue.isEmpty()) {
            return;
        }
        List<Job> keep = new ArrayList<>();
        Job job;
        int answered = 0;
        while ((job = queue.pollFirst()) != null) { // a worker that takes it first serves it
            if (job instanceof RestJob
                    && job.getCmd() == WorkerCommands.PREDICT
                    && numStreams.getInt(job) == 0) {
                job.setScheduled();
                job.response(body(name, version), "application/json", 503, null, headers());
                answered += 1;
            } else {
                keep.add(job);
            }
        }
        for (int i = keep.size() - 1; i >= 0; i--) {
            queue.addFirst(keep.get(i)); // in their order, ahead of newer ones
        }
        if (answered == 0) {
            return;
        }
        logger.info(
                "tsvllm: answered {} request(s) for {} {} with 503: no READY worker",
                answered,
                name,
                version);
    }

    private static Map<String, String> headers() {
        return Map.of("Retry-After", RETRY_AFTER_S);
    }

    private static byte[] body(String name, String version) {
        JsonObject error = new JsonObject();
        error.addProperty(
                "message",
                "model \""
                        + name
                        + "\" version "
                        + version
                        + " has no READY worker: its worker is loading the model (the engine"
                        + " is starting) or restarting; retry in a few seconds");
        error.addProperty("type", "ServiceUnavailableError");
        error.add("param", JsonNull.INSTANCE);
        error.addProperty("code", 503);
        JsonObject body = new JsonObject();
        body.add("error", error);
        return GSON.toJson(body).getBytes(StandardCharsets.UTF_8);
    }
}
