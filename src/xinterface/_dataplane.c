/*
 * xinterface._dataplane: the virtio data path of the built-in devices, compiled (optional).
 *
 * xinterface/virtio/queue.py and chain.py are the reference: a chain is walked here by the
 * rules of chain.walk and mapped by those of chain.map_buffers, every guest address checked
 * against the region table before a pointer is formed from it. What this module serves, it
 * serves as the Python devices do (blk.py, net/device.py, rng.py, console.py); anything else
 * it hands back untouched:
 *
 *   PYTHON  the next available chain breaks a rule, or is not one this module serves (a
 *           buffer across two regions, more than IOV_CAP buffers, a request type or a
 *           layout left to Python, a system call that failed). Nothing of it was consumed:
 *           the caller pops it with VirtQueue.pop, whose walk raises the same
 *           VirtqueueError the Python path raises (or serves it, if the driver changed it
 *           meanwhile), so every outcome and every message is the Python path's.
 *   EMPTY   no chain is available (or, for receive, no frame waits).
 *
 * Each function takes the VirtQueue and the guest memory's region list
 * (GuestMemory.regions), reads the queue's public ring state (size, the three ring
 * addresses, next_avail, next_used, indirect), does its work with the GIL released, and
 * stores next_avail and next_used back. Used elements are written before used.idx
 * (virtio 1.2 §2.7.8.2); used.idx is stored only when ``publish`` is true (outside
 * VirtioDevice.process, whose publish_used stores it once per batch).
 *
 * Memory: each region's mmap is exported (a buffer view) for the length of the call, as a
 * Python view of it would be, so a region removed meanwhile stays mapped (GuestMemory
 * retires it) and nothing here points into unmapped memory. A ring is located in one
 * region from its guest-physical address, range-checked like a buffer.
 *
 * Atomicity and order (queue.py's module note): the 16-bit indexes are read and written
 * with one aligned 2-byte access; avail.idx is read with acquire order before the ring
 * entries, used.idx stored with release order after the used elements. A descriptor is
 * copied out of guest memory once, behind a compiler barrier, and only the copy is used.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>
#include <sys/uio.h>
#include <unistd.h>

/* §2.7.5 struct virtq_desc flags */
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4
#define DESC_SIZE 16
#define MAX_CHAIN_BYTES (UINT64_C(1) << 32)   /* §2.7.5.2 */
/* More buffers than preadv/writev take in one call (IOV_MAX): left to Python. */
#define IOV_CAP 1024

enum { CODE_EMPTY = 0, CODE_PYTHON = 1, CODE_HELD = 2, CODE_NO_BUFFERS = 3, CODE_BATCH = 4 };
enum { POP_OK, POP_EMPTY, POP_PYTHON };

/* virtio-blk, §5.2.6 */
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_HEADER 16
#define SECTOR 512
/* virtio-net, §5.1.6; net/device.py's ETH_HLEN and MAX_FRAME */
#define ETH_HLEN 14
#define MAX_FRAME (65535 + 14 + 4)
#define RX_CHAINS 64         /* receive chains one frame may fill here; more: Python */

static PyObject *str_size, *str_next_avail, *str_next_used, *str_indirect, *str_desc_addr,
	*str_avail_addr, *str_used_addr, *str_gpa, *str_mapping, *str_readonly;

#define barrier() __asm__ __volatile__("" ::: "memory")

/* --- guest memory ---------------------------------------------------------------------------- */

struct region {
	uint64_t gpa, size;
	uint8_t *host;
	int readonly;
};

struct guest {
	struct region *r;
	Py_buffer *views;
	Py_ssize_t n;
};

static void guest_release(struct guest *g)
{
	for (Py_ssize_t i = 0; i < g->n; i++)
		PyBuffer_Release(&g->views[i]);
	PyMem_Free(g->r);
	PyMem_Free(g->views);
	g->r = NULL;
	g->views = NULL;
	g->n = 0;
}

static int get_u64(PyObject *obj, PyObject *name, uint64_t *out)
{
	PyObject *v = PyObject_GetAttr(obj, name);
	if (v == NULL)
		return -1;
	unsigned long long x = PyLong_AsUnsignedLongLong(v);
	Py_DECREF(v);
	if (x == (unsigned long long)-1 && PyErr_Occurred())
		return -1;
	*out = x;
	return 0;
}

