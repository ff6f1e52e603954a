package org.tsvllm.frontend;

import java.lang.reflect.Field;
import java.util.Map;
import org.pytorch.serve.wlm.AsyncWorkerThread;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.ModelVersionedRefs;
import org.pytorch.serve.wlm.WorkerState;
import org.pytorch.serve.wlm.WorkerThread;
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
 * <p>This daemon clears {@code loadingFinished} on every async worker that TorchServe has
 * marked STOPPED (it retries no sooner than 1 s later, WorkerThread.BACK_OFF), so each
 * restart loads like the first start did. Written against TorchServe 0.12.0 (the last
 * release); on a frontend without that field it logs once and does nothing.
 */
final class RestartFix implements Runnable {
    private static final Logger logger = LoggerFactory.getLogger(RestartFix.class);
    private static final long PERIOD_MS = 50;
    private static boolean started;

    private final Field loadingFinished;

    private RestartFix(Field loadingFinished) {
        this.loadingFinished = loadingFinished;
    }

    static synchronized void start() {
        if (started) {
            return;
        }
        started = true;
        Field field;
        try {
            field = AsyncWorkerThread.class.getDeclaredField("loadingFinished");
            field.setAccessible(true);
        } catch (ReflectiveOperationException | RuntimeException e) {
            logger.warn("tsvllm: async worker restarts are left as TorchServe does them", e);
            return;
        }
        Thread thread = new Thread(new RestartFix(field), "tsvllm-restart-fix");
        thread.setDaemon(true);
        thread.start();
        logger.info("tsvllm: async worker restarts wait for their model load (READY again)");
    }

    @Override
    public void run() {
        while (true) {
            try {
                Thread.sleep(PERIOD_MS);
                ModelManager manager = ModelManager.getInstance();
                if (manager != null) {
                    sweep(manager);
                }
            } catch (InterruptedException e) {
                return;
            } catch (ReflectiveOperationException | RuntimeException e) {
                logger.warn("tsvllm: restart fix failed once", e);
            }
        }
    }

    private void sweep(ModelManager manager) throws ReflectiveOperationException {
        for (Map.Entry<String, ModelVersionedRefs> entry : manager.getAllModels()) {
            for (Map.Entry<String, Model> version : entry.getValue().getAllVersions()) {
                Model model = version.getValue();
                for (WorkerThread worker : manager.getWorkers(model.getModelVersionName())) {
                    if (worker instanceof AsyncWorkerThread
                            && worker.getState() == WorkerState.WORKER_STOPPED
                            && loadingFinished.getBoolean(worker)) {
                        loadingFinished.setBoolean(worker, false);
                        logger.info(
                                "tsvllm: worker {} stopped; its restart will wait for its model load",
                                worker.getWorkerId());
                    }
                }
            }
        }
    }
}
