/*
 * xinterface._fastloop: the hot half of a vCPU's exit loop, compiled (optional).
 *
 * xinterface/runner/vcpu_loop.py is the reference; this module does exactly what its Python loop does
 * for the exits that matter to speed, and hands everything else back to it:
 *
 *   ExitLoop.run()  KVM_RUN with the GIL released, count the exit in the same ``counts`` list,
 *                   drain the coalesced ring first when it holds anything (through the owner's
 *                   drain_posted, in Python), then serve single PIO/MMIO accesses: a write by
 *                   the bus's rule (bus_write below), a read by the bus's ``read``. The reader
 *                   slot's ``count`` is odd while inside a dispatch, exactly where the Python
 *                   loop's iobus.write_in/read_in make it odd, so deassign() never returns while
 *                   a handler runs.
 *                   Returns, with the exit still described by the kvm_run page:
 *                     reason >= 0     an exit for Python (already counted and drained)
 *                     -errno          KVM_RUN failed (-EINTR, -EAGAIN included: Python
 *                                     decides, nothing is retried here)
 *                     STOPPING        owner.stopping was set before a KVM_RUN
 *                     UNHANDLED       an access nobody claimed: Python counts it and applies
 *                                     the unhandled policy (all-ones, dropped, or strict's stop)
 *   drain()         the coalesced ring in batches (``first`` moved once per batch), every entry
 *                   dispatched by the same bus_write, in ring order, each entry once even when
 *                   a handler re-enters the drain; one nobody claimed goes to Python's
 *                   ``unclaimed``, a handler's exception to ``failed``.
 *
 * Nothing here retries, sleeps or holds a lock: Python keeps every policy decision.
 *
 * What this module reads of Python objects is public and documented there: a bus's ``routes``
 * (iobus.Routes: events, starts, devices), ``write``/``read``; an event's ``live``/``signal``;
 * a range device's ``base``/``end``/``live``/``write``; a reader slot's ``count``; the owner's
 * ``stopping``; the ring's ``zones``/``pending()``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>

#define LEAVE_STOPPING (-1000)
#define LEAVE_UNHANDLED (-1001)

/* The bus key (iobus.event_key) is (addr << 4) | size: addresses from 2**60 up go to Python. */
#define KEY_SHIFT 4
#define KEY_ADDR_LIMIT (UINT64_C(1) << (64 - KEY_SHIFT))
#define EXIT_MASK 0xFF  /* vcpu_loop._EXIT_MASK: counts is indexed by reason & EXIT_MASK */

/* What a served access came to. */
enum served { SERVED_ERROR = -1, SERVED_PYTHON = 0, SERVED = 1, SERVED_UNHANDLED = 2 };

static PyObject *str_stopping, *str_count, *str_live, *str_signal, *str_zones, *str_pending;
static PyObject *str_routes, *str_end, *str_write, *str_read, *str_base;

/* --- small helpers -------------------------------------------------------------------------- */

/*
 * The data descriptor behind ``slot.count`` (ReaderSlot keeps it in __slots__), taken once so
 * that a bump skips the attribute lookup: through the descriptor protocol, which is what
 * getattr/setattr would call for it. NULL (no error) when the slot's type has its own
 * attribute logic or no such descriptor: bumps then go through getattr/setattr.
 */
static PyObject *count_descriptor(PyObject *slot)
{
	PyTypeObject *type = Py_TYPE(slot);
	if (type->tp_getattro != PyObject_GenericGetAttr ||
	    type->tp_setattro != PyObject_GenericSetAttr)
		return NULL;
	PyObject *descr = PyObject_GetAttr((PyObject *)type, str_count);
	if (descr == NULL) {
		PyErr_Clear();
		return NULL;
	}
	if (Py_TYPE(descr)->tp_descr_get == NULL || Py_TYPE(descr)->tp_descr_set == NULL) {
		Py_DECREF(descr); /* not a data descriptor: an instance attribute could shadow it */
		return NULL;
	}
	return descr;
}

/*
 * slot.count += 1, as iobus.write_in does it: the slot is written only by its own thread, so
 * the read and the write need no lock.
 */
static int bump_count(PyObject *slot, PyObject *descr)
{
	PyObject *count = descr != NULL
		? Py_TYPE(descr)->tp_descr_get(descr, slot, (PyObject *)Py_TYPE(slot))
		: PyObject_GetAttr(slot, str_count);
	if (count == NULL)
		return -1;
	long long value = PyLong_AsLongLong(count);
	Py_DECREF(count);
	if (value == -1 && PyErr_Occurred())
		return -1;
	PyObject *next = PyLong_FromLongLong(value + 1);
	if (next == NULL)
		return -1;
	int r = descr != NULL ? Py_TYPE(descr)->tp_descr_set(descr, slot, next)
			      : PyObject_SetAttr(slot, str_count, next);
	Py_DECREF(next);
	return r;
}