/* The regions of ``list`` with their mmaps exported; -1 with an exception. */
static int guest_acquire(PyObject *list, struct guest *g)
{
	g->n = 0;
	g->r = NULL;
	g->views = NULL;
	if (!PyList_Check(list)) {
		PyErr_SetString(PyExc_TypeError, "regions must be a list");
		return -1;
	}
	Py_ssize_t n = PyList_GET_SIZE(list);
	g->r = PyMem_Calloc(n ? n : 1, sizeof(*g->r));
	g->views = PyMem_Calloc(n ? n : 1, sizeof(*g->views));
	if (g->r == NULL || g->views == NULL) {
		guest_release(g);
		PyErr_NoMemory();
		return -1;
	}
	for (Py_ssize_t i = 0; i < n; i++) {
		PyObject *region = PyList_GET_ITEM(list, i);
		struct region *r = &g->r[i];
		uint64_t ro;
		if (get_u64(region, str_gpa, &r->gpa) < 0 || get_u64(region, str_size, &r->size) < 0 ||
		    get_u64(region, str_readonly, &ro) < 0)
			goto error;
		PyObject *mapping = PyObject_GetAttr(region, str_mapping);
		if (mapping == NULL)
			goto error;
		int rc = PyObject_GetBuffer(mapping, &g->views[g->n], PyBUF_SIMPLE);
		Py_DECREF(mapping);
		if (rc < 0)
			goto error;
		Py_buffer *view = &g->views[g->n++];
		r->host = view->buf;
		r->readonly = ro || view->readonly;
		if ((uint64_t)view->len < r->size)
			r->size = (uint64_t)view->len;
	}
	return 0;
error:
	guest_release(g);
	return -1;
}

/* The host address of [gpa, gpa+len) (len > 0) when it lies in one region, else NULL. */
static uint8_t *translate(const struct guest *g, uint64_t gpa, uint64_t len, int *readonly)
{
	for (Py_ssize_t i = 0; i < g->n; i++) {
		const struct region *r = &g->r[i];
		if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa)) {
			*readonly = r->readonly;
			return r->host + (gpa - r->gpa);
		}
	}
	return NULL;
}

/* --- the split ring ---------------------------------------------------------------------------- */

struct ring {
	uint8_t *desc, *avail, *used;
	uint32_t size;
	uint16_t next_avail, next_used;
	int indirect;
};

static inline uint16_t load16(const uint8_t *p)
{
	return __atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_ACQUIRE);
}

static inline void store16(uint8_t *p, uint16_t v)
{
	__atomic_store_n((uint16_t *)(void *)p, v, __ATOMIC_RELEASE);
}

static inline void store32(uint8_t *p, uint32_t v)
{
	__atomic_store_n((uint32_t *)(void *)p, v, __ATOMIC_RELAXED);
}

/*
 * The queue's ring state; 0 when the rings lie in guest RAM as the queue mapped them, 1 when
 * they cannot be reached here (the caller goes to Python), -1 with an exception.
 */
static int ring_acquire(PyObject *queue, const struct guest *g, struct ring *q)
{
	uint64_t size, next_avail, next_used, indirect, desc, avail, used;
	if (get_u64(queue, str_size, &size) < 0 || get_u64(queue, str_next_avail, &next_avail) < 0 ||
	    get_u64(queue, str_next_used, &next_used) < 0 ||
	    get_u64(queue, str_indirect, &indirect) < 0 || get_u64(queue, str_desc_addr, &desc) < 0 ||
	    get_u64(queue, str_avail_addr, &avail) < 0 || get_u64(queue, str_used_addr, &used) < 0)
		return -1;
	/* queue.check(): a power of two up to 32768, rings aligned 16, 2 and 4 (§2.7). */
	if (size == 0 || size > 32768 || size & (size - 1) || desc % 16 || avail % 2 || used % 4)
		return 1;
	int ro;
	q->size = (uint32_t)size;
	q->next_avail = (uint16_t)next_avail;
	q->next_used = (uint16_t)next_used;
	q->indirect = indirect != 0;
	q->desc = translate(g, desc, DESC_SIZE * size, &ro);
	q->avail = translate(g, avail, 6 + 2 * size, &ro);
	q->used = translate(g, used, 6 + 8 * size, &ro);
	if (q->desc == NULL || q->avail == NULL || q->used == NULL || ro)
		return 1;
	return 0;
}

static int ring_store(PyObject *queue, const struct ring *q)
{
	PyObject *a = PyLong_FromUnsignedLong(q->next_avail);
	PyObject *u = PyLong_FromUnsignedLong(q->next_used);
	int rc = -1;
	if (a != NULL && u != NULL && PyObject_SetAttr(queue, str_next_avail, a) == 0 &&
	    PyObject_SetAttr(queue, str_next_used, u) == 0)
		rc = 0;
	Py_XDECREF(a);
	Py_XDECREF(u);
	return rc;
}

struct chain {
	uint16_t head;
	int nr, nw;                  /* buffers with bytes, device-readable and -writable */
	uint64_t rlen, wlen;
	struct iovec r[IOV_CAP], w[IOV_CAP];
};

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};

