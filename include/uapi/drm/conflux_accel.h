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
 */
enum drm_conflux_ioctl_id {
	DRM_CONFLUX_GET_INFO = 0,
	DRM_CONFLUX_BO_CREATE,
};

/* Capability bits of &struct drm_conflux_get_info.caps (the device's CAPS). */
#define DRM_CONFLUX_CAP_COPY		(1 << 0)
#define DRM_CONFLUX_CAP_FILL		(1 << 1)
#define DRM_CONFLUX_CAP_FENCE		(1 << 2)
#define DRM_CONFLUX_CAP_TIMESTAMP	(1 << 3)
#define DRM_CONFLUX_CAP_MMU_2M		(1 << 4)
#define DRM_CONFLUX_CAP_PEER_P2P	(1 << 5)

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
 *
 * The counters count from the device's power-on, are kept across resets and
 * wrap modulo 2^64.
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
};

/* Placement of a buffer: &struct drm_conflux_bo_create.flags. */
#define DRM_CONFLUX_BO_VRAM		(1 << 0)

/**
 * struct drm_conflux_bo_create - create a buffer object
 * @size: in: bytes, at least 1; rounded up to a multiple of 4 KiB.
 *	out: the rounded size
 * @flags: in: placement, DRM_CONFLUX_BO_VRAM (required)
 * @handle: out: GEM handle of the new buffer
 *
 * The buffer's memory is zeroed by the device's engine before the ioctl
 * returns: no data of an earlier user can be read through it. A buffer of
 * 2 MiB or more is placed in 2 MiB blocks when VRAM allows, so that it can
 * be mapped with 2 MiB page-table entries.
 *
 * Errors: -EINVAL for a size of 0 or unknown flags, a missing placement or
 * a non-zero handle; -ENOSPC when VRAM has no room for the buffer; -EINTR
 * when a signal arrived while the call waited for room in the engine's ring
 * (nothing was created); -EIO or -ETIMEDOUT when the engine failed to zero
 * the memory.
 */
struct drm_conflux_bo_create {
	__u64 size;
	__u32 flags;
	__u32 handle;
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
};

#if defined(__cplusplus)
}
#endif

#endif /* _UAPI_CONFLUX_ACCEL_H_ */