/* bool(getattr(obj, name)), or -1. */
static int attr_true(PyObject *obj, PyObject *name)
{
	PyObject *value = PyObject_GetAttr(obj, name);
	if (value == NULL)
		return -1;
	int r = PyObject_IsTrue(value);
	Py_DECREF(value);
	return r;
}

static PyObject *call2(PyObject *callable, PyObject *a, PyObject *b)
{
	PyObject *args[2] = {a, b};
	return PyObject_Vectorcall(callable, args, 2, NULL);
}

/*
 * The exact-match event for a write, as IoBus.write takes it: a new reference to a live
 * event, NULL with no error when there is none (or it is not live), NULL with an error.
 */
static PyObject *live_event(PyObject *events, uint64_t addr, unsigned size)
{
	PyObject *key = PyLong_FromUnsignedLongLong((addr << KEY_SHIFT) | size);
	if (key == NULL)
		return NULL;
	PyObject *event = PyDict_GetItemWithError(events, key); /* borrowed */
	Py_DECREF(key);
	if (event == NULL)
		return NULL;
	/* Our own reference: the handler may deassign the event, dropping the bus's. */
	Py_INCREF(event);
	int live = attr_true(event, str_live);
	if (live <= 0) {
		Py_DECREF(event);
		return NULL;
	}
	return event;
}

/* signal(event, payload) if a signal is set; -1 if it raised. */
static int signal_event(PyObject *event, PyObject *payload)
{
	PyObject *signal = PyObject_GetAttr(event, str_signal);
	if (signal == NULL)
		return -1;
	if (signal == Py_None) {
		Py_DECREF(signal); /* claimed and dropped, as in the seed */
		return 0;
	}
	PyObject *r = call2(signal, event, payload);
	Py_DECREF(signal);
	if (r == NULL)
		return -1;
	Py_DECREF(r);
	return 0;
}

/* --- ExitLoop ---------------------------------------------------------------------------- */

typedef struct {
	PyObject_HEAD
	int fd;
	PyObject *run;      /* the vCPU's kvm_run mmap */
	PyObject *owner;    /* vcpu_loop.LoopOwner: .stopping */
	PyObject *loop;     /* the VcpuLoop, passed to drain */
	PyObject *counts;   /* list of exit counts, indexed by reason & EXIT_MASK */
	PyObject *slot;     /* grace.ReaderSlot: .count */
	PyObject *count_descr; /* type(slot).count, or NULL: see count_descriptor */
	PyObject *ring;     /* delivery.posted.CoalescedRing: .zones, .pending() */
	PyObject *drain;    /* owner.drain_posted */
	PyObject *pio_bus, *mmio_bus;   /* iobus.Bus: .routes, .write */
	PyObject *pio_read, *mmio_read; /* their bound .read, taken once */
	unsigned long long handled; /* exits served entirely here */
} ExitLoop;

static int ExitLoop_traverse(ExitLoop *self, visitproc visit, void *arg)
{
	Py_VISIT(self->run);
	Py_VISIT(self->owner);
	Py_VISIT(self->loop);
	Py_VISIT(self->counts);
	Py_VISIT(self->slot);
	Py_VISIT(self->count_descr);
	Py_VISIT(self->ring);
	Py_VISIT(self->drain);
	Py_VISIT(self->pio_bus);
	Py_VISIT(self->mmio_bus);
	Py_VISIT(self->pio_read);
	Py_VISIT(self->mmio_read);
	return 0;
}

static int ExitLoop_clear(ExitLoop *self)
{
	Py_CLEAR(self->run);
	Py_CLEAR(self->owner);
	Py_CLEAR(self->loop);
	Py_CLEAR(self->counts);
	Py_CLEAR(self->slot);
	Py_CLEAR(self->count_descr);
	Py_CLEAR(self->ring);
	Py_CLEAR(self->drain);
	Py_CLEAR(self->pio_bus);
	Py_CLEAR(self->mmio_bus);
	Py_CLEAR(self->pio_read);
	Py_CLEAR(self->mmio_read);
	return 0;
}