static inline void read_desc(const uint8_t *p, struct desc *d)
{
	uint8_t raw[DESC_SIZE];
	memcpy(raw, p, DESC_SIZE);
	barrier();   /* the copy is what is checked and used: the driver may change the table */
	memcpy(&d->addr, raw, 8);
	memcpy(&d->len, raw + 8, 4);
	memcpy(&d->flags, raw + 12, 2);
	memcpy(&d->next, raw + 14, 2);
}

/* queue.pending(): -1 for avail.idx more than the size ahead (the caller goes to Python). */
static int pending(const struct ring *q)
{
	uint16_t n = (uint16_t)(load16(q->avail + 2) - q->next_avail);
	return n > q->size ? -1 : n;
}

/*
 * VirtQueue.pop without the views: the chain at next_avail walked by chain.walk's rules and
 * its buffers translated by map_buffers' (one region each, a device-writable one not in
 * read-only memory). POP_PYTHON, nothing consumed, for anything else.
 */
static int pop(struct ring *q, const struct guest *g, struct chain *c)
{
	int avail = pending(q);
	if (avail < 0)
		return POP_PYTHON;
	if (avail == 0)
		return POP_EMPTY;
	uint16_t head = load16(q->avail + 4 + 2 * (q->next_avail % q->size));
	if (head >= q->size)
		return POP_PYTHON;
	const uint8_t *table = q->desc;
	uint32_t entries = q->size, budget = q->size, i = head;
	int in_indirect = 0, seen_write = 0, ro;
	uint64_t total = 0;
	c->head = head;
	c->nr = c->nw = 0;
	c->rlen = c->wlen = 0;
	for (;;) {
		if (i >= entries || budget == 0)
			return POP_PYTHON;
		budget--;
		struct desc d;
		read_desc(table + (size_t)DESC_SIZE * i, &d);
		if (d.flags & F_INDIRECT) {
			/* §2.7.5.3.1 */
			if (in_indirect || !q->indirect || d.flags & F_NEXT)
				return POP_PYTHON;
			if (d.len == 0 || d.len % DESC_SIZE || d.len / DESC_SIZE > q->size)
				return POP_PYTHON;
			table = translate(g, d.addr, d.len, &ro);
			if (table == NULL)
				return POP_PYTHON;
			entries = budget = d.len / DESC_SIZE;
			in_indirect = 1;
			i = 0;
			continue;
		}
		int writable = (d.flags & F_WRITE) != 0;
		if (seen_write && !writable)   /* §2.7.4.2 */
			return POP_PYTHON;
		seen_write |= writable;
		total += d.len;
		if (total > MAX_CHAIN_BYTES)
			return POP_PYTHON;
		if (d.len) {
			uint8_t *host = translate(g, d.addr, d.len, &ro);
			if (host == NULL || (writable && ro))
				return POP_PYTHON;
			if (writable) {
				if (c->nw == IOV_CAP)
					return POP_PYTHON;
				c->w[c->nw].iov_base = host;
				c->w[c->nw++].iov_len = d.len;
				c->wlen += d.len;
			} else {
				if (c->nr == IOV_CAP)
					return POP_PYTHON;
				c->r[c->nr].iov_base = host;
				c->r[c->nr++].iov_len = d.len;
				c->rlen += d.len;
			}
		}
		if (!(d.flags & F_NEXT))
			break;
		i = d.next;
	}
	q->next_avail++;
	return POP_OK;
}

/* VirtQueue.add_used: the element, not used.idx. */
static void put_used(struct ring *q, uint16_t head, uint32_t len)
{
	uint8_t *e = q->used + 4 + 8 * (q->next_used % q->size);
	store32(e, head);
	store32(e + 4, len);
	q->next_used++;
}

static void publish(struct ring *q)
{
	store16(q->used + 2, q->next_used);
}

/* --- scatter lists ------------------------------------------------------------------------------ */

/* ``n`` bytes from the front of ``iov`` into ``dst`` (at most what it holds); bytes copied. */
static size_t iov_read(const struct iovec *iov, int cnt, void *dst, size_t n)
{
	size_t done = 0;
	for (int i = 0; i < cnt && done < n; i++) {
		size_t k = iov[i].iov_len < n - done ? iov[i].iov_len : n - done;
		memcpy((uint8_t *)dst + done, iov[i].iov_base, k);
		done += k;
	}
	barrier();
	return done;
}

/* The scatter list ``iov`` without its first ``skip`` bytes, into ``out``; its count. */
static int iov_skip(const struct iovec *iov, int cnt, size_t skip, struct iovec *out)
{
	int n = 0;
	for (int i = 0; i < cnt; i++) {
		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		out[n].iov_base = (uint8_t *)iov[i].iov_base + skip;
		out[n++].iov_len = iov[i].iov_len - skip;
		skip = 0;
	}
	return n;
}

