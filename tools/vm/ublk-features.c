// tools/vm/ublk-features.c: print the feature flags of the running ublk driver.
//
// Sends UBLK_U_CMD_GET_FEATURES to /dev/ublk-control as an io_uring
// URING_CMD (128-byte SQE), using raw syscalls so no liburing is needed.
// Prints "features 0x..." and one line per known UBLK_F_* bit.
// Exit status: 0 on success, 1 on any failure (message on stderr).
// Build: cc -O2 -o ublk-features ublk-features.c (setup.sh does this).
#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/ublk_cmd.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

// Opcode 0x13 of the control commands (linux/ublk_cmd.h since 6.5).
#define GET_FEATURES_OP _IOR('u', 0x13, struct ublksrv_ctrl_cmd)

static const char *const flag_names[] = {
    "SUPPORT_ZERO_COPY", "URING_CMD_COMP_IN_TASK", "NEED_GET_DATA",
    "USER_RECOVERY", "USER_RECOVERY_REISSUE", "UNPRIVILEGED_DEV",
    "CMD_IOCTL_ENCODE", "USER_COPY", "ZONED", "USER_RECOVERY_FAIL_IO",
    "UPDATE_SIZE", "AUTO_BUF_REG", "QUIESCE", "PER_IO_DAEMON",
    "BUF_REG_OFF_DAEMON", "BATCH_IO", "INTEGRITY", "SAFE_STOP_DEV",
    "NO_AUTO_PART_SCAN", "SHMEM_ZC", "IO_DESC_SIZE",
};

static int fail(const char *what) {
    fprintf(stderr, "ublk-features: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(void) {
    int ctrl = open("/dev/ublk-control", O_RDWR | O_CLOEXEC);
    if (ctrl < 0)
        return fail("open /dev/ublk-control");

    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SQE128;
    int ring = (int)syscall(__NR_io_uring_setup, 4, &p);
    if (ring < 0)
        return fail("io_uring_setup");

    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    uint8_t *sq = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                       ring, IORING_OFF_SQ_RING);
    uint8_t *cq = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                       ring, IORING_OFF_CQ_RING);
    // With IORING_SETUP_SQE128 every SQE slot is two struct io_uring_sqe long.
    uint8_t *sqes = mmap(NULL, p.sq_entries * 2 * sizeof(struct io_uring_sqe),
                         PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring,
                         IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        return fail("mmap io_uring");

    uint64_t features = 0;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)sqes;
    memset(sqe, 0, 2 * sizeof(*sqe));
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = ctrl;
    sqe->cmd_op = GET_FEATURES_OP;
    struct ublksrv_ctrl_cmd cmd;
    memset(&cmd, 0, sizeof(cmd));
    cmd.dev_id = UINT32_MAX;
    cmd.queue_id = UINT16_MAX;
    cmd.addr = (uint64_t)(uintptr_t)&features;
    cmd.len = sizeof(features);
    memcpy(sqe->cmd, &cmd, sizeof(cmd));

    uint32_t *sq_tail = (uint32_t *)(sq + p.sq_off.tail);
    uint32_t *sq_mask = (uint32_t *)(sq + p.sq_off.ring_mask);
    uint32_t *sq_array = (uint32_t *)(sq + p.sq_off.array);
    sq_array[*sq_tail & *sq_mask] = 0;
    __atomic_store_n(sq_tail, *sq_tail + 1, __ATOMIC_RELEASE);

    if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
        return fail("io_uring_enter");
    uint32_t *cq_head = (uint32_t *)(cq + p.cq_off.head);
    uint32_t *cq_tail = (uint32_t *)(cq + p.cq_off.tail);
    uint32_t *cq_mask = (uint32_t *)(cq + p.cq_off.ring_mask);
    if (__atomic_load_n(cq_tail, __ATOMIC_ACQUIRE) == *cq_head) {
        fprintf(stderr, "ublk-features: no completion\n");
        return 1;
    }
    struct io_uring_cqe *cqe =
        (struct io_uring_cqe *)(cq + p.cq_off.cqes) + (*cq_head & *cq_mask);
    if (cqe->res < 0) {
        errno = -cqe->res;
        return fail("UBLK_U_CMD_GET_FEATURES");
    }
    printf("features 0x%llx\n", (unsigned long long)features);
    size_t known = sizeof(flag_names) / sizeof(flag_names[0]);
    for (size_t bit = 0; bit < 64; bit++) {
        if (!(features & (1ULL << bit)))
            continue;
        if (bit < known)
            printf("  bit %2zu UBLK_F_%s\n", bit, flag_names[bit]);
        else
            printf("  bit %2zu (unknown)\n", bit);
    }
    return 0;
}
