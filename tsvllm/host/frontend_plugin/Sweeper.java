package org.tsvllm.frontend;

import org.pytorch.serve.wlm.ModelManager;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * One daemon thread that runs {@link RestartFix}, {@link JobRelease}, {@link QueueGuard} and
 * {@link ClientWatch} every {@link #PERIOD_MS} ms, and {@link BodyLimit} every {@link #BODY_LIMIT_EVERY} sweeps. Started once, when TorchServe loads the plugin. Written against
 * TorchServe 0.12.0 (the last release); a part whose frontend internals are missing logs
 * once and is left out.
 */
final class Sweeper implements Runnable {
    private static final Logger logger = LoggerFactory.getLogger(Sweeper.class);
    static final long PERIOD_MS = 50;
    /** {@link BodyLimit} looks for new listening channels once a second */
    static final int BODY_LIMIT_EVERY = 20;
    private static boolean started;

    private final RestartFix restartFix;
    private final JobRelease jobRelease;
    private final QueueGuard queueGuard;
    private final ClientWatch clientWatch;
    private final BodyLimit bodyLimit;

    private Sweeper(
            RestartFix restartFix,
            JobRelease jobRelease,
            QueueGuard queueGuard,
            ClientWatch clientWatch,
            BodyLimit bodyLimit) {
        this.restartFix = restartFix;
        this.jobRelease = jobRelease;
        this.queueGuard = queueGuard;
        this.clientWatch = clientWatch;
        this.bodyLimit = bodyLimit;
    }

    static synchronized void start() {
        if (started) {
            return;
        }
        started = true;
        Sweeper sweeper =
                new Sweeper(
                        RestartFix.create(),
                        JobRelease.create(),
                        QueueGuard.create(),
                        ClientWatch.create(),
                        BodyLimit.create());
        Thread thread = new Thread(sweeper);
        thread.setName("tsvllm-sweeper");
        thread.setDaemon(true);
        thread.start();
        logger.info(
                "tsvllm: worker restarts wait for their load; requests for a model with no"
                        + " READY worker get 503 at once");
    }

    @Override
    public void run() {
        for (long sweeps = 0; ; sweeps++) {
            try {
                Thread.sleep(PERIOD_MS);
                if (bodyLimit != null && sweeps % BODY_LIMIT_EVERY == 0) {
                    bodyLimit.sweep();
                }
                ModelManager manager = ModelManager.getInstance();
                if (manager == null) {
                    continue;
                }
                if (restartFix != null) {
                    restartFix.sweep(manager);
                }
                if (jobRelease != null) {
                    jobRelease.sweep(manager);
                }
                if (queueGuard != null) {
                    queueGuard.sweep(manager);
                }
                if (clientWatch != null) {
                    clientWatch.sweep(manager);
                }
            } catch (InterruptedException e) {
                return;
            } catch (ReflectiveOperationException | RuntimeException e) {
                logger.warn("tsvllm: a sweep failed", e);
            }
        }
    }
}