/* Copy ``len`` bytes of ``src`` to ``iov`` from byte ``at`` on; bytes copied. */
static size_t iov_write(struct iovec *iov, int cnt, size_t at, const void *src, size_t len)
{
	size_t done = 0;
	for (int i = 0; i < cnt && done < len; i++) {
		if (at >= iov[i].iov_len) {
			at -= iov[i].iov_len;
			continue;
		}
		size_t room = iov[i].iov_len - at;
		size_t k = room < len - done ? room : len - done;
		memcpy((uint8_t *)iov[i].iov_base + at, (const uint8_t *)src + done, k);
		done += k;
		at = 0;
	}
	return done;
}

/* preadv/pwritev of the whole list at ``offset``: 0, or -1 (an error, a short transfer). */
static int rw_all(int write, int fd, struct iovec *iov, int cnt, uint64_t offset)
{
	while (cnt) {
		ssize_t n = write ? pwritev(fd, iov, cnt, (off_t)offset)
				  : preadv(fd, iov, cnt, (off_t)offset);
		if (n <= 0)
			return -1;
		offset += (uint64_t)n;
		size_t left = (size_t)n;
		while (cnt && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt) {
			iov->iov_base = (uint8_t *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return 0;
}

static int as_fd(PyObject *obj)
{
	long fd = PyLong_AsLong(obj);
	if (fd == -1 && PyErr_Occurred())
		return -1;
	if (fd < 0 || fd > INT32_MAX) {
		PyErr_SetString(PyExc_ValueError, "fd must be a file descriptor");
		return -1;
	}
	return (int)fd;
}

/* --- the calls ----------------------------------------------------------------------------------- */

struct call {
	struct guest g;
	struct ring q;
	struct chain *c;
};

/* 0 ready; 1 not servable here (PYTHON); -1 error. */
static int call_begin(PyObject *queue, PyObject *regions, struct call *k, int chains)
{
	k->c = NULL;
	if (guest_acquire(regions, &k->g) < 0)
		return -1;
	int rc = ring_acquire(queue, &k->g, &k->q);
	if (rc != 0) {
		guest_release(&k->g);
		return rc;
	}
	k->c = PyMem_Malloc(sizeof(struct chain) * (size_t)chains);
	if (k->c == NULL) {
		guest_release(&k->g);
		PyErr_NoMemory();
		return -1;
	}
	return 0;
}

static int call_end(PyObject *queue, struct call *k)
{
	PyMem_Free(k->c);
	guest_release(&k->g);
	return ring_store(queue, &k->q);
}

#define BEGIN(nchains)                                                    \
	struct call k;                                                    \
	int begun = call_begin(queue, regions, &k, (nchains));            \
	if (begun < 0)                                                    \
		return NULL;                                              \
	if (begun > 0)                                                    \
		return Py_BuildValue("(iKKK)", CODE_PYTHON, 0ULL, 0ULL, 0ULL)

#define END(code, a, b, c)                                                \
	if (call_end(queue, &k) < 0)                                      \
		return NULL;                                              \
	return Py_BuildValue("(iKKK)", (code), (unsigned long long)(a),   \
			     (unsigned long long)(b), (unsigned long long)(c))

/*
 * blk(queue, regions, fd, capacity, readonly, publish) -> (code, served, 0, 0)
 *
 * VirtioBlk._serve for IN, OUT and FLUSH requests that complete with VIRTIO_BLK_S_OK;
 * anything else (another type, an error of the image, a request out of the disk, data in the
 * wrong direction, no status byte, a header shorter than 16 bytes) goes to Python, whose
 * retry of a failed read or write at the same offset is harmless.
 */
static PyObject *dp_blk(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 6) {
		PyErr_SetString(PyExc_TypeError, "blk(queue, regions, fd, capacity, readonly, publish)");
		return NULL;
	}
	PyObject *queue = args[0], *regions = args[1];
	int fd = as_fd(args[2]);
	unsigned long long capacity = PyLong_AsUnsignedLongLong(args[3]);
	int readonly = PyObject_IsTrue(args[4]), pub = PyObject_IsTrue(args[5]);
	if (PyErr_Occurred())
		return NULL;
	BEGIN(1);
	struct chain *c = k.c;
	struct ring *q = &k.q;
	uint64_t served = 0;
	int code = CODE_EMPTY;
	static __thread struct iovec data[IOV_CAP];
	Py_BEGIN_ALLOW_THREADS
	for (uint32_t left = q->size; left; left--) {
		uint16_t saved = q->next_avail;
		int got = pop(q, &k.g, c);
		if (got != POP_OK) {
			code = got == POP_EMPTY ? CODE_EMPTY : CODE_PYTHON;
			break;
		}
		code = CODE_PYTHON;
		/* The header: the first 16 device-readable bytes; the status: the last writable. */
		uint8_t header[BLK_HEADER];
		if (c->wlen == 0 || iov_read(c->r, c->nr, header, BLK_HEADER) < BLK_HEADER) {
			q->next_avail = saved;
			break;
		}
		uint32_t type;
		uint64_t sector;
		memcpy(&type, header, 4);
		memcpy(&sector, header + 8, 8);
		struct iovec *st = &c->w[c->nw - 1];
		uint8_t *status = (uint8_t *)st->iov_base + st->iov_len - 1;
		st->iov_len--;     /* the data's list: every writable byte but the status */
		uint64_t in_len = c->wlen - 1, out_len = c->rlen - BLK_HEADER;
		int nin = c->nw, nout = iov_skip(c->r, c->nr, BLK_HEADER, data);
		uint32_t written = 1;
		int failed = 0;
		if (type == BLK_T_IN || type == BLK_T_OUT) {
			int in = type == BLK_T_IN;
			uint64_t len = in ? in_len : out_len;
			if ((in ? out_len : in_len) || (!in && readonly) || len % SECTOR ||
			    sector > capacity || len / SECTOR > capacity - sector)
				failed = 1;
			else if (len == 0)
				failed = 0;
			else if (in)
				failed = rw_all(0, fd, c->w, nin, sector * SECTOR) < 0;
			else
				failed = rw_all(1, fd, data, nout, sector * SECTOR) < 0;
			if (in)
				written += (uint32_t)in_len;
		} else if (type == BLK_T_FLUSH) {
			failed = fdatasync(fd) < 0;
		} else {
			failed = 1;
		}
		if (failed) {
			q->next_avail = saved;
			break;
		}
		*status = 0;   /* VIRTIO_BLK_S_OK */
		put_used(q, c->head, written);
		served++;
		code = CODE_EMPTY;
	}
	if (pub)
		publish(q);
	Py_END_ALLOW_THREADS
	END(code, served, 0, 0);
}

/*
 * net_tx(queue, regions, fd, hdr_len, publish) -> (code, packets, bytes, 0)
 *
 * VirtioNet.handle's transmit for frames of ETH_HLEN to MAX_FRAME bytes behind a whole
 * header: writev(2) to ``fd`` (a TAP, or a connected datagram socket, where it is send(2)).
 * A frame the backend refuses goes to Python, which sends it again and decides.
 */
static PyObject *dp_net_tx(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 5) {
		PyErr_SetString(PyExc_TypeError, "net_tx(queue, regions, fd, hdr_len, publish)");
		return NULL;
	}
	PyObject *queue = args[0], *regions = args[1];
	int fd = as_fd(args[2]);
	long hdr_len = PyLong_AsLong(args[3]);
	int pub = PyObject_IsTrue(args[4]);
	if (PyErr_Occurred())
		return NULL;
	BEGIN(1);
	struct chain *c = k.c;
	struct ring *q = &k.q;
	uint64_t packets = 0, bytes = 0;
	int code = CODE_EMPTY;
	static __thread struct iovec frame[IOV_CAP];
	Py_BEGIN_ALLOW_THREADS
	for (uint32_t left = q->size; left; left--) {
		uint16_t saved = q->next_avail;
		int got = pop(q, &k.g, c);
		if (got != POP_OK) {
			code = got == POP_EMPTY ? CODE_EMPTY : CODE_PYTHON;
			break;
		}
		uint64_t size = c->rlen - (uint64_t)hdr_len;
		if (c->rlen < (uint64_t)hdr_len || size > MAX_FRAME || size < ETH_HLEN) {
			q->next_avail = saved;
			code = CODE_PYTHON;
			break;
		}
		int n = iov_skip(c->r, c->nr, (size_t)hdr_len, frame);
		if (writev(fd, frame, n) < 0) {
			q->next_avail = saved;
			code = CODE_PYTHON;
			break;
		}
		put_used(q, c->head, 0);
		packets++;
		bytes += size;
	}
	if (pub)
		publish(q);
	Py_END_ALLOW_THREADS
	END(code, packets, bytes, 0);
}

/*
 * net_rx(queue, regions, fd, frame, hdr_len, mergeable, max_used)
 *     -> (code, packets, bytes, held)
 *
 * VirtioNet._rx_service's loop: read(2) a frame from ``fd`` into ``frame`` (a bytearray of
 * MAX_FRAME + 1 bytes) and deliver it to as many receive chains as it needs (one without
 * mergeable buffers), the header zeros and num_buffers (§5.1.6.4), each frame's chains
 * published together (§5.1.6.4.2). Stops with EMPTY when no frame waits or read fails
 * (nothing read: Python reads again and decides), NO_BUFFERS when the driver has no chain
 * before a read, BATCH after ``max_used`` used elements, HELD with the frame's length when
 * a frame was read that Python must take from here (too short or long, too few buffers,
 * a chain for Python).
 */
static PyObject *dp_net_rx(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 7) {
		PyErr_SetString(PyExc_TypeError,
				"net_rx(queue, regions, fd, frame, hdr_len, mergeable, max_used)");
		return NULL;
	}
	PyObject *queue = args[0], *regions = args[1];
	int fd = as_fd(args[2]);
	long hdr_len = PyLong_AsLong(args[4]);
	int mergeable = PyObject_IsTrue(args[5]);
	long max_used = PyLong_AsLong(args[6]);
	if (PyErr_Occurred())
		return NULL;
	if (hdr_len < 10 || hdr_len > 12) {
		PyErr_SetString(PyExc_ValueError, "hdr_len must be 10 or 12");
		return NULL;
	}
	Py_buffer buf;
	if (PyObject_GetBuffer(args[3], &buf, PyBUF_WRITABLE) < 0)
		return NULL;
	if (buf.len < MAX_FRAME + 1) {
		PyBuffer_Release(&buf);
		PyErr_SetString(PyExc_ValueError, "frame must hold MAX_FRAME + 1 bytes");
		return NULL;
	}
	struct call k;
	int begun = call_begin(queue, regions, &k, 1);
	if (begun != 0) {
		PyBuffer_Release(&buf);
		if (begun < 0)
			return NULL;
		return Py_BuildValue("(iKKK)", CODE_PYTHON, 0ULL, 0ULL, 0ULL);
	}
	struct ring *q = &k.q;
	struct chain *c = k.c;
	uint64_t packets = 0, bytes = 0, held = 0;
	int code = CODE_BATCH;
	uint16_t start = q->next_used;
	/* One frame's chains: their heads and writable buffers (a slice of ``pool`` each). */
	static __thread struct iovec pool[IOV_CAP];
	struct { uint16_t head; int first, n; } rec[RX_CHAINS];
	Py_BEGIN_ALLOW_THREADS
	while ((uint16_t)(q->next_used - start) < max_used) {
		int avail = pending(q);
		if (avail <= 0) {
			code = avail < 0 ? CODE_PYTHON : CODE_NO_BUFFERS;
			break;
		}
		ssize_t n = read(fd, buf.buf, (size_t)buf.len);
		if (n < 0) {
			/* EAGAIN: none waits; an error: Python's own read meets it again. */
			code = errno == EAGAIN || errno == EWOULDBLOCK ? CODE_EMPTY : CODE_PYTHON;
			break;
		}
		code = CODE_HELD;
		held = (uint64_t)n;
		if (n < ETH_HLEN || n > MAX_FRAME)
			break;
		uint64_t need = (uint64_t)hdr_len + (uint64_t)n, room = 0;
		uint16_t saved = q->next_avail;
		int nc = 0, used_iov = 0, ok = 1;
		while (room < need) {
			if (nc == RX_CHAINS || pop(q, &k.g, c) != POP_OK ||
			    c->nw > IOV_CAP - used_iov) {
				ok = 0;
				break;
			}
			memcpy(&pool[used_iov], c->w, sizeof(struct iovec) * (size_t)c->nw);
			rec[nc].head = c->head;
			rec[nc].first = used_iov;
			rec[nc++].n = c->nw;
			used_iov += c->nw;
			room += c->wlen;
			/* _deliver's rule: one chain without MRG_RXBUF (§5.1.6.3.1), the header in
			 * the first, the frame within the whole queue. */
			if ((room < need && (!mergeable || (uint32_t)nc == q->size)) ||
			    room < (uint64_t)hdr_len) {
				ok = 0;
				break;
			}
		}
		if (!ok) {
			q->next_avail = saved;   /* VirtQueue.unpop: Python takes the frame */
			break;
		}
		uint8_t header[12] = {0};
		uint16_t nbuf = (uint16_t)nc;
		memcpy(header + 10, &nbuf, 2);
		size_t hdone = 0, fdone = 0;
		for (int i = 0; i < nc; i++) {
			struct iovec *w = &pool[rec[i].first];
			size_t at = 0;
			if (hdone < (size_t)hdr_len) {
				at = iov_write(w, rec[i].n, 0, header + hdone, (size_t)hdr_len - hdone);
				hdone += at;
			}
			size_t m = iov_write(w, rec[i].n, at, (uint8_t *)buf.buf + fdone,
					     (size_t)n - fdone);
			fdone += m;
			put_used(q, rec[i].head, (uint32_t)(at + m));
		}
		publish(q);   /* §5.1.6.4.2: the frame's num_buffers elements together */
		packets++;
		bytes += (uint64_t)n;
		held = 0;
		code = CODE_BATCH;
	}
	Py_END_ALLOW_THREADS
	PyBuffer_Release(&buf);
	END(code, packets, bytes, held);
}

