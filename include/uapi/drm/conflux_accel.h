/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Userspace interface of the Conflux accelerator driver.
 *
 * Documented in Documentation/accel/conflux/uapi.rst. Every structure is
 * laid out without implicit padding; every field named "pad" and every flag
 * not defined here must be zero, or the ioctl fails with -EINVAL.
 */
#ifndef _UAPI_CONFLUX_ACCEL_H_
#define _UAPI_CONFLUX_ACCEL_H_

#include "drm.h"

#if defined(__cplusplus)
extern "C" {
#endif

/**
 * enum drm_conflux_ioctl_id - ioctl numbers, relative to DRM_COMMAND_BASE
 * @DRM_CONFLUX_GET_INFO: describe the device, see &struct drm_conflux_get_info
 * @DRM_CONFLUX_BO_CREATE: create a buffer, see &struct drm_conflux_bo_create
 * @DRM_CONFLUX_VM_BIND: map and unmap buffers, see &struct drm_conflux_vm_bind
 * @DRM_CONFLUX_SUBMIT: run a job, see &struct drm_conflux_submit
 * @DRM_CONFLUX_WAIT: wait for a job, see &struct drm_conflux_wait
 * @DRM_CONFLUX_BO_READ: read a buffer, see &struct drm_conflux_bo_rw
 * @DRM_CONFLUX_BO_WRITE: write a buffer, see &struct drm_conflux_bo_rw
 * @DRM_CONFLUX_BO_INFO: describe a buffer, see &struct drm_conflux_bo_info
 * @DRM_CONFLUX_VM_JOIN: share another file's VM, see &struct drm_conflux_vm_join
 * @DRM_CONFLUX_VM_PATH: how a member of the VM reaches a buffer, see
 *	&struct drm_conflux_vm_path
 * @DRM_CONFLUX_BO_P2PMEM: make a buffer of the device's peer-to-peer memory
 *	that the caller mapped, see &struct drm_conflux_bo_p2pmem
 * @DRM_CONFLUX_BIND_QUEUE_CREATE: create a bind queue, see
 *	&struct drm_conflux_bind_queue_create
 * @DRM_CONFLUX_BIND_QUEUE_DESTROY: destroy a bind queue, see
 *	&struct drm_conflux_bind_queue_destroy
 * @DRM_CONFLUX_VM_CREATE: create the file's VM in a mode, see
 *	&struct drm_conflux_vm_create
 * @DRM_CONFLUX_USERQ_CREATE: create a user queue, see
 *	&struct drm_conflux_userq_create
 * @DRM_CONFLUX_USERQ_DESTROY: destroy a user queue, see
 *	&struct drm_conflux_userq_destroy
 * @DRM_CONFLUX_WAIT_USER_FENCE: wait for a memory fence, see
 *	&struct drm_conflux_wait_user_fence
 */
enum drm_conflux_ioctl_id {
	DRM_CONFLUX_GET_INFO = 0,
	DRM_CONFLUX_BO_CREATE,
	DRM_CONFLUX_VM_BIND,
	DRM_CONFLUX_SUBMIT,
	DRM_CONFLUX_WAIT,
	DRM_CONFLUX_BO_READ,
	DRM_CONFLUX_BO_WRITE,
	DRM_CONFLUX_BO_INFO,
	DRM_CONFLUX_VM_JOIN,
	DRM_CONFLUX_VM_PATH,
	DRM_CONFLUX_BO_P2PMEM,
	DRM_CONFLUX_BIND_QUEUE_CREATE,
	DRM_CONFLUX_BIND_QUEUE_DESTROY,
	DRM_CONFLUX_VM_CREATE,
	DRM_CONFLUX_USERQ_CREATE,
	DRM_CONFLUX_USERQ_DESTROY,
	DRM_CONFLUX_WAIT_USER_FENCE,
};

/* Capability bits of &struct drm_conflux_get_info.caps (the device's CAPS the driver uses). */
#define DRM_CONFLUX_CAP_COPY		(1 << 0)
#define DRM_CONFLUX_CAP_FILL		(1 << 1)
#define DRM_CONFLUX_CAP_FENCE		(1 << 2)
#define DRM_CONFLUX_CAP_TIMESTAMP	(1 << 3)
#define DRM_CONFLUX_CAP_MMU_2M		(1 << 4)
#define DRM_CONFLUX_CAP_PEER_P2P	(1 << 5)
#define DRM_CONFLUX_CAP_MMU_NULL	(1 << 6)
#define DRM_CONFLUX_CAP_QUEUES		(1 << 7)

/**
 * struct drm_conflux_get_info - describe the device
 * @flags: in: must be 0
 * @version: out: device interface version, major << 16 | minor
 * @caps: out: DRM_CONFLUX_CAP_* bits
 * @pad: must be 0
 * @vram_size: out: bytes of VRAM
 * @vram_avail: out: bytes of VRAM not allocated to buffers or page tables
 * @va_start: out: lowest virtual address a buffer can be bound at
 * @va_end: out: end of the bindable virtual address range (exclusive)
 * @local_bytes: out: bytes the engine moved within its own VRAM
 * @p2p_bytes: out: bytes the engine read from or wrote to peers' VRAM
 * @sysmem_bytes: out: bytes the engine read from or wrote to system memory
 * @commands: out: engine commands completed
 * @errors: out: engine errors recorded
 * @vm_2m_entries: out: 2 MiB page-table entries of the file's VM
 * @vm_4k_entries: out: 4 KiB page-table entries of the file's VM
 * @vm_spare_tables: out: page tables the file's VM keeps in reserve, one per
 *	2 MiB entry (see &struct drm_conflux_vm_bind)
 * @evictions: out: buffers moved out of VRAM to make room for others
 * @returns: out: buffers moved back to VRAM for a job that uses them
 * @bytes_moved: out: bytes the engine copied to move buffers, for any reason
 * @preemptions: out: times a running user queue was stopped for memory its
 *	VM uses (see &struct drm_conflux_userq_create)
 * @queues_killed: out: user queues disabled for good because they did not
 *	stop when preempted
 *
 * The engine's counters count from the device's power-on, are kept across
 * resets and wrap modulo 2^64; the move and queue counters count from the
 * driver's binding. The VM fields are 0 until the file's VM exists.
 */
struct drm_conflux_get_info {
	__u32 flags;
	__u32 version;
	__u32 caps;
	__u32 pad;
	__u64 vram_size;
	__u64 vram_avail;
	__u64 va_start;
	__u64 va_end;
	__u64 local_bytes;
	__u64 p2p_bytes;
	__u64 sysmem_bytes;
	__u64 commands;
	__u64 errors;
	__u64 vm_2m_entries;
	__u64 vm_4k_entries;
	__u64 vm_spare_tables;
	__u64 evictions;
	__u64 returns;
	__u64 bytes_moved;
	__u64 preemptions;
	__u64 queues_killed;
};

/* Placement of a buffer: &struct drm_conflux_bo_create.flags. */
#define DRM_CONFLUX_BO_VRAM		(1 << 0)
#define DRM_CONFLUX_BO_SYSTEM		(1 << 1)

/* Largest buffer in system memory, in bytes. */
#define DRM_CONFLUX_MAX_SYSTEM_SIZE	(1ULL << 30)
/* The placement of a buffer imported from a dma-buf (PRIME). */
#define DRM_CONFLUX_BO_IMPORTED		(1 << 2)

/*
 * How the device reaches a buffer's memory, in &struct drm_conflux_bo_info.
 * DRM_CONFLUX_PATH_EXTERNAL: imported from an exporter other than Conflux,
 * at addresses its exporter chose. DRM_CONFLUX_PATH_NULL, from
 * DRM_IOCTL_CONFLUX_VM_PATH only: NULL pages (DRM_CONFLUX_BIND_NULL).
 */
#define DRM_CONFLUX_PATH_LOCAL		1
#define DRM_CONFLUX_PATH_P2P		2
#define DRM_CONFLUX_PATH_HOST_BRIDGE	3
#define DRM_CONFLUX_PATH_SYSTEM		4
#define DRM_CONFLUX_PATH_EXTERNAL	5
#define DRM_CONFLUX_PATH_NULL		6

/**
 * struct drm_conflux_bo_create - create a buffer object
 * @size: in: bytes, at least 1; rounded up to a multiple of 4 KiB.
 *	out: the rounded size
 * @flags: in: where the buffer may be placed, at least one of
 *	DRM_CONFLUX_BO_VRAM and DRM_CONFLUX_BO_SYSTEM
 * @handle: out: GEM handle of the new buffer
 *
 * A buffer is placed in VRAM when DRM_CONFLUX_BO_VRAM is set and VRAM has
 * room, after evicting buffers that may be in either place when it has
 * not, else in system memory when DRM_CONFLUX_BO_SYSTEM is set.
 * &struct drm_conflux_bo_info tells where it went. A buffer with both flags
 * moves between VRAM and system memory: it is evicted, least recently used
 * first, when VRAM is needed, and comes back to VRAM for the next job that
 * uses it when VRAM has room (unless an importer pinned it); it moves to
 * system memory when an importer that cannot reach the device's VRAM maps
 * it, and stays there while that importer is attached (see PRIME in the
 * documentation). Its data, its mappings in VMs and importers, and mmap()
 * go with it. The device's engine copies it;
 * later jobs, reads, writes and faults of the buffer wait for the copy. A
 * buffer with only DRM_CONFLUX_BO_VRAM is never evicted.
 *
 * New memory never shows data of an earlier user: VRAM is zeroed by the
 * device's engine before the ioctl returns, system memory by the kernel's
 * page allocator. A VRAM buffer of 2 MiB or more is placed in 2 MiB blocks
 * when VRAM allows, so that it can be mapped with 2 MiB page-table entries;
 * system memory is mapped with 4 KiB entries, and is charged to the caller's
 * memory cgroup. The device reaches system memory by DMA; when it is unbound,
 * the buffer loses its memory like a VRAM buffer does.
 *
 * Errors: -EINVAL for a size of 0 or unknown flags, a missing placement, a
 * non-zero handle, or a buffer that would go to system memory and is larger
 * than DRM_CONFLUX_MAX_SYSTEM_SIZE; -ENOSPC when VRAM has no room for a
 * buffer that must be in VRAM, even after evicting every buffer that may
 * move; -ENOMEM when system memory cannot be allocated; -EIO when it
 * cannot be mapped for the device's DMA; -EINTR when a signal arrived while
 * the call waited for room in the engine's ring (nothing was created); -EIO
 * or -ETIMEDOUT when the engine failed to zero the memory.
 */
struct drm_conflux_bo_create {
	__u64 size;
	__u32 flags;
	__u32 handle;
};

/**
 * struct drm_conflux_bo_p2pmem - a buffer of peer-to-peer memory the caller
 *	mapped
 * @addr: in: the first byte, 4 KiB aligned, of a writable mapping of the
 *	device's peer-to-peer memory (from p2pmem/allocate in the device's
 *	sysfs directory; see the p2pmem_mib module parameter)
 * @size: in: its length in bytes, a non-zero multiple of 4 KiB
 * @flags: in: 0
 * @handle: out: GEM handle of the new buffer
 *
 * The buffer is the VRAM behind the mapping, with the bytes that are there
 * (what userspace or a block device's direct I/O wrote): jobs read and
 * write it through VM_BIND like any buffer in VRAM, and BO_INFO reports
 * DRM_CONFLUX_BO_VRAM and DRM_CONFLUX_PATH_LOCAL. Its pages stay pinned,
 * and the VRAM the buffer's, until the buffer is freed, even when the
 * mapping goes first; the device's unbind drops the pins, after which the
 * buffer has no memory, as for any other buffer. It never moves and is not
 * exported (PRIME export fails with -EOPNOTSUPP).
 *
 * Errors: -EINVAL for flags, a non-zero handle, an unaligned address or
 * size, a size of 0 or one above the published memory, or pages that are
 * not consecutive in VRAM; -EOPNOTSUPP when the device publishes no
 * peer-to-peer memory; -EFAULT when part of the range is not mapped, not
 * writable or not memory with pages (a VM_PFNMAP mapping, such as a
 * Conflux buffer's mmap); -EXDEV when it is memory other than this device's
 * peer-to-peer memory (system memory, or another device's).
 */
struct drm_conflux_bo_p2pmem {
	__u64 addr;
	__u64 size;
	__u32 flags;
	__u32 handle;
};

/* &struct drm_conflux_vm_bind_op.op */
#define DRM_CONFLUX_BIND_MAP		1
#define DRM_CONFLUX_BIND_UNMAP		2

/* &struct drm_conflux_vm_bind_op.flags */
#define DRM_CONFLUX_BIND_READONLY	(1 << 0)
#define DRM_CONFLUX_BIND_NULL		(1 << 1)

/* Most operations in one &struct drm_conflux_vm_bind. */
#define DRM_CONFLUX_MAX_BIND_OPS	1024
/* Most operations of a VM_BIND of UNMAPs only that never needs memory. */
#define DRM_CONFLUX_UNMAP_RESERVED_OPS	8

/**
 * struct drm_conflux_vm_bind_op - one operation of a VM_BIND call
 * @op: DRM_CONFLUX_BIND_MAP or DRM_CONFLUX_BIND_UNMAP
 * @flags: MAP: DRM_CONFLUX_BIND_READONLY makes the device's writes through
 *	the mapping fail (a permission fault); DRM_CONFLUX_BIND_NULL, alone,
 *	maps NULL pages instead of a buffer; UNMAP: must be 0
 * @handle: MAP: GEM handle of the buffer, 0 with DRM_CONFLUX_BIND_NULL;
 *	UNMAP: must be 0
 * @pad: must be 0
 * @bo_offset: MAP: offset in the buffer, a multiple of 4 KiB, 0 with
 *	DRM_CONFLUX_BIND_NULL; UNMAP: must be 0
 * @va: virtual address, a multiple of 4 KiB
 * @range: bytes, a non-zero multiple of 4 KiB; @va + @range must not exceed
 *	&drm_conflux_get_info.va_end, and MAP's @bo_offset + @range must not
 *	exceed the buffer's size
 *
 * MAP maps the buffer's bytes @bo_offset..@bo_offset + @range at
 * @va..@va + @range, replacing whatever is mapped there: mappings that
 * extend outside the range keep their parts outside it. With
 * DRM_CONFLUX_BIND_NULL it maps NULL pages (sparse residency): the device
 * reads zeros from them and drops its writes to them, without a fault; it
 * needs DRM_CONFLUX_CAP_MMU_NULL. UNMAP removes whatever is mapped in
 * @va..@va + @range, splitting mappings that extend outside it; unmapping a
 * free range is not an error. Any 4 KiB-aligned part of a mapping can be
 * unmapped or mapped again.
 */
struct drm_conflux_vm_bind_op {
	__u32 op;
	__u32 flags;
	__u32 handle;
	__u32 pad;
	__u64 bo_offset;
	__u64 va;
	__u64 range;
};

/* &struct drm_conflux_vm_bind.flags */
/* @in_fence_fd is a sync_file the bind waits for. */
#define DRM_CONFLUX_VM_BIND_IN_FENCE_FD		(1 << 0)
/* Out: @out_fence_fd receives a new sync_file of the bind's fence. */
#define DRM_CONFLUX_VM_BIND_OUT_FENCE_FD	(1 << 1)

/* Most bind queues of one open file. */
#define DRM_CONFLUX_MAX_BIND_QUEUES	16
/* Most binds of one queue that wait for their dependencies. */
#define DRM_CONFLUX_MAX_QUEUED_BINDS	256

/**
 * struct drm_conflux_vm_bind - change the mappings of a VM
 * @vm_id: the VM; 0 is the file's VM, the only one so far
 * @num_ops: number of operations, 1 to DRM_CONFLUX_MAX_BIND_OPS
 * @ops: user pointer to @num_ops &struct drm_conflux_vm_bind_op
 * @flags: DRM_CONFLUX_VM_BIND_* flags, only with a @queue
 * @pad: must be 0
 * @queue: 0 for a synchronous bind, or a bind queue of the file
 *	(DRM_IOCTL_CONFLUX_BIND_QUEUE_CREATE): the call returns once the
 *	operations are checked and what they need allocated, and the page
 *	tables change after the in-fences signal
 * @num_in_syncs: 0 to DRM_CONFLUX_MAX_SYNCS; 0 without a @queue
 * @num_out_syncs: 0 to DRM_CONFLUX_MAX_SYNCS; 0 without a @queue
 * @in_fence_fd: with DRM_CONFLUX_VM_BIND_IN_FENCE_FD, a sync_file the bind
 *	waits for
 * @in_syncs: user pointer to @num_in_syncs &struct drm_conflux_sync the
 *	bind waits for
 * @out_syncs: user pointer to @num_out_syncs &struct drm_conflux_sync that
 *	receive the bind's fence
 * @out_fence_fd: out, with DRM_CONFLUX_VM_BIND_OUT_FENCE_FD: a sync_file of
 *	the bind's fence (close-on-exec)
 * @pad2: must be 0
 *
 * Every open file has a VM of its own, created at its first use, which
 * DRM_IOCTL_CONFLUX_VM_JOIN can share with the files of other devices. The
 * operations apply in order, as one transaction on every member of the VM:
 * when the call fails, on any member, every member is exactly as before it.
 * On each member, the buffer of a MAP is the caller's buffer as that
 * member's device reaches it: the buffer itself on the same device, else an
 * import of it (see DRM_IOCTL_CONFLUX_VM_PATH). A member that cannot reach
 * it fails the whole call with -EXDEV or -EOPNOTSUPP, as PRIME import does,
 * unless the buffer may move to system memory: then it moves there.
 * Before it replaces or removes a mapping that a job may use, the call waits
 * for the jobs of every member to complete; a signal during that wait returns -EINTR
 * (or restarts the call) with nothing changed on any member.
 * Mappings use 2 MiB page-table entries wherever the virtual address, the
 * buffer's memory and the range allow. Each 2 MiB entry keeps a 4 KiB page
 * table in VRAM in reserve, so that unmapping part of it never needs VRAM.
 * A call of at most DRM_CONFLUX_UNMAP_RESERVED_OPS operations, all UNMAPs,
 * needs no kernel memory either: each VM keeps in reserve what that many
 * splits of mappings in the middle take, and every call that can allocate
 * fills the reserve again. Such a call fails with -ENOMEM only when
 * allocations fail and earlier calls of UNMAPs used up the reserve.
 *
 * Errors: -EINVAL for a malformed call or operation (see above), -EFAULT when
 * @ops cannot be read, -ENOENT for an unknown @vm_id or buffer handle,
 * -ENOSPC when VRAM has no room for page tables, -ENOMEM, -EINTR,
 * -EOPNOTSUPP for DRM_CONFLUX_BIND_NULL on a device without
 * DRM_CONFLUX_CAP_MMU_NULL, -EXDEV or
 * -EOPNOTSUPP when a member's device has no route to a MAP's buffer, which
 * may not move to system memory, -EBUSY when it may but another importer
 * pinned it in VRAM, -EIO when its table breaks the member's DMA segment
 * limits, -EOPNOTSUPP for out-fences on a long-running VM (see
 * &struct drm_conflux_vm_create).
 *
 * With a @queue, the call returns once the operations are checked and what
 * they need is allocated, with the same errors; the VM shows the new
 * mappings at once, and the page tables change once the in-fences, the
 * binds before it on the queue, the binds of other queues in the same
 * 2 MiB regions and, for an unmap or a replacing map, the VM's jobs are
 * done. The bind's fence, put in @out_syncs and @out_fence_fd, signals when
 * the page tables of every member are written; it carries the error of a
 * failed in-fence, but the bind happens all the same. Until then the bind
 * keeps the buffers it maps or unmaps, on every member, where they are
 * (pinned). More errors with a @queue: -ENOENT for an
 * unknown queue or syncobj, -EINVAL for a syncobj without a fence at the
 * point asked or fence fields without a queue, -EMFILE when no descriptor
 * is left for @out_fence_fd, -EAGAIN when the queue holds
 * DRM_CONFLUX_MAX_QUEUED_BINDS binds.
 */
struct drm_conflux_vm_bind {
	__u32 vm_id;
	__u32 num_ops;
	__u64 ops;
	__u32 flags;
	__u32 pad;
	__u32 queue;
	__u32 num_in_syncs;
	__u32 num_out_syncs;
	__s32 in_fence_fd;
	__u64 in_syncs;
	__u64 out_syncs;
	__s32 out_fence_fd;
	__u32 pad2;
};

/**
 * struct drm_conflux_bind_queue_create - create a bind queue
 * @vm_id: the VM; 0 is the file's VM
 * @flags: must be 0
 * @queue: out: the queue's number in the file, from 1
 * @pad: must be 0
 *
 * A bind queue orders the asynchronous VM_BINDs that name it: their page
 * tables change in the order of the calls, each once its in-fences and the
 * binds before it on the queue are done. Binds on different queues are not
 * ordered with each other, but for binds whose ranges share a 2 MiB region
 * of the VM, which change the page tables in the order of the calls.
 *
 * Errors: -EINVAL for non-zero @flags or @pad, -ENOENT for an unknown
 * @vm_id, -EMFILE when the file has DRM_CONFLUX_MAX_BIND_QUEUES queues,
 * -ENOMEM.
 */
struct drm_conflux_bind_queue_create {
	__u32 vm_id;
	__u32 flags;
	__u32 queue;
	__u32 pad;
};

/**
 * struct drm_conflux_bind_queue_destroy - destroy a bind queue
 * @queue: the queue
 * @pad: must be 0
 *
 * The binds still queued are not cancelled: they change the page tables
 * once their fences signal, and their fences signal as they would have.
 * Closing the file destroys its queues the same way.
 *
 * Errors: -EINVAL for a non-zero @pad, -ENOENT for an unknown @queue.
 */
struct drm_conflux_bind_queue_destroy {
	__u32 queue;
	__u32 pad;
};

/* &struct drm_conflux_cmd.op */
#define DRM_CONFLUX_CMD_COPY		1
#define DRM_CONFLUX_CMD_FILL		2

/* Most commands in one &struct drm_conflux_submit. */
#define DRM_CONFLUX_MAX_CMDS		64
/* Most bytes one command moves. */
#define DRM_CONFLUX_MAX_CMD_LEN		(1ULL << 32)

/**
 * struct drm_conflux_cmd - a command of a job
 * @op: DRM_CONFLUX_CMD_COPY or DRM_CONFLUX_CMD_FILL
 * @pad: must be 0
 * @src: COPY: source virtual address; FILL: the pattern, whose little-endian
 *	bytes repeat over the destination (byte i gets byte i % 8)
 * @dst: destination virtual address
 * @len: bytes, 1 to DRM_CONFLUX_MAX_CMD_LEN
 *
 * Addresses have no alignment requirement. Both ranges must lie in the
 * bindable range (&drm_conflux_get_info.va_start to .va_end), and a COPY's
 * source and destination ranges must not overlap.
 */
struct drm_conflux_cmd {
	__u32 op;
	__u32 pad;
	__u64 src;
	__u64 dst;
	__u64 len;
};

/* &struct drm_conflux_submit.flags */
/* No implicit dependencies: the job waits only for the fences it is given. */
#define DRM_CONFLUX_SUBMIT_EXPLICIT_SYNC	(1 << 0)
/* @in_fence_fd is a sync_file whose fence the job waits for. */
#define DRM_CONFLUX_SUBMIT_IN_FENCE_FD		(1 << 1)
/* Out: @out_fence_fd receives a new sync_file of the job's fence. */
#define DRM_CONFLUX_SUBMIT_OUT_FENCE_FD		(1 << 2)

/* Most entries in each of &struct drm_conflux_submit's in_syncs and out_syncs. */
#define DRM_CONFLUX_MAX_SYNCS		64

/**
 * struct drm_conflux_sync - a syncobj and a point on its timeline
 * @handle: the syncobj
 * @flags: must be 0
 * @point: the timeline point; 0 for a binary syncobj (its current fence as
 *	an in-fence; as an out-fence, the job's fence replaces it)
 */
struct drm_conflux_sync {
	__u32 handle;
	__u32 flags;
	__u64 point;
};

/**
 * struct drm_conflux_submit - run a job on the device's engine
 * @vm_id: the VM whose addresses the commands use; 0 is the file's own VM
 * @num_cmds: number of commands, 1 to DRM_CONFLUX_MAX_CMDS
 * @cmds: user pointer to @num_cmds &struct drm_conflux_cmd
 * @flags: DRM_CONFLUX_SUBMIT_* flags
 * @in_syncobj: 0, or a binary syncobj whose fence the job waits for
 * @out_syncobj: 0, or a binary syncobj that receives the job's fence
 * @pad: must be 0
 * @job: out: the job's number in this file, for DRM_IOCTL_CONFLUX_WAIT
 * @in_syncs: user pointer to @num_in_syncs &struct drm_conflux_sync the
 *	job waits for
 * @out_syncs: user pointer to @num_out_syncs &struct drm_conflux_sync that
 *	receive the job's fence
 * @num_in_syncs: 0 to DRM_CONFLUX_MAX_SYNCS
 * @num_out_syncs: 0 to DRM_CONFLUX_MAX_SYNCS
 * @in_fence_fd: with DRM_CONFLUX_SUBMIT_IN_FENCE_FD, a sync_file the job
 *	waits for
 * @out_fence_fd: out, with DRM_CONFLUX_SUBMIT_OUT_FENCE_FD: a sync_file of
 *	the job's fence (close-on-exec)
 *
 * The commands run in order. The call queues the job and returns without
 * waiting: the job runs once every fence it depends on has signalled. It
 * depends on the in-fences (@in_syncobj, @in_syncs, @in_fence_fd) and,
 * unless DRM_CONFLUX_SUBMIT_EXPLICIT_SYNC is set, on the fences of every
 * buffer the commands address: a job that writes a buffer waits for all
 * its fences, one that reads it for the fences of writes and kernel work
 * (moves, clears), other drivers' fences included. When a fence it
 * depends on failed, the job does not run and its fence signals that error.
 *
 * The job's fence is added to the reservation object of every buffer the
 * commands address (as a write for destinations, a read for sources), and
 * put in @out_syncobj and @out_syncs. It signals when the last command
 * completed, or with an error: -EIO when the device reported an error (an
 * address that is not mapped, a write through a read-only mapping),
 * -ETIMEDOUT when the job did not complete in the job timeout (10 seconds
 * unless the module parameter job_timeout_ms says otherwise), whether or not
 * anybody waits for it; -ECANCELED when the device was unbound, or a reset
 * for another job's timeout interrupted it; -ENODEV when the device did not
 * confirm a reset (it is wedged, see uapi.rst); a failed in-fence's error.
 * The engine is reset after a failed job and runs the jobs after it; no job
 * runs twice. Closing the file does not wait for its jobs, which keep what
 * they use until they end. A SUBMIT that fails has queued nothing.
 *
 * Errors: -EINVAL for a malformed call, command or sync, a syncobj without
 * fence at the point asked, or an @in_fence_fd that is not a sync_file;
 * -EFAULT when @cmds, @in_syncs or @out_syncs cannot be read; -ENOENT for an
 * unknown @vm_id or syncobj; -ENODEV when the device is wedged; -EMFILE when
 * no descriptor is left for @out_fence_fd; -ENOMEM; -EINTR while waiting for
 * room in the engine's queue (nothing was queued); -EOPNOTSUPP for
 * out-fences on a long-running VM (see &struct drm_conflux_vm_create).
 */
struct drm_conflux_submit {
	__u32 vm_id;
	__u32 num_cmds;
	__u64 cmds;
	__u32 flags;
	__u32 in_syncobj;
	__u32 out_syncobj;
	__u32 pad;
	__u64 job;
	__u64 in_syncs;
	__u64 out_syncs;
	__u32 num_in_syncs;
	__u32 num_out_syncs;
	__s32 in_fence_fd;
	__s32 out_fence_fd;
};

/**
 * struct drm_conflux_wait - wait for a job of this file
 * @job: the number SUBMIT returned
 * @timeout_ns: longest wait in nanoseconds; 0 only tests, a negative value
 *	waits without limit
 * @flags: must be 0
 * @pad: must be 0
 *
 * Returns 0 when the job completed. The file keeps the result of its failed
 * jobs, up to the 256 most recent, so that WAIT reports a failure even after
 * the job completed; for a job that ended before those, whether it failed is
 * no longer known.
 *
 * Errors: -EINVAL for a malformed call or a job number this file never
 * returned; -ETIME when the job did not complete within @timeout_ns; -EINTR;
 * -ESTALE for a job that ended before the file's 256 most recent failed
 * jobs; the job's error (-EIO, -ETIMEDOUT, -ECANCELED, -ENODEV, see
 * &struct drm_conflux_submit).
 */
struct drm_conflux_wait {
	__u64 job;
	__s64 timeout_ns;
	__u32 flags;
	__u32 pad;
};

/**
 * struct drm_conflux_bo_rw - read or write a buffer with the CPU
 * @handle: GEM handle of the buffer
 * @flags: must be 0
 * @offset: byte offset in the buffer, a multiple of 4
 * @size: bytes, a non-zero multiple of 4; @offset + @size must not exceed the
 *	buffer's size
 * @data: user pointer to @size bytes: where BO_READ stores the buffer's bytes,
 *	or what BO_WRITE stores in the buffer
 *
 * The CPU copies through the device's BAR, or directly for a buffer in
 * system memory. BO_READ first waits for the jobs that write the buffer,
 * BO_WRITE for every job that uses it: the fences of the buffer's
 * reservation object.
 *
 * Errors: -EINVAL for a malformed call, -ENOENT for an unknown handle,
 * -EFAULT when @data cannot be accessed (bytes before it may have been
 * copied), -EINTR while waiting for jobs (nothing was copied).
 */
struct drm_conflux_bo_rw {
	__u32 handle;
	__u32 flags;
	__u64 offset;
	__u64 size;
	__u64 data;
};

/**
 * struct drm_conflux_bo_info - describe a buffer, and give its mmap() offset
 * @handle: in: GEM handle of the buffer
 * @flags: in: must be 0
 * @size: out: the buffer's size in bytes
 * @mmap_offset: out: the offset to pass to mmap() on the device file to map
 *	the buffer
 * @placement: out: DRM_CONFLUX_BO_VRAM, DRM_CONFLUX_BO_SYSTEM or
 *	DRM_CONFLUX_BO_IMPORTED
 * @path: in: must be 0; out: how the device reaches the memory, a
 *	DRM_CONFLUX_PATH_*: its own VRAM (LOCAL), system memory (SYSTEM), or
 *	for a buffer imported from another Conflux device, that device's VRAM
 *	through PCIe switches (P2P) or through the host bridge (HOST_BRIDGE),
 *	or its system memory (SYSTEM)
 * @moves: out: how many times the buffer moved between VRAM and system
 *	memory; 0 for an imported buffer
 *
 * An imported buffer has no @mmap_offset (0): map it through its exporter.
 *
 * A buffer is mapped with mmap(MAP_SHARED) at @mmap_offset, of up to @size
 * bytes. mmap() refuses with -EINVAL a private mapping (MAP_PRIVATE), which
 * could be made writable, a mapping that starts elsewhere in the buffer, and
 * one longer than the buffer, and with -EACCES an offset that lands in a buffer
 * this file does not hold. VRAM is mapped write-combined through the device's BAR,
 * system memory cached. The mapping does not wait for jobs: use
 * DRM_IOCTL_CONFLUX_WAIT first; a fault waits for a move of the buffer.
 * When the device is unbound, every mapping of
 * its buffers is emptied, and touching it raises SIGBUS.
 *
 * Errors: -EINVAL for a malformed call, -ENOENT for an unknown handle,
 * -ENOMEM when the offset cannot be allocated.
 */
struct drm_conflux_bo_info {
	__u32 handle;
	__u32 flags;
	__u64 size;
	__u64 mmap_offset;
	__u32 placement;
	__u32 path;
	__u64 moves;
};

/**
 * struct drm_conflux_vm_join - share the VM of another Conflux file
 * @fd: in: a file descriptor of another open Conflux accel file, of any
 *	Conflux device
 * @flags: in: must be 0
 * @members: out: how many files share the VM now, the caller included
 * @member: out: the caller's index among them, for DRM_IOCTL_CONFLUX_VM_PATH
 *
 * Makes the caller's VM (vm_id 0) the VM of the file @fd names: from then on
 * a VM_BIND on any member maps or unmaps at the same virtual addresses on
 * every member, each through its own device's page tables, and a SUBMIT on a
 * member runs on that member's device with those addresses. Each member
 * keeps its own jobs. A file that closes leaves the VM; the others keep it.
 * Members are numbered in the order they joined, from 0.
 *
 * Join before binding: both VMs must be empty (nothing mapped), and the
 * caller must not share its VM already. Joining the VM the caller already
 * shares changes nothing. A caller that has a VM joins only a VM of the
 * same mode (see &struct drm_conflux_vm_create); one without a VM takes the
 * mode of the VM it joins.
 *
 * Errors: -EINVAL for a malformed call, or an @fd that is not a Conflux
 * accel file or is the caller's own, or a VM of another mode; -EBADF for
 * an @fd that is not open; -EBUSY when either VM has mappings or the
 * caller shares another VM; -ENOMEM; -ENODEV when the other file's device
 * is unbound.
 */
struct drm_conflux_vm_join {
	__s32 fd;
	__u32 flags;
	__u32 members;
	__u32 member;
};

/**
 * struct drm_conflux_vm_path - how a member of the VM reaches what is mapped
 * @va: in: a virtual address in the bindable range
 * @member: in: a member of the caller's VM, as numbered by
 *	DRM_IOCTL_CONFLUX_VM_JOIN (0 when the VM is not shared)
 * @flags: in: must be 0
 * @path: out: how the member's device reaches the buffer mapped at @va,
 *	a DRM_CONFLUX_PATH_*, or 0 when nothing is mapped there
 * @members: out: how many files share the VM
 *
 * Errors: -EINVAL for a malformed call, -ENOENT for a @member the VM does
 * not have.
 */
struct drm_conflux_vm_path {
	__u64 va;
	__u32 member;
	__u32 flags;
	__u32 path;
	__u32 members;
};

/* &struct drm_conflux_vm_create.flags */
/* The VM runs long-running work, whose jobs give userspace no dma-fence. */
#define DRM_CONFLUX_VM_CREATE_LONG_RUNNING	(1 << 0)

/**
 * struct drm_conflux_vm_create - create the file's VM, in a mode
 * @flags: in: 0, or DRM_CONFLUX_VM_CREATE_LONG_RUNNING
 * @vm_id: in: must be 0; out: the VM's id, 0 (a file has one VM)
 *
 * A file's VM is created at its first use, in the default mode; this call
 * creates it before that, and chooses its mode. In long-running mode, as
 * Documentation/gpu/drm-vm-bind-async.rst asks of it, nothing the VM does
 * hands userspace a dma-fence:
 *
 * - DRM_IOCTL_CONFLUX_SUBMIT refuses out_syncobj, out_syncs and
 *   DRM_CONFLUX_SUBMIT_OUT_FENCE_FD with -EOPNOTSUPP; its jobs are waited
 *   for with DRM_IOCTL_CONFLUX_WAIT;
 * - DRM_IOCTL_CONFLUX_VM_BIND refuses in_syncs, out_syncs,
 *   DRM_CONFLUX_VM_BIND_IN_FENCE_FD and DRM_CONFLUX_VM_BIND_OUT_FENCE_FD
 *   with -EOPNOTSUPP (its binds are not pipelined behind dma-fences, and
 *   give none); on a bind queue it binds in the call, as a synchronous call
 *   does, once the queue's earlier binds are done;
 * - DRM_IOCTL_CONFLUX_VM_JOIN joins only VMs of the same mode.
 *
 * Errors: -EINVAL for a malformed call; -EEXIST when the file has its VM
 * already (it used it, joined another, or created it); -ENOMEM.
 */
struct drm_conflux_vm_create {
	__u32 flags;
	__u32 vm_id;
};

/* Most user queues of a file. */
#define DRM_CONFLUX_MAX_USER_QUEUES	4
/* Smallest and largest ring of a user queue, in bytes. */
#define DRM_CONFLUX_USERQ_MIN_RING	64
#define DRM_CONFLUX_USERQ_MAX_RING	(1ULL << 24)

/**
 * struct drm_conflux_userq_create - create a user queue on a long-running VM
 * @vm_id: in: must be 0, the file's VM, which must be long-running
 * @flags: in: must be 0
 * @ring_va: in: the virtual address of the queue's ring in the VM, a
 *	multiple of 64
 * @ring_size: in: the size of the ring in bytes, a power of two from
 *	DRM_CONFLUX_USERQ_MIN_RING to DRM_CONFLUX_USERQ_MAX_RING; the ring
 *	lies in the bindable range
 * @queue_id: out: the queue's number in this file, from 1
 * @doorbell_handle: out: a GEM handle of the queue's doorbell page, 4 KiB,
 *	which userspace maps (mmap() at the offset DRM_IOCTL_CONFLUX_BO_INFO
 *	gives) and nothing else: it cannot be bound, read, written or exported
 *
 * A user queue is one of the device's hardware queues, given to the file
 * until it destroys the queue or closes. Userspace writes commands (64-byte
 * slots, see Documentation/accel/conflux/device.rst, "Commands") to the ring
 * through its own mappings of the buffers bound there, then the
 * free-running count of slots written, a u32, to the first word of the
 * doorbell page; the device runs them in order without a system call. The
 * queue starts empty, its head and tail 0. The ring need not be bound yet:
 * a slot the device cannot read stops the queue (see
 * &struct drm_conflux_wait_user_fence).
 *
 * A queue signals with WRITE_VALUE commands (a memory fence: a u64 written
 * to a virtual address) and waits with WAIT_VALUE; a command with the IRQ
 * flag wakes DRM_IOCTL_CONFLUX_WAIT_USER_FENCE when it completes. A FENCE
 * command is malformed in a user queue. While a queue exists, its file
 * cannot join another VM. The memory the VM maps carries a preemption
 * fence: when the kernel needs to move it, the queues stop, with their
 * state saved, and resume once it has moved.
 *
 * Errors: -EINVAL for a malformed call, or a VM that is not long-running;
 * -EOPNOTSUPP when the device has no user queues (DRM_CONFLUX_CAP_QUEUES
 * clear); -EMFILE when the file has DRM_CONFLUX_MAX_USER_QUEUES; -EBUSY
 * when every hardware queue of the device is taken; -ENODEV when the device
 * is wedged; -ENOMEM.
 */
struct drm_conflux_userq_create {
	__u32 vm_id;
	__u32 flags;
	__u64 ring_va;
	__u64 ring_size;
	__u32 queue_id;
	__u32 doorbell_handle;
};

/**
 * struct drm_conflux_userq_destroy - destroy a user queue
 * @queue_id: the number DRM_IOCTL_CONFLUX_USERQ_CREATE gave
 * @flags: must be 0
 *
 * Stops the queue where it is: the commands not yet run never run. The
 * mappings of its doorbell page are emptied (touching them raises SIGBUS),
 * and the doorbell handle stays until the file closes it.
 *
 * Errors: -EINVAL for a malformed call, -ENOENT for an unknown queue.
 */
struct drm_conflux_userq_destroy {
	__u32 queue_id;
	__u32 flags;
};

/* &struct drm_conflux_wait_user_fence.op: how (*addr & mask) compares with value */
#define DRM_CONFLUX_WAIT_GTE		0
#define DRM_CONFLUX_WAIT_EQ		1
#define DRM_CONFLUX_WAIT_NEQ		2
#define DRM_CONFLUX_WAIT_GT		3
#define DRM_CONFLUX_WAIT_LT		4
#define DRM_CONFLUX_WAIT_LTE		5

/**
 * struct drm_conflux_wait_user_fence - wait for a memory fence of a user queue
 * @addr: user pointer to the u64, 8-byte aligned: a mapping of the buffer
 *	the queue's WRITE_VALUE writes
 * @value: the value compared with
 * @mask: applied to the u64 first
 * @timeout_ns: in: the longest wait in nanoseconds, 0 only tests, a
 *	negative value waits without limit; out, when interrupted: what is
 *	left of it, so that a restarted call waits no longer in all
 * @queue_id: the user queue whose events wake the wait
 * @op: a DRM_CONFLUX_WAIT_* comparison, unsigned
 * @flags: must be 0
 * @pad: must be 0
 *
 * Returns 0 once (*@addr & @mask) @op @value holds. The call reads the u64,
 * then sleeps until the queue counts an event -- a command with the IRQ
 * flag completed, or the queue stopped -- and reads it again; it does not
 * poll. A WRITE_VALUE without IRQ wakes nobody: the wait then ends at its
 * timeout, or at a later event.
 *
 * Errors: -EINVAL for a malformed call; -ENOENT for an unknown queue;
 * -EFAULT when @addr cannot be read; -ETIME when the condition did not hold
 * within @timeout_ns; -EINTR (or a restart) on a signal; -EIO when the queue
 * stopped on an error (a fault of a command or of its ring, a bogus head)
 * and the condition does not hold: the queue runs nothing more, destroy it;
 * -ECANCELED when the queue was killed for not stopping when preempted (see
 * Documentation/accel/conflux/uapi.rst, "Preemption"); -ENODEV when the
 * device is being unbound.
 */
struct drm_conflux_wait_user_fence {
	__u64 addr;
	__u64 value;
	__u64 mask;
	__s64 timeout_ns;
	__u32 queue_id;
	__u32 op;
	__u32 flags;
	__u32 pad;
};

/*
 * The ioctl request codes, as enumerators rather than macros so that
 * bindings generators see their values.
 */
enum {
	DRM_IOCTL_CONFLUX_GET_INFO =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_GET_INFO,
			 struct drm_conflux_get_info),
	DRM_IOCTL_CONFLUX_BO_CREATE =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_BO_CREATE,
			 struct drm_conflux_bo_create),
	DRM_IOCTL_CONFLUX_VM_BIND =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_VM_BIND,
			 struct drm_conflux_vm_bind),
	DRM_IOCTL_CONFLUX_SUBMIT =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_SUBMIT,
			 struct drm_conflux_submit),
	DRM_IOCTL_CONFLUX_WAIT =
		DRM_IOW(DRM_COMMAND_BASE + DRM_CONFLUX_WAIT,
			struct drm_conflux_wait),
	DRM_IOCTL_CONFLUX_BO_READ =
		DRM_IOW(DRM_COMMAND_BASE + DRM_CONFLUX_BO_READ,
			struct drm_conflux_bo_rw),
	DRM_IOCTL_CONFLUX_BO_WRITE =
		DRM_IOW(DRM_COMMAND_BASE + DRM_CONFLUX_BO_WRITE,
			struct drm_conflux_bo_rw),
	DRM_IOCTL_CONFLUX_BO_INFO =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_BO_INFO,
			 struct drm_conflux_bo_info),
	DRM_IOCTL_CONFLUX_VM_JOIN =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_VM_JOIN,
			 struct drm_conflux_vm_join),
	DRM_IOCTL_CONFLUX_VM_PATH =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_VM_PATH,
			 struct drm_conflux_vm_path),
	DRM_IOCTL_CONFLUX_BO_P2PMEM =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_BO_P2PMEM,
			 struct drm_conflux_bo_p2pmem),
	DRM_IOCTL_CONFLUX_BIND_QUEUE_CREATE =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_BIND_QUEUE_CREATE,
			 struct drm_conflux_bind_queue_create),
	DRM_IOCTL_CONFLUX_BIND_QUEUE_DESTROY =
		DRM_IOW(DRM_COMMAND_BASE + DRM_CONFLUX_BIND_QUEUE_DESTROY,
			struct drm_conflux_bind_queue_destroy),
	DRM_IOCTL_CONFLUX_VM_CREATE =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_VM_CREATE,
			 struct drm_conflux_vm_create),
	DRM_IOCTL_CONFLUX_USERQ_CREATE =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_USERQ_CREATE,
			 struct drm_conflux_userq_create),
	DRM_IOCTL_CONFLUX_USERQ_DESTROY =
		DRM_IOW(DRM_COMMAND_BASE + DRM_CONFLUX_USERQ_DESTROY,
			struct drm_conflux_userq_destroy),
	DRM_IOCTL_CONFLUX_WAIT_USER_FENCE =
		DRM_IOWR(DRM_COMMAND_BASE + DRM_CONFLUX_WAIT_USER_FENCE,
			 struct drm_conflux_wait_user_fence),
};

#if defined(__cplusplus)
}
#endif

#endif /* _UAPI_CONFLUX_ACCEL_H_ */
