// SPDX-License-Identifier: GPL-2.0
/*
 * A static dma-buf importer for the Conflux guest tests.
 *
 * It imports the way importers without move_notify do (RDMA memory
 * registrations, display scanout): dma_buf_attach() without importer ops,
 * so without peer-to-peer, and a mapping kept until the importer lets go.
 * The exporter must pin the buffer in memory the importer can reach, and
 * may not move it while the attachment lives.
 *
 * The importer is a faux device doing direct DMA. Each open of
 * <debugfs>/conflux_static_import/import holds at most one attachment:
 *
 *   write "attach FD"  attach to the dma-buf FD and map it
 *   write "pin FD BDF" attach to the dma-buf FD for the PCI device BDF
 *                      (such as 0000:04:00.0) with peer-to-peer allowed,
 *                      pin it and map it, as RDMA's pinned registrations
 *                      (ib_umem_dmabuf_get_pinned()) do
 *   write "vmap FD"    map the whole dma-buf FD into the kernel with
 *                      dma_buf_vmap(), as kernel importers that read and
 *                      write a buffer with the CPU (fbdev emulation, for
 *                      example) do
 *   write "fill BYTE"  write BYTE to every byte of the mapped segments, or
 *                      through the kernel mapping
 *   read               describe the mapping and hash the bytes it covers:
 *                      "segments N bytes N max_segment N limit N ram N
 *                       boundary_crossings N fnv1a HEX", or for a kernel
 *                      mapping "kernel_map 1 bytes N iomem 0|1 fnv1a
 *                      HEX"
 *   close              unmap and detach
 *
 * The bytes are reached at the physical address each DMA address stands for,
 * as the device would reach them.
 */

#include <linux/debugfs.h>
#include <linux/device/faux.h>
#include <linux/dma-buf.h>
#include <linux/dma-direct.h>
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/iosys-map.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/string.h>

#define FNV1A_OFFSET 0xcbf29ce484222325ULL
#define FNV1A_PRIME 0x100000001b3ULL

static struct faux_device *importer;
static struct dentry *dir;

struct import {
	struct mutex lock; /* serialises the calls of one open file */
	struct dma_buf *buf;
	struct dma_buf_attachment *att;
	struct sg_table *sgt;
	struct pci_dev *pdev; /* the device a pinned attachment maps for */
	struct iosys_map map; /* the kernel mapping of "vmap", when vmapped */
	bool vmapped;
};

/* A pinned attachment is never moved, so never told to map again. */
static void import_invalidate(struct dma_buf_attachment *att)
{
	dev_warn(att->dev, "a pinned attachment was invalidated\n");
}

static const struct dma_buf_attach_ops import_pinned_ops = {
	.allow_peer2peer = true,
	.invalidate_mappings = import_invalidate,
};

static struct device *import_dev(void)
{
	return &importer->dev;
}

/* The device the mapping of @imp is for. */
static struct device *import_map_dev(struct import *imp)
{
	return imp->pdev ? &imp->pdev->dev : import_dev();
}

static int import_open(struct inode *inode, struct file *file)
{
	struct import *imp = kzalloc(sizeof(*imp), GFP_KERNEL);

	if (!imp)
		return -ENOMEM;
	mutex_init(&imp->lock);
	file->private_data = imp;
	return 0;
}

static void import_drop(struct import *imp)
{
	if (imp->vmapped)
		dma_buf_vunmap_unlocked(imp->buf, &imp->map);
	imp->vmapped = false;
	if (imp->pdev && imp->att) {
		dma_resv_lock(imp->buf->resv, NULL);
		if (imp->sgt) {
			dma_buf_unmap_attachment(imp->att, imp->sgt,
						 DMA_BIDIRECTIONAL);
			dma_buf_unpin(imp->att);
		}
		dma_resv_unlock(imp->buf->resv);
	} else if (imp->sgt) {
		dma_buf_unmap_attachment_unlocked(imp->att, imp->sgt,
						  DMA_BIDIRECTIONAL);
	}
	if (imp->att)
		dma_buf_detach(imp->buf, imp->att);
	if (imp->buf)
		dma_buf_put(imp->buf);
	pci_dev_put(imp->pdev);
	imp->sgt = NULL;
	imp->att = NULL;
	imp->buf = NULL;
	imp->pdev = NULL;
}