/*
 * rng(queue, regions, max_request, publish) -> (code, requests, bytes, 0)
 *
 * VirtioRng.handle: each chain's writable buffers get up to ``max_request`` bytes of
 * getrandom(2).
 */
static PyObject *dp_rng(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 4) {
		PyErr_SetString(PyExc_TypeError, "rng(queue, regions, max_request, publish)");
		return NULL;
	}
	PyObject *queue = args[0], *regions = args[1];
	long long max_request = PyLong_AsLongLong(args[2]);
	int pub = PyObject_IsTrue(args[3]);
	if (PyErr_Occurred())
		return NULL;
	BEGIN(1);
	struct chain *c = k.c;
	struct ring *q = &k.q;
	uint64_t requests = 0, bytes = 0;
	int code = CODE_EMPTY;
	Py_BEGIN_ALLOW_THREADS
	for (uint32_t left = q->size; left; left--) {
		uint16_t saved = q->next_avail;
		int got = pop(q, &k.g, c);
		if (got != POP_OK) {
			code = got == POP_EMPTY ? CODE_EMPTY : CODE_PYTHON;
			break;
		}
		uint64_t done = 0;
		int failed = 0;
		for (int i = 0; i < c->nw && (long long)done < max_request; i++) {
			size_t want = c->w[i].iov_len;
			if ((long long)want > max_request - (long long)done)
				want = (size_t)(max_request - (long long)done);
			size_t got_bytes = 0;
			while (got_bytes < want) {
				ssize_t r = getrandom((uint8_t *)c->w[i].iov_base + got_bytes,
						      want - got_bytes, 0);
				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					failed = 1;
					break;
				}
				got_bytes += (size_t)r;
			}
			if (failed)
				break;
			done += want;
		}
		if (failed) {
			q->next_avail = saved;
			code = CODE_PYTHON;
			break;
		}
		put_used(q, c->head, (uint32_t)done);
		requests++;
		bytes += done;
	}
	if (pub)
		publish(q);
	Py_END_ALLOW_THREADS
	END(code, requests, bytes, 0);
}

