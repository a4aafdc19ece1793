/*
 * The floor: the same guest loop as xinterface's benchmarks, driven by a minimal C VMM.
 *
 *   floor MODE COUNT     MODE: pio | mmio | coalesced-pio | coalesced-mmio | eventfd-pio
 *
 * The guest, in 32-bit protected mode with flat segments, does COUNT writes in a two-
 * instruction loop, then hlt. pio/mmio: every write exits to userspace and this loop
 * handles it minimally (reads the payload). coalesced-*: the address is a coalesced zone,
 * writes go to the ring; the loop drains it after each exit and at the end. eventfd-pio:
 * the port is an ioeventfd; the counter is read once at the end.
 * Prints one line of JSON. Exit status 2: the kernel lacks the mode's capability.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE   0x200000
#define CODE_GPA   0x1000
#define PORT       0x3ff
#define MMIO_ADDR  0xd0000000u

static void die(const char *what)
{
	fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int xioctl(int fd, unsigned long req, unsigned long arg, const char *name)
{
	int r = ioctl(fd, req, arg);
	if (r < 0)
		die(name);
	return r;
}

static void need(int kvm, int cap, const char *name)
{
	if (ioctl(kvm, KVM_CHECK_EXTENSION, cap) <= 0) {
		fprintf(stderr, "floor: the kernel lacks %s\n", name);
		exit(2);
	}
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static uint64_t drain(struct kvm_coalesced_mmio_ring *ring, unsigned max)
{
	uint64_t n = 0;
	while (ring->first != ring->last) {
		struct kvm_coalesced_mmio *e = &ring->coalesced_mmio[ring->first];
		volatile uint8_t sink = e->data[0]; /* touch the payload, as a handler would */
		(void)sink;
		__sync_synchronize();
		ring->first = (ring->first + 1) % max;
		n++;
	}
	return n;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: floor pio|mmio|coalesced-pio|coalesced-mmio|eventfd-pio COUNT\n");
		return 64;
	}
	const char *mode = argv[1];
	uint32_t count = (uint32_t)strtoul(argv[2], NULL, 0);
	int is_mmio = strstr(mode, "mmio") != NULL;
	int coalesced = strncmp(mode, "coalesced-", 10) == 0;
	int eventfd_mode = strcmp(mode, "eventfd-pio") == 0;
	if (strcmp(mode, "pio") && strcmp(mode, "mmio") && strcmp(mode, "coalesced-pio") &&
	    strcmp(mode, "coalesced-mmio") && !eventfd_mode) {
		fprintf(stderr, "floor: unknown mode %s\n", mode);
		return 64;
	}

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	if (coalesced)
		need(kvm, is_mmio ? KVM_CAP_COALESCED_MMIO : KVM_CAP_COALESCED_PIO,
		     is_mmio ? "KVM_CAP_COALESCED_MMIO" : "KVM_CAP_COALESCED_PIO");
	if (eventfd_mode)
		need(kvm, KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD");
	int vm = xioctl(kvm, KVM_CREATE_VM, 0, "KVM_CREATE_VM");
	if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SET_TSS_ADDR) > 0)
		xioctl(vm, KVM_SET_TSS_ADDR, 0xfeffd000, "KVM_SET_TSS_ADDR");

	uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			    -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	/* The loop of xinterface/bench/guests/pio_loop.S and mmio_loop.S, assembled. */
	uint8_t pio_code[] = {
		0xb9, 0, 0, 0, 0,          /* mov $COUNT, %ecx */
		0xba, PORT & 0xff, PORT >> 8, 0, 0, /* mov $PORT, %edx */
		0xb0, 0x41,                /* mov $0x41, %al */
		0xee,                      /* 1: out %al, (%dx) */
		0xe2, 0xfd,                /* loop 1b */
		0xf4,                      /* hlt */
	};
	uint8_t mmio_code[] = {
		0xb9, 0, 0, 0, 0,          /* mov $COUNT, %ecx */
		0xbb, 0, 0, 0, 0,          /* mov $MMIO_ADDR, %ebx */
		0xb8, 0x41, 0, 0, 0,       /* mov $0x41, %eax */
		0x89, 0x03,                /* 1: mov %eax, (%ebx) */
		0xe2, 0xfc,                /* loop 1b */
		0xf4,                      /* hlt */
	};
	uint32_t mmio_addr = MMIO_ADDR;
	memcpy(pio_code + 1, &count, 4);
	memcpy(mmio_code + 1, &count, 4);
	memcpy(mmio_code + 6, &mmio_addr, 4);
	if (is_mmio)
		memcpy(mem + CODE_GPA, mmio_code, sizeof(mmio_code));
	else
		memcpy(mem + CODE_GPA, pio_code, sizeof(pio_code));

	struct kvm_userspace_memory_region region = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
		.userspace_addr = (uint64_t)(uintptr_t)mem,
	};
	xioctl(vm, KVM_SET_USER_MEMORY_REGION, (unsigned long)&region, "KVM_SET_USER_MEMORY_REGION");

	int efd = -1;
	if (coalesced) {
		struct kvm_coalesced_mmio_zone zone = {
			.addr = is_mmio ? MMIO_ADDR : PORT, .size = is_mmio ? 4 : 1,
		};
		zone.pio = !is_mmio;
		xioctl(vm, KVM_REGISTER_COALESCED_MMIO, (unsigned long)&zone,
		       "KVM_REGISTER_COALESCED_MMIO");
	}
	if (eventfd_mode) {
		efd = eventfd(0, EFD_CLOEXEC);
		if (efd < 0)
			die("eventfd");
		struct kvm_ioeventfd io = {
			.addr = PORT, .len = 1, .fd = efd, .flags = KVM_IOEVENTFD_FLAG_PIO,
		};
		xioctl(vm, KVM_IOEVENTFD, (unsigned long)&io, "KVM_IOEVENTFD");
	}

	int vcpu = xioctl(vm, KVM_CREATE_VCPU, 0, "KVM_CREATE_VCPU");
	int run_size = xioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
	struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap vcpu");
	struct kvm_coalesced_mmio_ring *ring =
		(void *)((uint8_t *)run + KVM_COALESCED_MMIO_PAGE_OFFSET * 4096);
	unsigned ring_max = (4096 - sizeof(*ring)) / sizeof(struct kvm_coalesced_mmio);

	struct { struct kvm_cpuid2 head; struct kvm_cpuid_entry2 e[256]; } cpuid = {
		.head.nent = 256,
	};
	xioctl(kvm, KVM_GET_SUPPORTED_CPUID, (unsigned long)&cpuid, "KVM_GET_SUPPORTED_CPUID");
	xioctl(vcpu, KVM_SET_CPUID2, (unsigned long)&cpuid, "KVM_SET_CPUID2");

	struct kvm_sregs sregs;
	xioctl(vcpu, KVM_GET_SREGS, (unsigned long)&sregs, "KVM_GET_SREGS");
	struct kvm_segment code = {
		.base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11, .present = 1,
		.db = 1, .s = 1, .g = 1,
	};
	struct kvm_segment data = code;
	data.selector = 0x10;
	data.type = 3;
	sregs.cs = code;
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
	sregs.cr0 |= 1; /* PE */
	xioctl(vcpu, KVM_SET_SREGS, (unsigned long)&sregs, "KVM_SET_SREGS");
	struct kvm_regs regs = { .rip = CODE_GPA, .rsp = CODE_GPA, .rflags = 2 };
	xioctl(vcpu, KVM_SET_REGS, (unsigned long)&regs, "KVM_SET_REGS");

	uint64_t exits = 0, drained = 0, start = now_ns();
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR)
				continue;
			die("KVM_RUN");
		}
		exits++;
		if (coalesced)
			drained += drain(ring, ring_max);
		if (run->exit_reason == KVM_EXIT_IO) {
			volatile uint8_t sink = ((uint8_t *)run)[run->io.data_offset];
			(void)sink;
		} else if (run->exit_reason == KVM_EXIT_MMIO) {
			volatile uint8_t sink = run->mmio.data[0];
			(void)sink;
		} else if (run->exit_reason == KVM_EXIT_HLT) {
			break;
		} else {
			fprintf(stderr, "floor: unexpected exit %u\n", run->exit_reason);
			return 1;
		}
	}
	uint64_t elapsed = now_ns() - start;
	if (coalesced)
		drained += drain(ring, ring_max);
	uint64_t signalled = 0;
	if (eventfd_mode && read(efd, &signalled, sizeof(signalled)) != sizeof(signalled))
		die("read eventfd");
	printf("{\"mode\": \"%s\", \"count\": %u, \"ns_total\": %llu, \"ns_per_write\": %.1f, "
	       "\"exits\": %llu, \"drained\": %llu, \"signalled\": %llu}\n",
	       mode, count, (unsigned long long)elapsed, (double)elapsed / count,
	       (unsigned long long)exits, (unsigned long long)drained,
	       (unsigned long long)signalled);
	return 0;
}