static int import_release(struct inode *inode, struct file *file)
{
	struct import *imp = file->private_data;

	import_drop(imp);
	mutex_destroy(&imp->lock);
	kfree(imp);
	return 0;
}

static int import_attach(struct import *imp, int fd)
{
	struct device *dev = import_dev();
	struct sg_table *sgt;
	int ret;

	if (imp->buf) {
		dev_err(dev, "attach %d: this file already holds an attachment\n",
			fd);
		return -EBUSY;
	}
	imp->buf = dma_buf_get(fd);
	if (IS_ERR(imp->buf)) {
		ret = PTR_ERR(imp->buf);
		imp->buf = NULL;
		dev_err(dev, "attach %d: not a dma-buf: %d\n", fd, ret);
		return ret;
	}
	imp->att = dma_buf_attach(imp->buf, dev);
	if (IS_ERR(imp->att)) {
		ret = PTR_ERR(imp->att);
		imp->att = NULL;
		dev_err(dev, "attach %d: dma_buf_attach() failed: %d\n", fd, ret);
		import_drop(imp);
		return ret;
	}
	sgt = dma_buf_map_attachment_unlocked(imp->att, DMA_BIDIRECTIONAL);
	if (IS_ERR(sgt)) {
		ret = PTR_ERR(sgt);
		dev_err(dev, "attach %d: dma_buf_map_attachment() failed: %d\n",
			fd, ret);
		import_drop(imp);
		return ret;
	}
	imp->sgt = sgt;
	return 0;
}

static int import_pin(struct import *imp, int fd, const char *bdf)
{
	struct device *dev = import_dev();
	unsigned int domain, bus, slot, func;
	struct sg_table *sgt;
	int ret;

	if (imp->buf) {
		dev_err(dev, "pin %d: this file already holds an attachment\n",
			fd);
		return -EBUSY;
	}
	if (sscanf(bdf, "%x:%x:%x.%x", &domain, &bus, &slot, &func) != 4) {
		dev_err(dev, "pin %d: \"%s\" is not a PCI address\n", fd, bdf);
		return -EINVAL;
	}
	imp->pdev = pci_get_domain_bus_and_slot(domain, bus,
						PCI_DEVFN(slot, func));
	if (!imp->pdev) {
		dev_err(dev, "pin %d: no PCI device %s\n", fd, bdf);
		return -ENODEV;
	}
	imp->buf = dma_buf_get(fd);
	if (IS_ERR(imp->buf)) {
		ret = PTR_ERR(imp->buf);
		imp->buf = NULL;
		dev_err(dev, "pin %d: not a dma-buf: %d\n", fd, ret);
		import_drop(imp);
		return ret;
	}
	imp->att = dma_buf_dynamic_attach(imp->buf, &imp->pdev->dev,
					  &import_pinned_ops, imp);
	if (IS_ERR(imp->att)) {
		ret = PTR_ERR(imp->att);
		imp->att = NULL;
		dev_err(dev, "pin %d: dma_buf_dynamic_attach() for %s failed: %d\n",
			fd, bdf, ret);
		import_drop(imp);
		return ret;
	}
	dma_resv_lock(imp->buf->resv, NULL);
	ret = dma_buf_pin(imp->att);
	if (!ret) {
		sgt = dma_buf_map_attachment(imp->att, DMA_BIDIRECTIONAL);
		if (IS_ERR(sgt)) {
			ret = PTR_ERR(sgt);
			dma_buf_unpin(imp->att);
		} else {
			imp->sgt = sgt;
		}
	}
	dma_resv_unlock(imp->buf->resv);
	if (ret) {
		dev_err(dev, "pin %d: pinning or mapping for %s failed: %d\n",
			fd, bdf, ret);
		import_drop(imp);
	}
	return ret;
}