/*
 * gather(queue, regions, limit, publish) -> (code, chains, data)
 *
 * VirtioConsole's transmit: every chain's device-readable bytes, concatenated, each chain
 * given back with 0 bytes written; a chain that would take ``data`` past ``limit`` bytes
 * stays available (PYTHON: Python takes it).
 */
static PyObject *dp_gather(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 4) {
		PyErr_SetString(PyExc_TypeError, "gather(queue, regions, limit, publish)");
		return NULL;
	}
	PyObject *queue = args[0], *regions = args[1];
	Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
	int pub = PyObject_IsTrue(args[3]);
	if (PyErr_Occurred())
		return NULL;
	if (limit < 0) {
		PyErr_SetString(PyExc_ValueError, "limit must not be negative");
		return NULL;
	}
	struct call k;
	int begun = call_begin(queue, regions, &k, 1);
	if (begun < 0)
		return NULL;
	if (begun > 0)
		return Py_BuildValue("(iKy#)", CODE_PYTHON, 0ULL, "", (Py_ssize_t)0);
	uint8_t *out = PyMem_RawMalloc(limit ? (size_t)limit : 1);
	if (out == NULL) {
		call_end(queue, &k);
		return PyErr_NoMemory();
	}
	struct chain *c = k.c;
	struct ring *q = &k.q;
	uint64_t chains = 0;
	size_t len = 0;
	int code = CODE_EMPTY;
	Py_BEGIN_ALLOW_THREADS
	for (uint32_t left = q->size; left; left--) {
		uint16_t saved = q->next_avail;
		int got = pop(q, &k.g, c);
		if (got != POP_OK) {
			code = got == POP_EMPTY ? CODE_EMPTY : CODE_PYTHON;
			break;
		}
		if (c->rlen > (uint64_t)limit - len) {
			q->next_avail = saved;
			code = CODE_PYTHON;
			break;
		}
		len += iov_read(c->r, c->nr, out + len, (size_t)c->rlen);
		put_used(q, c->head, 0);
		chains++;
	}
	if (pub)
		publish(q);
	Py_END_ALLOW_THREADS
	PyObject *data = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)len);
	PyMem_RawFree(out);
	if (call_end(queue, &k) < 0 || data == NULL) {
		Py_XDECREF(data);
		return NULL;
	}
	return Py_BuildValue("(iKN)", code, (unsigned long long)chains, data);
}

