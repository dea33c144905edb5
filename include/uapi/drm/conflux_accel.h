/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * Userspace interface of the Conflux accelerator driver.
 *
 * No ioctls are defined yet: the interface is added together with the
 * driver features it exposes, and documented in
 * Documentation/accel/conflux/uapi.rst.
 */
#ifndef _UAPI_CONFLUX_ACCEL_H_
#define _UAPI_CONFLUX_ACCEL_H_

#include "drm.h"

#if defined(__cplusplus)
extern "C" {
#endif

#if defined(__cplusplus)
}
#endif

#endif /* _UAPI_CONFLUX_ACCEL_H_ */
