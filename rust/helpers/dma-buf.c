// SPDX-License-Identifier: GPL-2.0

#include <linux/dma-buf.h>
#include <linux/pgtable.h>
#include <linux/vmalloc.h>

__rust_helper void rust_helper_get_dma_buf(struct dma_buf *dmabuf)
{
	get_dma_buf(dmabuf);
}

__rust_helper pgprot_t rust_helper_dma_buf_pgprot_kernel(void)
{
	return PAGE_KERNEL;
}

__rust_helper pgprot_t rust_helper_dma_buf_pgprot_io(void)
{
	return pgprot_noncached(PAGE_KERNEL);
}