/*
 * fill(queue, regions, data, publish) -> (code, chains, bytes, 0)
 *
 * One chain (VirtioConsole's receive): the front of ``data`` copied to its writable
 * buffers, given back with the bytes copied.
 */
static PyObject *dp_fill(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
	(void)mod;
	if (nargs != 4) {
		PyErr_SetString(PyExc_TypeError, "fill(queue, regions, data, publish)");
		return NULL;
	}
	PyObject *queue = args[0], *regions = args[1];
	int pub = PyObject_IsTrue(args[3]);
	if (pub < 0)
		return NULL;
	Py_buffer src;
	if (PyObject_GetBuffer(args[2], &src, PyBUF_SIMPLE) < 0)
		return NULL;
	struct call k;
	int begun = call_begin(queue, regions, &k, 1);
	if (begun != 0) {
		PyBuffer_Release(&src);
		if (begun < 0)
			return NULL;
		return Py_BuildValue("(iKKK)", CODE_PYTHON, 0ULL, 0ULL, 0ULL);
	}
	struct chain *c = k.c;
	struct ring *q = &k.q;
	uint64_t chains = 0, bytes = 0;
	int code;
	Py_BEGIN_ALLOW_THREADS
	int got = pop(q, &k.g, c);
	code = got == POP_OK ? CODE_BATCH : got == POP_EMPTY ? CODE_EMPTY : CODE_PYTHON;
	if (got == POP_OK) {
		bytes = iov_write(c->w, c->nw, 0, src.buf, (size_t)src.len);
		put_used(q, c->head, (uint32_t)bytes);
		chains = 1;
		if (pub)
			publish(q);
	}
	Py_END_ALLOW_THREADS
	PyBuffer_Release(&src);
	END(code, chains, bytes, 0);
}

