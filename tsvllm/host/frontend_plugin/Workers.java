package org.tsvllm.frontend;

import java.util.Map;
import org.pytorch.serve.wlm.Model;
import org.pytorch.serve.wlm.ModelManager;
import org.pytorch.serve.wlm.ModelVersionedRefs;
import org.pytorch.serve.wlm.WorkerThread;

/** Every worker TorchServe has, of every version of every model, with its model. */
final class Workers {
    private Workers() {}

    interface Visit {
        void visit(Model model, WorkerThread worker) throws ReflectiveOperationException;
    }

    static void each(ModelManager manager, Visit visit) throws ReflectiveOperationException {
        for (Map.Entry<String, ModelVersionedRefs> entry : manager.getAllModels()) {
            for (Map.Entry<String, Model> version : entry.getValue().getAllVersions()) {
                Model model = version.getValue();
                for (WorkerThread worker : manager.getWorkers(model.getModelVersionName())) {
                    visit.visit(model, worker);
                }
            }
        }
    }
}
