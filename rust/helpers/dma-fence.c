// SPDX-License-Identifier: GPL-2.0

#include <linux/dma-fence.h>

__rust_helper struct dma_fence *rust_helper_dma_fence_get(struct dma_fence *fence)
{
	return dma_fence_get(fence);
}

__rust_helper void rust_helper_dma_fence_put(struct dma_fence *fence)
{
	dma_fence_put(fence);
}

__rust_helper bool rust_helper_dma_fence_is_signaled(struct dma_fence *fence)
{
	return dma_fence_is_signaled(fence);
}

__rust_helper void rust_helper_dma_fence_set_error(struct dma_fence *fence, int error)
{
	dma_fence_set_error(fence, error);
}

__rust_helper bool rust_helper_dma_fence_is_later(struct dma_fence *f1,
						  struct dma_fence *f2)
{
	return dma_fence_is_later(f1, f2);
}

/*
 * The error of a fence that has signalled (0 or negative), or 1 while it is pending, without
 * the fence's lock: the error is set before the fence signals and never changes after.
 */
__rust_helper int rust_helper_dma_fence_result(struct dma_fence *fence)
{
	if (!dma_fence_test_signaled_flag(fence))
		return 1;
	/* Pairs with the fully ordered test_and_set_bit() that signals the fence. */
	smp_rmb();
	return fence->error;
}