/* queue.fence(): a full barrier (mfence), with no lock to take. */
static PyObject *dp_fence(PyObject *mod, PyObject *unused)
{
	(void)mod;
	(void)unused;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
	{"fence", dp_fence, METH_NOARGS, "fence() -> None: a full memory barrier"},
	{"blk", (PyCFunction)(void (*)(void))dp_blk, METH_FASTCALL,
	 "blk(queue, regions, fd, capacity, readonly, publish) -> (code, served, 0, 0)"},
	{"net_tx", (PyCFunction)(void (*)(void))dp_net_tx, METH_FASTCALL,
	 "net_tx(queue, regions, fd, hdr_len, publish) -> (code, packets, bytes, 0)"},
	{"net_rx", (PyCFunction)(void (*)(void))dp_net_rx, METH_FASTCALL,
	 "net_rx(queue, regions, fd, frame, hdr_len, mergeable, max_used) -> "
	 "(code, packets, bytes, held)"},
	{"rng", (PyCFunction)(void (*)(void))dp_rng, METH_FASTCALL,
	 "rng(queue, regions, max_request, publish) -> (code, requests, bytes, 0)"},
	{"gather", (PyCFunction)(void (*)(void))dp_gather, METH_FASTCALL,
	 "gather(queue, regions, limit, publish) -> (code, chains, data)"},
	{"fill", (PyCFunction)(void (*)(void))dp_fill, METH_FASTCALL,
	 "fill(queue, regions, data, publish) -> (code, chains, bytes, 0)"},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
	PyModuleDef_HEAD_INIT,
	.m_name = "xinterface._dataplane",
	.m_doc = "The compiled virtio data path of the built-in devices (see xinterface.virtio.queue).",
	.m_size = -1,
	.m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__dataplane(void)
{
#define INTERN(var, text) \
	do { if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL; } while (0)
	INTERN(str_size, "size");
	INTERN(str_next_avail, "next_avail");
	INTERN(str_next_used, "next_used");
	INTERN(str_indirect, "indirect");
	INTERN(str_desc_addr, "desc_addr");
	INTERN(str_avail_addr, "avail_addr");
	INTERN(str_used_addr, "used_addr");
	INTERN(str_gpa, "gpa");
	INTERN(str_mapping, "mapping");
	INTERN(str_readonly, "readonly");
#undef INTERN
	PyObject *m = PyModule_Create(&module_def);
	if (m == NULL)
		return NULL;
	if (PyModule_AddIntConstant(m, "EMPTY", CODE_EMPTY) < 0 ||
	    PyModule_AddIntConstant(m, "PYTHON", CODE_PYTHON) < 0 ||
	    PyModule_AddIntConstant(m, "HELD", CODE_HELD) < 0 ||
	    PyModule_AddIntConstant(m, "NO_BUFFERS", CODE_NO_BUFFERS) < 0 ||
	    PyModule_AddIntConstant(m, "BATCH", CODE_BATCH) < 0) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