static void ExitLoop_dealloc(ExitLoop *self)
{
	PyObject_GC_UnTrack(self);
	ExitLoop_clear(self);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ExitLoop_init(ExitLoop *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"fd", "run", "owner", "loop", "counts", "slot", "ring", "drain",
				 "pio_bus", "mmio_bus", NULL};
	int fd;
	PyObject *run, *owner, *loop, *counts, *slot, *ring, *drain, *pio_bus, *mmio_bus;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOOOO!OOOOO:ExitLoop", kwlist, &fd, &run,
					 &owner, &loop, &PyList_Type, &counts, &slot, &ring,
					 &drain, &pio_bus, &mmio_bus))
		return -1;
	if (PyList_GET_SIZE(counts) <= EXIT_MASK) {
		PyErr_Format(PyExc_ValueError, "counts must hold %d entries", EXIT_MASK + 1);
		return -1;
	}
	self->fd = fd;
	self->handled = 0;
	Py_XSETREF(self->count_descr, count_descriptor(slot));
	PyObject *pio_read = PyObject_GetAttr(pio_bus, str_read);
	if (pio_read == NULL)
		return -1;
	Py_XSETREF(self->pio_read, pio_read);
	PyObject *mmio_read = PyObject_GetAttr(mmio_bus, str_read);
	if (mmio_read == NULL)
		return -1;
	Py_XSETREF(self->mmio_read, mmio_read);
#define SET(field) do { Py_INCREF(field); Py_XSETREF(self->field, field); } while (0)
	SET(run);
	SET(owner);
	SET(loop);
	SET(counts);
	SET(slot);
	SET(ring);
	SET(drain);
	SET(pio_bus);
	SET(mmio_bus);
#undef SET
	return 0;
}

static int bump(ExitLoop *self)
{
	return bump_count(self->slot, self->count_descr);
}

/* counts[reason & EXIT_MASK] += 1 */
static int count_exit(ExitLoop *self, unsigned reason)
{
	Py_ssize_t i = reason & EXIT_MASK;
	if (PyList_GET_SIZE(self->counts) <= i) {
		PyErr_SetString(PyExc_ValueError, "the counts list was shortened");
		return -1;
	}
	long long value = PyLong_AsLongLong(PyList_GET_ITEM(self->counts, i));
	if (value == -1 && PyErr_Occurred())
		return -1;
	PyObject *next = PyLong_FromLongLong(value + 1);
	if (next == NULL)
		return -1;
	return PyList_SetItem(self->counts, i, next); /* steals next */
}

/* Posted writes first: a later access must not overtake them (the Python loop's rule). */
static int drain_first(ExitLoop *self)
{
	int zones = attr_true(self->ring, str_zones);
	if (zones <= 0)
		return zones;
	PyObject *pending = PyObject_CallMethodNoArgs(self->ring, str_pending);
	if (pending == NULL)
		return -1;
	int any = PyObject_IsTrue(pending);
	Py_DECREF(pending);
	if (any <= 0)
		return any;
	PyObject *r = PyObject_CallOneArg(self->drain, self->loop);
	if (r == NULL)
		return -1;
	Py_DECREF(r);
	return 0;
}

/*
 * The range half of the rule on a Routes snapshot (IoBus.write's second step): the device
 * whose [base, end) holds ``addr`` among ``starts``/``devices``, if it is live and writes.
 * 1: claimed, 0: not (no device, or it declined by returning False), -1: an error.
 */
