/* run_jobs: native walks of several modules in one release of the GIL (see nogil_job.h). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "nogil_job.h"

#define MAX_JOBS 16

/* run_jobs(jobs: tuple) -> how many ran. Each job's type carries a nogil_job; a job whose run sets a Python
 * error stops the batch (the later jobs stay unrun: their stages walk again) and the error is raised. */
static PyObject *run_jobs(PyObject *self, PyObject *jobs) {
    if (!PyTuple_Check(jobs)) {
        PyErr_SetString(PyExc_TypeError, "run_jobs: a tuple of jobs");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(jobs);
    if (n > MAX_JOBS) {
        PyErr_Format(PyExc_ValueError, "run_jobs: at most %d jobs", MAX_JOBS);
        return NULL;
    }
    const nogil_job *kinds[MAX_JOBS];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *job = PyTuple_GET_ITEM(jobs, i);
        PyObject *capsule = PyDict_GetItemString(Py_TYPE(job)->tp_dict, NOGIL_JOB_ATTR); /* borrowed */
        kinds[i] = capsule && PyCapsule_IsValid(capsule, NOGIL_JOB_CAPSULE)
                       ? (const nogil_job *)PyCapsule_GetPointer(capsule, NOGIL_JOB_CAPSULE)
                       : NULL;
        if (!kinds[i]) {
            PyErr_Format(PyExc_TypeError, "run_jobs: %.100s is not a native job", Py_TYPE(job)->tp_name);
            return NULL;
        }
    }
    Py_ssize_t ran = 0;
    int status = 1;
    PyThreadState *ts = PyEval_SaveThread();
    while (ran < n && status != 0) {
        status = kinds[ran]->run(PyTuple_GET_ITEM(jobs, ran), &ts);
        ran++;
    }
    PyEval_RestoreThread(ts);
    for (Py_ssize_t i = 0; i < n; i++) kinds[i]->after(PyTuple_GET_ITEM(jobs, i));
    if (status == 0) return NULL;
    return PyLong_FromSsize_t(ran);
}

static PyMethodDef methods[] = {
    {"run_jobs", run_jobs, METH_O, "Run native jobs (span-metrics walks, trace-store parses) in one GIL release."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_nogil", NULL, -1, methods};

PyMODINIT_FUNC PyInit__nogil(void) { return PyModule_Create(&module); }
