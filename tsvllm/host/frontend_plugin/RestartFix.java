package org.tsvllm.frontend;

import java.lang.reflect.Field;
import org.pytorch.serve.wlm.AsyncWorkerThread;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.WorkerState;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Lets TorchServe 0.12 restart an async worker properly.
 *
 * <p>AsyncWorkerThread sets {@code loadingFinished} when its first model load succeeds and
 * never clears it. When the worker process dies, TorchServe restarts it by running the same
 * AsyncWorkerThread object again (WorkerThread.retry), so the restarted worker (a) does not
 * wait for its LOAD reply: a request queued meanwhile is batched together with the LOAD job
 * and the worker is killed with "IllegalStateException: Received more than 1 control
 * command", again and again under traffic; and (b) never becomes READY: the management API
 * shows it UNLOADING for good, even while it serves.
 *
 * <p>Each sweep clears {@code loadingFinished} on every async worker that TorchServe has
 * marked STOPPED (it retries no sooner than 1 s later, WorkerThread.BACK_OFF), so each
 * restart loads like the first start did.
 */
final class RestartFix {
    private static final Logger logger = LoggerFactory.getLogger(RestartFix.class);

    private final Field loadingFinished;

    private RestartFix(Field loadingFinished) {
        this.loadingFinished = loadingFinished;
    }

    /** The fix, or null (logged) on a frontend whose internals differ from 0.12.0. */
    static RestartFix create() {
        try {
            Field field = AsyncWorkerThread.class.getDeclaredField("loadingFinished");
            field.setAccessible(true);
            return new RestartFix(field);
        } catch (ReflectiveOperationException | RuntimeException e) {
            logger.warn("tsvllm: async worker restarts are left as TorchServe does them", e);
            return null;
        }
    }

    void sweep(ModelManager manager) throws ReflectiveOperationException {
        Workers.each(
                manager,
                (model, worker) -> {
                    if (worker instanceof AsyncWorkerThread
                            && worker.getState() == WorkerState.WORKER_STOPPED
                            && loadingFinished.getBoolean(worker)) {
                        loadingFinished.setBoolean(worker, false);
                        logger.info(
                                "tsvllm: worker {} stopped; its restart will wait for its model load",
                                worker.getWorkerId());
                    }
                });
    }
}