static int range_write(PyObject *starts, PyObject *devices, uint64_t addr, PyObject *payload)
{
	/* bisect_right(starts, addr) - 1 */
	Py_ssize_t lo = 0, hi = PyTuple_GET_SIZE(starts);
	while (lo < hi) {
		Py_ssize_t mid = lo + (hi - lo) / 2;
		unsigned long long start = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(starts, mid));
		if (start == (unsigned long long)-1 && PyErr_Occurred())
			return -1;
		if (addr < start)
			hi = mid;
		else
			lo = mid + 1;
	}
	if (lo == 0 || lo > PyTuple_GET_SIZE(devices))
		return 0;
	int claimed = -1;
	PyObject *value = NULL;
	PyObject *device = Py_NewRef(PyTuple_GET_ITEM(devices, lo - 1));
	/* if addr < device.end and device.live and device.write is not None: */
	value = PyObject_GetAttr(device, str_end);
	if (value == NULL)
		goto done;
	unsigned long long end = PyLong_AsUnsignedLongLong(value);
	Py_CLEAR(value);
	if (end == (unsigned long long)-1 && PyErr_Occurred()) {
		if (!PyErr_ExceptionMatches(PyExc_OverflowError))
			goto done;
		PyErr_Clear(); /* an MMIO range ending at 2**64: every address is below it */
	} else if (addr >= end) {
		claimed = 0;
		goto done;
	}
	int live = attr_true(device, str_live);
	if (live <= 0) {
		claimed = live;
		goto done;
	}
	PyObject *write = PyObject_GetAttr(device, str_write);
	if (write == NULL)
		goto done;
	if (write == Py_None) {
		Py_DECREF(write);
		claimed = 0;
		goto done;
	}
	value = PyObject_GetAttr(device, str_base);
	unsigned long long base = value == NULL ? 0 : PyLong_AsUnsignedLongLong(value);
	Py_CLEAR(value);
	PyObject *offset = NULL;
	if (!PyErr_Occurred())
		offset = PyLong_FromUnsignedLongLong(addr - base);
	if (offset == NULL) {
		Py_DECREF(write);
		goto done;
	}
	/* return device.write(addr - device.base, data) is not False */
	PyObject *r = call2(write, offset, payload);
	Py_DECREF(offset);
	Py_DECREF(write);
	if (r == NULL)
		goto done;
	claimed = r != Py_False;
	Py_DECREF(r);
done:
	Py_DECREF(device);
	return claimed;
}

/*
 * The event last found by one drain, for runs of writes to one address: reused while it is
 * live, since a live event is the one registered (removal clears live first, and a second
 * event at the same key is refused), so this skips only the dict lookup.
 */
struct event_cache {
	PyObject *event;  /* a strong reference, or NULL */
	PyObject *events; /* the dict it was found in (compared, not owned) */
	uint64_t key;
};

/* The live exact-match event for (addr, size), through ``cache`` when there is one. */
static PyObject *find_event(PyObject *events, uint64_t addr, unsigned size,
			    struct event_cache *cache)
{
	uint64_t key = (addr << KEY_SHIFT) | size;
	if (cache != NULL && cache->event != NULL && cache->key == key && cache->events == events) {
		int live = attr_true(cache->event, str_live);
		if (live < 0)
			return NULL;
		if (live)
			return Py_NewRef(cache->event);
	}
	PyObject *event = live_event(events, addr, size);
	if (cache != NULL && event != NULL) {
		Py_XSETREF(cache->event, Py_NewRef(event));
		cache->events = events;
		cache->key = key;
	}
	return event;
}

/*
 * IoBus.write's rule, the compiled twin of iobus.py's (see its module doc): the exact-match
 * event for (addr, size), which always claims; else the range device holding addr; else
 * nobody. A bus whose ``routes`` is None (a wrapper that must see every access) gets its own
 * ``write`` called instead, and so does an address from 2**60 up (the key would not fit).
 * 1: claimed, 0: not, -1: an error (a handler raised, or ``routes`` is not the (events,
 * starts, devices) triple iobus.Routes documents). ``cache``: see event_cache, or NULL.
 */
static int bus_write(PyObject *bus, uint64_t addr, unsigned size, PyObject *payload,
		     struct event_cache *cache)
{
	PyObject *routes = PyObject_GetAttr(bus, str_routes);
	if (routes == NULL)
		return -1;
	int claimed = -1;
	if (routes == Py_None || addr >= KEY_ADDR_LIMIT) {
		PyObject *addr_obj = PyLong_FromUnsignedLongLong(addr);
		PyObject *r = addr_obj == NULL ? NULL : PyObject_CallMethodObjArgs(
			bus, str_write, addr_obj, payload, NULL);
		Py_XDECREF(addr_obj);
		if (r != NULL) {
			claimed = PyObject_IsTrue(r);
			Py_DECREF(r);
		}
		Py_DECREF(routes);
		return claimed;
	}
	if (!PyTuple_Check(routes) || PyTuple_GET_SIZE(routes) != 3 ||
	    !PyDict_Check(PyTuple_GET_ITEM(routes, 0)) ||
	    !PyTuple_Check(PyTuple_GET_ITEM(routes, 1)) ||
	    !PyTuple_Check(PyTuple_GET_ITEM(routes, 2))) {
		PyErr_SetString(PyExc_TypeError, "bus.routes is not an (events, starts, devices) "
				"Routes triple");
		goto done;
	}
	PyObject *event = find_event(PyTuple_GET_ITEM(routes, 0), addr, size, cache);
	if (event != NULL) {
		int r = signal_event(event, payload);
		Py_DECREF(event);
		claimed = r < 0 ? -1 : 1; /* claimed; with no signal set, dropped as in the seed */
		goto done;
	}
	if (PyErr_Occurred())
		goto done;
	claimed = range_write(PyTuple_GET_ITEM(routes, 1), PyTuple_GET_ITEM(routes, 2), addr,
			      payload);
done:
	Py_DECREF(routes);
	return claimed;
}

