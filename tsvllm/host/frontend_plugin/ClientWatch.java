package org.tsvllm.frontend;

import java.io.IOException;
import java.lang.reflect.Field;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.pytorch.serve.job.Job;
import org.pytorch.serve.job.RestJob;
import org.pytorch.serve.wlm.AsyncBatchAggregator;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.ModelVersionedRefs;
import org.pytorch.serve.wlm.WorkerThread;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Tells a worker that the client of one of its requests has gone, so that it stops the
 * generation (vLLM's own server aborts a request whose client disconnects).
 *
 * <p>TorchServe 0.12 never tells the worker: a request stays in its async aggregator's
 * {@code jobs_in_backend} until the worker replies, whatever its client did. Each sweep
 * looks at those jobs ({@code RestJob.isOpen()}: the client's channel) and, for one whose
 * client has closed the connection, creates the file {@code <TSVLLM_CONTROL_DIR>/gone/<id>}
 * (the id is the request id the worker sees); the worker polls that folder with the drain
 * files and ends the request. The file is removed once the job has left the backend.
 */
final class ClientWatch {
    private static final Logger logger = LoggerFactory.getLogger(ClientWatch.class);

    private final Field aggregator;
    private final Field inBackend;
    private final Path gone;
    private final Set<String> told = new HashSet<>();

    private ClientWatch(Field aggregator, Field inBackend, Path gone) {
        this.aggregator = aggregator;
        this.inBackend = inBackend;
        this.gone = gone;
    }

    /** The watch, or null (logged) without a control folder or on another frontend. */
    static ClientWatch create() {
        String control = System.getenv("TSVLLM_CONTROL_DIR");
        if (control == null || control.isEmpty()) {
            logger.info("tsvllm: no TSVLLM_CONTROL_DIR: a request whose client left runs on");
            return null;
        }
        try {
            Field agg = WorkerThread.class.getDeclaredField("aggregator");
            agg.setAccessible(true);
            Field jobs = AsyncBatchAggregator.class.getDeclaredField("jobs_in_backend");
            jobs.setAccessible(true);
            Path dir = Paths.get(control, "gone");
            Files.createDirectories(dir);
            return new ClientWatch(agg, jobs, dir);
        } catch (ReflectiveOperationException | IOException | RuntimeException e) {
            logger.warn("tsvllm: a request whose client left runs on", e);
            return null;
        }
    }

    @SuppressWarnings("unchecked")
    void sweep(ModelManager manager) throws ReflectiveOperationException {
        Set<String> closed = new HashSet<>();
        boolean complete = true;
        for (Map.Entry<String, ModelVersionedRefs> entry : manager.getAllModels()) {
            for (Map.Entry<String, Model> version : entry.getValue().getAllVersions()) {
                Model model = version.getValue();
                for (WorkerThread worker : manager.getWorkers(model.getModelVersionName())) {
                    Object agg = aggregator.get(worker);
                    if (!(agg instanceof AsyncBatchAggregator)) {
                        continue;
                    }
                    List<Job> jobs;
                    try { // the worker's threads change this map as we read it
                        jobs = new ArrayList<>(((Map<String, Job>) inBackend.get(agg)).values());
                    } catch (RuntimeException e) {
                        complete = false; // read again at the next sweep
                        continue;
                    }
                    for (Job job : jobs) {
                        if (job instanceof RestJob && !job.isOpen()) {
                            closed.add(job.getJobId());
                        }
                    }
                }
            }
        }
        for (String id : closed) {
            if (told.add(id)) {
                touch(id);
            }
        }
        if (complete) {
            for (String id : new ArrayList<>(told)) {
                if (!closed.contains(id)) { // answered or ended: no longer in the backend
                    told.remove(id);
                    remove(id);
                }
            }
        }
    }

    private void touch(String id) {
        try {
            Files.write(gone.resolve(id), new byte[0]);
            logger.info("tsvllm: the client of request {} has gone; its worker ends it", id);
        } catch (IOException e) {
            logger.warn("tsvllm: could not mark request {} as gone", id, e);
        }
    }

    private void remove(String id) {
        try {
            Files.deleteIfExists(gone.resolve(id));
        } catch (IOException e) {
            logger.warn("tsvllm: could not remove the mark of request {}", id, e);
        }
    }
}
