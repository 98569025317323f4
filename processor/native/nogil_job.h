/* Walks of several native modules run back to back in one release of the GIL (`_nogil.run_jobs`).
 *
 * Why: every walk that gives the GIL away must wait to take it back, and on a loaded 2-core machine each such
 * hand-over costs more than a short walk gains. Span metrics' walk and the trace store's parse read the same
 * bytes one after the other, so the pipeline prepares both as jobs and runs them in one release.
 * A job type registers a `nogil_job` under NOGIL_JOB_ATTR of its type dict (`nogil_job_register`). */
#ifndef RECOHOP_NOGIL_JOB_H
#define RECOHOP_NOGIL_JOB_H

#include <Python.h>

#define NOGIL_JOB_ATTR "_nogil_job"
#define NOGIL_JOB_CAPSULE "processor.native.nogil_job"

typedef struct {
    /* Without the GIL. `ts` is the caller's saved thread state: a job that must call Python restores it and
     * saves it again (PyGILState_Ensure/Release do that too). 1 done, 0 a Python error is set (the runner runs
     * no later job), -1 not walked (its stage walks again under its lock). */
    int (*run)(PyObject *job, PyThreadState **ts);
    /* With the GIL, after the batch, for every job of it (also one that was not run). */
    void (*after)(PyObject *job);
} nogil_job;

static inline int nogil_job_register(PyTypeObject *type, const nogil_job *job) {
    PyObject *capsule = PyCapsule_New((void *)job, NOGIL_JOB_CAPSULE, NULL);
    if (!capsule) return 0;
    int rc = PyDict_SetItemString(type->tp_dict, NOGIL_JOB_ATTR, capsule);
    Py_DECREF(capsule);
    PyType_Modified(type);
    return rc == 0;
}

#endif