/*
 * A write, inside the reader slot (iobus.write_in's twin): the slot is odd from before the
 * lookup to after the call; an error from a handler leaves it odd, as write_in does, which is
 * how VcpuLoop tells a handler's error from its own.
 */
static enum served serve_write(ExitLoop *self, PyObject *bus, uint64_t addr,
			       const uint8_t *data, unsigned size)
{
	PyObject *payload = PyBytes_FromStringAndSize((const char *)data, size);
	if (payload == NULL)
		return SERVED_ERROR;
	enum served out = SERVED_ERROR;
	if (bump(self) < 0)
		goto done;
	int claimed = bus_write(bus, addr, size, payload, NULL);
	if (claimed < 0 || bump(self) < 0)
		goto done;
	out = claimed ? SERVED : SERVED_UNHANDLED;
done:
	Py_DECREF(payload);
	return out;
}

/* A read: the bus's read call; its bytes go back into the kvm_run page for the guest. */
static enum served serve_read(ExitLoop *self, PyObject *read, uint64_t addr, uint8_t *dest,
			      unsigned size)
{
	PyObject *addr_obj = PyLong_FromUnsignedLongLong(addr);
	if (addr_obj == NULL)
		return SERVED_ERROR;
	PyObject *size_obj = PyLong_FromUnsignedLong(size);
	if (size_obj == NULL) {
		Py_DECREF(addr_obj);
		return SERVED_ERROR;
	}
	PyObject *value = NULL;
	if (bump(self) == 0)
		value = call2(read, addr_obj, size_obj);
	Py_DECREF(addr_obj);
	Py_DECREF(size_obj);
	if (value == NULL || bump(self) < 0) {
		Py_XDECREF(value);
		return SERVED_ERROR;
	}
	if (value == Py_None) {
		/* Rare, so left to Python: it counts the access and gives all-ones or stops. */
		Py_DECREF(value);
		return SERVED_UNHANDLED;
	}
	Py_buffer view;
	if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) {
		Py_DECREF(value);
		return SERVED_ERROR;
	}
	enum served out = SERVED;
	if (view.len != (Py_ssize_t)size) {
		PyErr_Format(PyExc_ValueError, "a %u-byte read at %#llx returned %zd bytes", size,
			     (unsigned long long)addr, view.len);
		out = SERVED_ERROR;
	} else {
		memcpy(dest, view.buf, size);
	}
	PyBuffer_Release(&view);
	Py_DECREF(value);
	return out;
}

/* One exit: served here, or SERVED_PYTHON for VcpuLoop to handle. */
static enum served serve(ExitLoop *self, struct kvm_run *run, Py_ssize_t run_size,
			 unsigned reason)
{
	if (reason == KVM_EXIT_IO) {
		unsigned size = run->io.size;
		uint64_t offset = run->io.data_offset;
		if (run->io.count != 1 || (size != 1 && size != 2 && size != 4) ||
		    offset > (uint64_t)run_size - size)
			return SERVED_PYTHON; /* string I/O, or a page we do not understand */
		uint8_t *data = (uint8_t *)run + offset;
		if (run->io.direction == KVM_EXIT_IO_OUT)
			return serve_write(self, self->pio_bus, run->io.port, data, size);
		return serve_read(self, self->pio_read, run->io.port, data, size);
	}
	if (reason == KVM_EXIT_MMIO) {
		unsigned size = run->mmio.len;
		uint64_t addr = run->mmio.phys_addr;
		if (size == 0 || size > sizeof(run->mmio.data) || addr >= KEY_ADDR_LIMIT)
			return SERVED_PYTHON;
		if (run->mmio.is_write)
			return serve_write(self, self->mmio_bus, addr, run->mmio.data, size);
		return serve_read(self, self->mmio_read, addr, run->mmio.data, size);
	}
	return SERVED_PYTHON;
}