static int import_vmap(struct import *imp, int fd)
{
	struct device *dev = import_dev();
	int ret;

	if (imp->buf) {
		dev_err(dev, "vmap %d: this file already holds a buffer\n", fd);
		return -EBUSY;
	}
	imp->buf = dma_buf_get(fd);
	if (IS_ERR(imp->buf)) {
		ret = PTR_ERR(imp->buf);
		imp->buf = NULL;
		dev_err(dev, "vmap %d: not a dma-buf: %d\n", fd, ret);
		return ret;
	}
	ret = dma_buf_vmap_unlocked(imp->buf, &imp->map);
	if (ret) {
		dev_err(dev, "vmap %d: dma_buf_vmap() failed: %d\n", fd, ret);
		import_drop(imp);
		return ret;
	}
	imp->vmapped = true;
	return 0;
}

/*
 * Calls @fn for every DMA segment of the mapping with its CPU address, and
 * counts the segments whose bytes are all system RAM.
 */
static int import_walk(struct import *imp, unsigned int *ram,
		       void (*fn)(void *cpu, size_t len, void *arg), void *arg)
{
	struct device *dev = import_map_dev(imp);
	struct scatterlist *sg;
	unsigned int i;

	*ram = 0;
	for_each_sgtable_dma_sg(imp->sgt, sg, i) {
		phys_addr_t phys = dma_to_phys(dev, sg_dma_address(sg));
		size_t len = sg_dma_len(sg);
		void *cpu;

		if (region_intersects(phys, len, IORESOURCE_SYSTEM_RAM,
				      IORES_DESC_NONE) != REGION_INTERSECTS)
			continue;
		(*ram)++;
		cpu = memremap(phys, len, MEMREMAP_WB);
		if (!cpu) {
			dev_err(dev, "segment %u at %pa: memremap() failed\n",
				i, &phys);
			return -ENOMEM;
		}
		fn(cpu, len, arg);
		memunmap(cpu);
	}
	return 0;
}

static void import_hash(void *cpu, size_t len, void *arg)
{
	u64 *hash = arg;
	const u8 *p = cpu;
	size_t i;

	for (i = 0; i < len; i++)
		*hash = (*hash ^ p[i]) * FNV1A_PRIME;
}

static void import_fill(void *cpu, size_t len, void *arg)
{
	memset(cpu, *(u8 *)arg, len);
}

/* Hashes the bytes of the kernel mapping, read as its memory wants. */
static u64 import_hash_vmap(struct import *imp)
{
	u64 hash = FNV1A_OFFSET;
	u8 chunk[256];
	size_t off, n;

	for (off = 0; off < imp->buf->size; off += n) {
		n = min(sizeof(chunk), imp->buf->size - off);
		iosys_map_memcpy_from(chunk, &imp->map, off, n);
		import_hash(chunk, n, &hash);
	}
	return hash;
}

static ssize_t import_read_vmap(struct import *imp, char __user *ubuf,
				size_t count, loff_t *ppos)
{
	char out[80];
	int len;

	len = scnprintf(out, sizeof(out), "kernel_map 1 bytes %zu iomem %d fnv1a %016llx\n",
			imp->buf->size, imp->map.is_iomem,
			import_hash_vmap(imp));
	return simple_read_from_buffer(ubuf, count, ppos, out, len);
}

