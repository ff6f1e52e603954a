package org.tsvllm.frontend;

import java.lang.reflect.Field;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.pytorch.serve.job.Job;
import org.pytorch.serve.util.messages.ModelWorkerResponse;
import org.pytorch.serve.util.messages.Predictions;
import org.pytorch.serve.util.messages.RequestInput;
import org.pytorch.serve.wlm.AsyncBatchAggregator;
import org.pytorch.serve.wlm.BatchAggregator;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.WorkerThread;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Lets TorchServe 0.12's async workers forget a request once its whole reply is sent.
 *
 * <p>{@code AsyncBatchAggregator.sendResponse} removes a job from {@code jobs_in_backend}
 * only when the reply carries {@code ts_stream_next: false}, the last part of a stream. A
 * reply that is not streamed cannot carry it (RestJob would then send the body without a
 * status line), so every non-streamed request stays in that map for good: its job, its
 * body and its channel, the frontend's heap growing with every request served, and every
 * walk over the map ({@link ClientWatch}'s sweep) slower. Each sweep gives a new async
 * worker a {@link Releasing} aggregator that shares the old one's maps and removes a job
 * as soon as its non-streamed reply has gone out.
 */
final class JobRelease {
    private static final Logger logger = LoggerFactory.getLogger(JobRelease.class);

    private final Field aggregator;
    private final Field jobs;
    private final Field inBackend;

    private JobRelease(Field aggregator, Field jobs, Field inBackend) {
        this.aggregator = aggregator;
        this.jobs = jobs;
        this.inBackend = inBackend;
    }

    /** The fix, or null (logged) on a frontend whose internals differ from 0.12.0. */
    static JobRelease create() {
        try {
            Field agg = WorkerThread.class.getDeclaredField("aggregator");
            agg.setAccessible(true);
            Field jobs = BatchAggregator.class.getDeclaredField("jobs");
            jobs.setAccessible(true);
            Field inBackend = AsyncBatchAggregator.class.getDeclaredField("jobs_in_backend");
            inBackend.setAccessible(true);
            return new JobRelease(agg, jobs, inBackend);
        } catch (ReflectiveOperationException | RuntimeException e) {
            logger.warn("tsvllm: non-streamed requests stay in the frontend's memory", e);
            return null;
        }
    }

    void sweep(ModelManager manager) throws ReflectiveOperationException {
        Workers.each(
                manager,
                (model, worker) -> {
                    Object old = aggregator.get(worker);
                    if (old == null || old.getClass() != AsyncBatchAggregator.class) {
                        return; // synchronous, or already ours
                    }
                    Releasing ours = new Releasing(model);
                    jobs.set(ours, jobs.get(old)); // the same maps: nothing is lost or copied
                    inBackend.set(ours, inBackend.get(old));
                    aggregator.set(worker, ours);
                    logger.info(
                            "tsvllm: worker {} forgets each request once its reply is sent",
                            worker.getWorkerId());
                });
    }

    /** An async aggregator that also removes a job whose non-streamed reply was sent. */
    static final class Releasing extends AsyncBatchAggregator {
        Releasing(Model model) {
            super(model);
        }

        @Override
        public boolean sendResponse(ModelWorkerResponse message) {
            List<String> whole = new ArrayList<>();
            if (message.getCode() == 200) {
                for (Predictions prediction : message.getPredictions()) {
                    Map<String, String> headers = prediction.getHeaders();
                    if (headers == null || !headers.containsKey(RequestInput.TS_STREAM_NEXT)) {
                        whole.add(prediction.getRequestId());
                    }
                }
            }
            boolean done = super.sendResponse(message);
            for (String id : whole) {
                Job job = jobs_in_backend.remove(id);
                if (job == null) {
                    logger.debug("tsvllm: request {} had already left", id);
                }
            }
            return done;
        }
    }
}