static PyObject *ExitLoop_run(ExitLoop *self, PyObject *Py_UNUSED(ignored))
{
	if (self->run == NULL) {
		PyErr_SetString(PyExc_ValueError, "ExitLoop was not initialised");
		return NULL;
	}
	Py_buffer view;
	if (PyObject_GetBuffer(self->run, &view, PyBUF_WRITABLE) < 0)
		return NULL;
	if (view.len < (Py_ssize_t)sizeof(struct kvm_run)) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_ValueError, "run is smaller than struct kvm_run");
		return NULL;
	}
	struct kvm_run *run = view.buf;
	long code;
	for (;;) {
		/* Python's signal handlers run here, between exits, never between an exit and
		 * its handling: a Ctrl-C is raised, not lost, and loses no guest access. (Only on
		 * the main thread; elsewhere this is a no-op, as it is in fcntl.ioctl.) */
		if (PyErr_CheckSignals() < 0)
			goto error;
		int stopping = attr_true(self->owner, str_stopping);
		if (stopping < 0)
			goto error;
		if (stopping) {
			code = LEAVE_STOPPING;
			break;
		}
		int r, err;
		Py_BEGIN_ALLOW_THREADS
		r = ioctl(self->fd, KVM_RUN, 0);
		err = errno;
		Py_END_ALLOW_THREADS
		if (r < 0) {
			/* EINTR included: Python counts it and decides whether to go on. */
			if (err == EINTR && PyErr_CheckSignals() < 0)
				goto error;
			code = -err;
			break;
		}
		unsigned reason = run->exit_reason;
		if (count_exit(self, reason) < 0 || drain_first(self) < 0)
			goto error;
		enum served served = serve(self, run, view.len, reason);
		if (served == SERVED_ERROR)
			goto error;
		if (served == SERVED_PYTHON) {
			code = (long)reason;
			break;
		}
		if (served == SERVED_UNHANDLED) {
			code = LEAVE_UNHANDLED;
			break;
		}
		self->handled++;
	}
	PyBuffer_Release(&view);
	return PyLong_FromLong(code);
error:
	PyBuffer_Release(&view);
	return NULL;
}

static PyObject *ExitLoop_get_handled(ExitLoop *self, void *Py_UNUSED(closure))
{
	return PyLong_FromUnsignedLongLong(self->handled);
}