static ssize_t import_read(struct file *file, char __user *ubuf, size_t count,
			   loff_t *ppos)
{
	struct import *imp = file->private_data;
	unsigned int longest = 0, crossings = 0, ram, i;
	u64 bytes = 0, hash = FNV1A_OFFSET;
	struct scatterlist *sg;
	unsigned long mask;
	struct device *dev;
	char out[160];
	int len, ret;

	mutex_lock(&imp->lock);
	if (imp->vmapped) {
		ret = import_read_vmap(imp, ubuf, count, ppos);
		mutex_unlock(&imp->lock);
		return ret;
	}
	dev = import_map_dev(imp);
	mask = dma_get_seg_boundary(dev);
	if (!imp->sgt) {
		mutex_unlock(&imp->lock);
		dev_err(dev, "read: no attachment: write \"attach FD\" first\n");
		return -ENODATA;
	}
	for_each_sgtable_dma_sg(imp->sgt, sg, i) {
		dma_addr_t start = sg_dma_address(sg);
		unsigned int seg = sg_dma_len(sg);

		longest = max(longest, seg);
		bytes += seg;
		if ((start & ~(dma_addr_t)mask) !=
		    ((start + seg - 1) & ~(dma_addr_t)mask))
			crossings++;
	}
	ret = import_walk(imp, &ram, import_hash, &hash);
	if (ret) {
		mutex_unlock(&imp->lock);
		return ret;
	}
	len = scnprintf(out, sizeof(out),
			"segments %u bytes %llu max_segment %u limit %u ram %u boundary_crossings %u fnv1a %016llx\n",
			imp->sgt->nents, bytes, longest, dma_get_max_seg_size(dev),
			ram, crossings, hash);
	mutex_unlock(&imp->lock);
	return simple_read_from_buffer(ubuf, count, ppos, out, len);
}

static ssize_t import_write(struct file *file, const char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	struct import *imp = file->private_data;
	struct device *dev = import_dev();
	unsigned int ram;
	char cmd[48], bdf[16];
	int fd, ret;
	u8 byte;

	if (count >= sizeof(cmd)) {
		dev_err(dev, "write: a command of %zu bytes, at most %zu\n",
			count, sizeof(cmd) - 1);
		return -EINVAL;
	}
	if (copy_from_user(cmd, ubuf, count))
		return -EFAULT;
	cmd[count] = '\0';
	strim(cmd);

	mutex_lock(&imp->lock);
	if (sscanf(cmd, "attach %d", &fd) == 1) {
		ret = import_attach(imp, fd);
	} else if (sscanf(cmd, "pin %d %15s", &fd, bdf) == 2) {
		ret = import_pin(imp, fd, bdf);
	} else if (sscanf(cmd, "vmap %d", &fd) == 1) {
		ret = import_vmap(imp, fd);
	} else if (sscanf(cmd, "fill %hhu", &byte) == 1) {
		if (imp->vmapped) {
			iosys_map_memset(&imp->map, 0, byte, imp->buf->size);
			ret = 0;
		} else if (imp->sgt) {
			ret = import_walk(imp, &ram, import_fill, &byte);
		} else {
			dev_err(dev, "fill: no attachment: write \"attach FD\" first\n");
			ret = -ENODATA;
		}
	} else {
		dev_err(dev, "write: unknown command \"%s\"\n", cmd);
		ret = -EINVAL;
	}
	mutex_unlock(&imp->lock);
	return ret ? ret : count;
}

static const struct file_operations import_fops = {
	.owner = THIS_MODULE,
	.open = import_open,
	.release = import_release,
	.read = import_read,
	.write = import_write,
	.llseek = default_llseek,
};

static int __init conflux_static_import_init(void)
{
	int ret;

	importer = faux_device_create("conflux-static-import", NULL, NULL);
	if (!importer)
		return -ENODEV;
	ret = dma_coerce_mask_and_coherent(import_dev(), DMA_BIT_MASK(64));
	if (ret) {
		faux_device_destroy(importer);
		return ret;
	}
	dir = debugfs_create_dir("conflux_static_import", NULL);
	debugfs_create_file("import", 0600, dir, NULL, &import_fops);
	return 0;
}

static void __exit conflux_static_import_exit(void)
{
	debugfs_remove_recursive(dir);
	faux_device_destroy(importer);
}

module_init(conflux_static_import_init);
module_exit(conflux_static_import_exit);

MODULE_DESCRIPTION("Static dma-buf importer for the Conflux guest tests");
MODULE_LICENSE("GPL");
MODULE_IMPORT_NS("DMA_BUF");