static PyMethodDef ExitLoop_methods[] = {
	{"run", (PyCFunction)ExitLoop_run, METH_NOARGS,
	 "Run until an exit that Python must handle; see the module doc for the result."},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef ExitLoop_getset[] = {
	{"handled", (getter)ExitLoop_get_handled, NULL, "Exits served entirely in C.", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ExitLoop_Type = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "xinterface._fastloop.ExitLoop",
	.tp_basicsize = sizeof(ExitLoop),
	.tp_dealloc = (destructor)ExitLoop_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "One vCPU's exit loop, the hot half (see xinterface.runner.vcpu_loop).",
	.tp_traverse = (traverseproc)ExitLoop_traverse,
	.tp_clear = (inquiry)ExitLoop_clear,
	.tp_methods = ExitLoop_methods,
	.tp_getset = ExitLoop_getset,
	.tp_init = (initproc)ExitLoop_init,
	.tp_new = PyType_GenericNew,
};

/* --- the coalesced ring -------------------------------------------------------------------- */

/*
 * Entries taken off the ring, not yet dispatched (CoalescedRing._pending's compiled twin).
 * A drain takes every logged entry at once, so ``first`` moves once per batch, not once per
 * entry under the guest's feet; a drain re-entered from a handler (deassign flushes) goes on
 * from here, so entries are dispatched in ring order, each exactly once.
 */
typedef struct {
	PyObject_HEAD
	Py_ssize_t capacity, head, count;
	struct kvm_coalesced_mmio *entries;
} Pending;

static PyObject *Pending_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"entries", NULL};
	Py_ssize_t capacity;
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:Pending", kwlist, &capacity))
		return NULL;
	if (capacity <= 0 || capacity > 4096) {
		PyErr_SetString(PyExc_ValueError, "entries must be from 1 to 4096");
		return NULL;
	}
	Pending *self = (Pending *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->entries = PyMem_Calloc((size_t)capacity, sizeof(*self->entries));
	if (self->entries == NULL) {
		Py_DECREF(self);
		return PyErr_NoMemory();
	}
	self->capacity = capacity;
	return (PyObject *)self;
}

static void Pending_dealloc(Pending *self)
{
	PyMem_Free(self->entries);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t Pending_len(Pending *self)
{
	return self->count;
}

static PySequenceMethods Pending_as_sequence = {
	.sq_length = (lenfunc)Pending_len,
};

static PyTypeObject Pending_Type = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "xinterface._fastloop.Pending",
	.tp_basicsize = sizeof(Pending),
	.tp_dealloc = (destructor)Pending_dealloc,
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "Coalesced-ring entries taken, not yet dispatched; len() says how many.",
	.tp_as_sequence = &Pending_as_sequence,
	.tp_new = Pending_new,
};

/* Move every logged entry to ``pending`` and give the ring's slots back at once. */
static int take(struct kvm_coalesced_mmio_ring *ring, uint32_t entries, Pending *pending)
{
	uint32_t first = __atomic_load_n(&ring->first, __ATOMIC_RELAXED);
	/* Acquire: the kernel fills an entry before it publishes it by moving last. */
	uint32_t last = __atomic_load_n(&ring->last, __ATOMIC_ACQUIRE);
	if (first == last)
		return 0;
	if (first >= entries || last >= entries) {
		PyErr_Format(PyExc_RuntimeError, "coalesced ring indices %u, %u out of range", first,
			     last);
		return -1;
	}
	Py_ssize_t n = (Py_ssize_t)((last + entries - first) % entries);
	for (Py_ssize_t i = 0; i < n; i++)
		pending->entries[i] = ring->coalesced_mmio[(first + i) % entries];
	pending->head = 0;
	pending->count = n;
	/* Copied out: the kernel may reuse the slots now (it only reads first). */
	__atomic_store_n(&ring->first, last, __ATOMIC_RELEASE);
	return 0;
}

/*
 * A handler raised: hand the exception to ``failed(pio, addr, payload, exc)``, which
 * raises what the Python dispatch would have (Vm._posted_failed: a GuestIOError naming the
 * write). Always returns -1 with an exception set.
 */
static int handler_failed(const struct kvm_coalesced_mmio *entry, PyObject *payload,
			  PyObject *failed)
{
	if (failed == Py_None)
		return -1;
	PyObject *type, *value, *tb;
	PyErr_Fetch(&type, &value, &tb);
	PyErr_NormalizeException(&type, &value, &tb);
	if (tb != NULL && value != NULL)
		PyException_SetTraceback(value, tb);
	PyObject *pio = PyLong_FromUnsignedLong(entry->pio);
	PyObject *addr = PyLong_FromUnsignedLongLong(entry->phys_addr);
	PyObject *r = NULL;
	if (pio != NULL && addr != NULL && value != NULL) {
		PyObject *args[4] = {pio, addr, payload, value};
		r = PyObject_Vectorcall(failed, args, 4, NULL);
	}
	Py_XDECREF(pio);
	Py_XDECREF(addr);
	if (r != NULL) {
		/* failed() did not raise: the handler's own exception goes on. */
		Py_DECREF(r);
		PyErr_Restore(type, value, tb);
		return -1;
	}
	Py_XDECREF(type);
	Py_XDECREF(value);
	Py_XDECREF(tb);
	return -1;
}

/* One entry, by the bus's rule; nobody's goes to ``unclaimed(pio, addr, payload)``. */
static int dispatch_entry(const struct kvm_coalesced_mmio *entry, PyObject *bus,
			  struct event_cache *cache, PyObject *unclaimed, PyObject *failed)
{
	unsigned size = entry->len < sizeof(entry->data) ? entry->len : sizeof(entry->data);
	PyObject *payload = PyBytes_FromStringAndSize((const char *)entry->data, size);
	if (payload == NULL)
		return -1;
	int r = bus_write(bus, entry->phys_addr, size, payload, cache);
	if (r < 0) {
		handler_failed(entry, payload, failed);
	} else if (r == 0) {
		PyObject *pio = PyLong_FromUnsignedLong(entry->pio);
		PyObject *addr = PyLong_FromUnsignedLongLong(entry->phys_addr);
		PyObject *out = NULL;
		if (pio != NULL && addr != NULL) {
			PyObject *uargs[3] = {pio, addr, payload};
			out = PyObject_Vectorcall(unclaimed, uargs, 3, NULL);
		}
		Py_XDECREF(pio);
		Py_XDECREF(addr);
		r = out == NULL ? -1 : 0;
		Py_XDECREF(out);
	} else {
		r = 0;
	}
	Py_DECREF(payload);
	return r;
}

/*
 * drain(run, offset, entries, pending, pio_bus, mmio_bus, unclaimed, failed) -> int
 *
 * CoalescedRing.drain in C; the caller holds the ring's lock. Every entry goes, in ring order,
 * to its bus by the bus's rule (bus_write); a handler's exception goes to failed (or, with
 * None, propagates), an entry nobody claimed to unclaimed(pio, addr, payload).
 */
static PyObject *fl_drain(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
	if (nargs != 8) {
		PyErr_SetString(PyExc_TypeError, "drain(run, offset, entries, pending, pio_bus, "
				"mmio_bus, unclaimed, failed)");
		return NULL;
	}
	Py_ssize_t offset = PyLong_AsSsize_t(args[1]);
	if (offset == -1 && PyErr_Occurred())
		return NULL;
	unsigned long entries = PyLong_AsUnsignedLong(args[2]);
	if (entries == (unsigned long)-1 && PyErr_Occurred())
		return NULL;
	if (!Py_IS_TYPE(args[3], &Pending_Type)) {
		PyErr_SetString(PyExc_TypeError, "pending must be a Pending");
		return NULL;
	}
	Pending *pending = (Pending *)args[3];
	PyObject *buses[2] = {args[5], args[4]}; /* indexed by entry.pio */
	PyObject *unclaimed = args[6], *failed = args[7];
	if (entries == 0 || entries > (unsigned long)pending->capacity) {
		PyErr_SetString(PyExc_ValueError, "pending holds fewer entries than the ring");
		return NULL;
	}
	Py_buffer view;
	if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE) < 0)
		return NULL;
	Py_ssize_t ring_bytes = (Py_ssize_t)(sizeof(struct kvm_coalesced_mmio_ring) +
					     entries * sizeof(struct kvm_coalesced_mmio));
	if (offset < 0 || offset > view.len - ring_bytes) {
		PyBuffer_Release(&view);
		PyErr_SetString(PyExc_ValueError, "the ring does not fit in run");
		return NULL;
	}
	struct kvm_coalesced_mmio_ring *ring = (void *)((uint8_t *)view.buf + offset);
	struct event_cache cache = {NULL, NULL, 0};
	unsigned long done = 0;
	for (;;) {
		if (pending->count == 0) {
			if (take(ring, (uint32_t)entries, pending) < 0)
				goto error;
			if (pending->count == 0)
				break;
		}
		/* Popped before dispatch: a re-entered drain starts with the next one. */
		struct kvm_coalesced_mmio entry = pending->entries[pending->head++];
		pending->count--;
		if (dispatch_entry(&entry, buses[entry.pio ? 1 : 0], &cache, unclaimed, failed) < 0)
			goto error;
		done++;
	}
	Py_XDECREF(cache.event);
	PyBuffer_Release(&view);
	return PyLong_FromUnsignedLong(done);
error:
	Py_XDECREF(cache.event);
	PyBuffer_Release(&view);
	return NULL;
}

static PyMethodDef module_methods[] = {
	{"drain", (PyCFunction)(void (*)(void))fl_drain, METH_FASTCALL,
	 "drain(run, offset, entries, pending, pio_bus, mmio_bus, unclaimed, failed) -> int"
	 "\n\n"
	 "Dispatch every entry of the coalesced ring to its bus, in ring order; one nobody "
	 "claimed goes to unclaimed(pio, addr, payload). How many."},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT,
	.m_name = "xinterface._fastloop",
	.m_doc = "The compiled half of xinterface's vCPU exit loop (see xinterface.runner.vcpu_loop).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__fastloop(void)
{
	if (PyType_Ready(&ExitLoop_Type) < 0 || PyType_Ready(&Pending_Type) < 0)
		return NULL;
#define INTERN(var, text) \
	do { if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL; } while (0)
	INTERN(str_stopping, "stopping");
	INTERN(str_count, "count");
	INTERN(str_live, "live");
	INTERN(str_signal, "signal");
	INTERN(str_zones, "zones");
	INTERN(str_pending, "pending");
	INTERN(str_routes, "routes");
	INTERN(str_read, "read");
	INTERN(str_end, "end");
	INTERN(str_write, "write");
	INTERN(str_base, "base");
#undef INTERN
	PyObject *m = PyModule_Create(&module_def);
	if (m == NULL)
		return NULL;
	Py_INCREF(&ExitLoop_Type);
	Py_INCREF(&Pending_Type);
	if (PyModule_AddObject(m, "ExitLoop", (PyObject *)&ExitLoop_Type) < 0 ||
	    PyModule_AddObject(m, "Pending", (PyObject *)&Pending_Type) < 0 ||
	    PyModule_AddIntConstant(m, "STOPPING", LEAVE_STOPPING) < 0 ||
	    PyModule_AddIntConstant(m, "UNHANDLED", LEAVE_UNHANDLED) < 0) {
		Py_DECREF(&ExitLoop_Type);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
