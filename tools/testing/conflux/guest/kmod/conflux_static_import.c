// SPDX-License-Identifier: GPL-2.0
/*
 * dma-buf importers for the Conflux guest tests, as drivers that Conflux
 * did not write import: a static importer, the three kinds of RDMA memory
 * registration of drivers/infiniband/core/umem_dmabuf.c, and a kernel
 * mapping.
 *
 * The static importer (display scanout, drivers without invalidation)
 * calls dma_buf_attach() without importer ops, so without peer-to-peer,
 * and keeps its mapping until it lets go: the exporter must pin the buffer
 * in memory the importer can reach. The RDMA importers attach for a PCI
 * device with peer-to-peer allowed (dma_buf_dynamic_attach()), map with the
 * reservation lock held and then wait for the exporter's kernel fences (its
 * moves), as ib_umem_dmabuf_map_pages() does:
 *
 *   dynamic   (ib_umem_dmabuf_get()) invalidate_mappings unmaps; the next
 *             access maps again
 *   pinned    (ib_umem_dmabuf_get_pinned()) pins, no invalidate_mappings:
 *             the mapping is kept until the importer lets go, and the
 *             attachment is not revocable (dma_buf_attach_revocable())
 *   revocable (ib_umem_dmabuf_get_pinned_revocable_and_lock()) pins;
 *             invalidate_mappings revokes the registration for good: it
 *             unmaps and unpins, and later accesses fail with -EINVAL
 *
 * The static importer and the kernel mapping belong to a faux device doing
 * direct DMA. Each open of <debugfs>/conflux_static_import/import holds at
 * most one buffer:
 *
 *   write "attach FD"         attach statically to the dma-buf FD, map it
 *   write "dynamic FD BDF"    register the dma-buf FD for the PCI device
 *   write "pin FD BDF"        BDF (such as 0000:04:00.0) as an RDMA
 *   write "revocable FD BDF"  registration of that kind, and map it
 *   write "vmap FD"           map the whole dma-buf FD into the kernel with
 *                             dma_buf_vmap(), as kernel importers that use
 *                             a buffer with the CPU (fbdev emulation) do
 *   write "fill BYTE"         write BYTE to every byte of the mapping
 *   read                      describe the mapping and hash its bytes:
 *                             "segments N bytes N max_segment N limit N
 *                             ram N boundary_crossings N fnv1a HEX
 *                             invalidations N revoked 0|1", or for a
 *                             kernel mapping "kernel_map 1 bytes N
 *                             iomem 0|1 fnv1a HEX"
 *   close                     unmap and detach
 *
 * A dynamic registration maps again at a read or a fill after an
 * invalidation; a revoked one fails them with -EINVAL. The bytes are
 * reached at the physical address each DMA address stands for, as the
 * device would reach them: system RAM through memremap(), device memory
 * through ioremap().
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

enum import_kind {
	IMPORT_STATIC,
	IMPORT_DYNAMIC,
	IMPORT_PINNED,
	IMPORT_REVOCABLE,
	IMPORT_VMAP,
};

/*
 * One open file's buffer. The fields the exporter's invalidate_mappings
 * changes (sgt, pinned, revoked, invalidations) are protected by the
 * buffer's reservation lock for the RDMA kinds.
 */
struct import {
	struct mutex lock; /* serialises the calls of one open file */
	enum import_kind kind;
	struct dma_buf *buf;
	struct dma_buf_attachment *att;
	struct sg_table *sgt;
	struct pci_dev *pdev; /* the device an RDMA registration maps for */
	struct iosys_map map; /* the kernel mapping of "vmap", when vmapped */
	bool vmapped;
	bool pinned;
	bool revoked;
	unsigned int invalidations;
};

static void import_unmap_locked(struct import *imp)
{
	if (imp->sgt)
		dma_buf_unmap_attachment(imp->att, imp->sgt, DMA_BIDIRECTIONAL);
	imp->sgt = NULL;
}

/* ib_umem_dmabuf_map_pages(): map if need be, then wait for moves. */
static int import_map_locked(struct import *imp)
{
	struct sg_table *sgt;
	long ret;

	dma_resv_assert_held(imp->buf->resv);
	if (imp->revoked)
		return -EINVAL;
	if (!imp->sgt) {
		sgt = dma_buf_map_attachment(imp->att, DMA_BIDIRECTIONAL);
		if (IS_ERR(sgt))
			return PTR_ERR(sgt);
		imp->sgt = sgt;
	}
	ret = dma_resv_wait_timeout(imp->buf->resv, DMA_RESV_USAGE_KERNEL,
				    false, MAX_SCHEDULE_TIMEOUT);
	if (ret < 0)
		return ret;
	return ret ? 0 : -ETIMEDOUT;
}

/* A dynamic registration: the next access maps again. */
static void import_invalidate(struct dma_buf_attachment *att)
{
	struct import *imp = att->importer_priv;

	imp->invalidations++;
	import_unmap_locked(imp);
}

/* A revocable registration: revoked for good, as ib_umem_dmabuf_revoke. */
static void import_revoke(struct dma_buf_attachment *att)
{
	struct import *imp = att->importer_priv;

	dma_resv_assert_held(att->dmabuf->resv);
	if (imp->revoked)
		return;
	imp->invalidations++;
	import_unmap_locked(imp);
	if (imp->pinned)
		dma_buf_unpin(att);
	imp->pinned = false;
	imp->revoked = true;
}

static const struct dma_buf_attach_ops import_dynamic_ops = {
	.allow_peer2peer = true,
	.invalidate_mappings = import_invalidate,
};

static const struct dma_buf_attach_ops import_pinned_ops = {
	.allow_peer2peer = true,
};

static const struct dma_buf_attach_ops import_revocable_ops = {
	.allow_peer2peer = true,
	.invalidate_mappings = import_revoke,
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
		import_unmap_locked(imp);
		if (imp->pinned)
			dma_buf_unpin(imp->att);
		imp->pinned = false;
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
	imp->revoked = false;
	imp->invalidations = 0;
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
	imp->kind = IMPORT_STATIC;
	imp->sgt = sgt;
	return 0;
}

static const char *const import_kind_name[] = {
	[IMPORT_STATIC] = "attach",
	[IMPORT_DYNAMIC] = "dynamic",
	[IMPORT_PINNED] = "pin",
	[IMPORT_REVOCABLE] = "revocable",
	[IMPORT_VMAP] = "vmap",
};

/* An RDMA registration of @kind of the dma-buf @fd for the PCI device @bdf. */
static int import_rdma(struct import *imp, enum import_kind kind, int fd,
		       const char *bdf)
{
	static const struct dma_buf_attach_ops *const ops[] = {
		[IMPORT_DYNAMIC] = &import_dynamic_ops,
		[IMPORT_PINNED] = &import_pinned_ops,
		[IMPORT_REVOCABLE] = &import_revocable_ops,
	};
	const char *what = import_kind_name[kind];
	struct device *dev = import_dev();
	unsigned int domain, bus, slot, func;
	int ret;

	if (imp->buf) {
		dev_err(dev, "%s %d: this file already holds a buffer\n", what,
			fd);
		return -EBUSY;
	}
	if (sscanf(bdf, "%x:%x:%x.%x", &domain, &bus, &slot, &func) != 4) {
		dev_err(dev, "%s %d: \"%s\" is not a PCI address\n", what, fd,
			bdf);
		return -EINVAL;
	}
	imp->pdev = pci_get_domain_bus_and_slot(domain, bus,
						PCI_DEVFN(slot, func));
	if (!imp->pdev) {
		dev_err(dev, "%s %d: no PCI device %s\n", what, fd, bdf);
		return -ENODEV;
	}
	imp->kind = kind;
	imp->buf = dma_buf_get(fd);
	if (IS_ERR(imp->buf)) {
		ret = PTR_ERR(imp->buf);
		imp->buf = NULL;
		dev_err(dev, "%s %d: not a dma-buf: %d\n", what, fd, ret);
		import_drop(imp);
		return ret;
	}
	imp->att = dma_buf_dynamic_attach(imp->buf, &imp->pdev->dev, ops[kind],
					  imp);
	if (IS_ERR(imp->att)) {
		ret = PTR_ERR(imp->att);
		imp->att = NULL;
		dev_err(dev, "%s %d: dma_buf_dynamic_attach() for %s failed: %d\n",
			what, fd, bdf, ret);
		import_drop(imp);
		return ret;
	}
	dma_resv_lock(imp->buf->resv, NULL);
	ret = kind == IMPORT_DYNAMIC ? 0 : dma_buf_pin(imp->att);
	imp->pinned = !ret && kind != IMPORT_DYNAMIC;
	if (!ret)
		ret = import_map_locked(imp);
	dma_resv_unlock(imp->buf->resv);
	if (ret) {
		dev_err(dev, "%s %d: pinning or mapping for %s failed: %d\n",
			what, fd, bdf, ret);
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
	imp->kind = IMPORT_VMAP;
	imp->vmapped = true;
	return 0;
}

/*
 * Calls @fn for every DMA segment of the mapping with a CPU mapping of it,
 * and counts the segments whose bytes are all system RAM.
 */
static int import_walk(struct import *imp, unsigned int *ram,
		       void (*fn)(struct iosys_map *map, size_t len, void *arg),
		       void *arg)
{
	struct device *dev = import_map_dev(imp);
	struct iosys_map map;
	struct scatterlist *sg;
	unsigned int i;

	*ram = 0;
	for_each_sgtable_dma_sg(imp->sgt, sg, i) {
		phys_addr_t phys = dma_to_phys(dev, sg_dma_address(sg));
		size_t len = sg_dma_len(sg);
		bool is_ram;

		is_ram = region_intersects(phys, len, IORESOURCE_SYSTEM_RAM,
					   IORES_DESC_NONE) == REGION_INTERSECTS;
		if (is_ram) {
			(*ram)++;
			iosys_map_set_vaddr(&map, memremap(phys, len, MEMREMAP_WB));
		} else {
			iosys_map_set_vaddr_iomem(&map, ioremap(phys, len));
		}
		if (iosys_map_is_null(&map)) {
			dev_err(dev, "segment %u at %pa: mapping it failed\n", i,
				&phys);
			return -ENOMEM;
		}
		fn(&map, len, arg);
		if (is_ram)
			memunmap(map.vaddr);
		else
			iounmap(map.vaddr_iomem);
	}
	return 0;
}

static void import_hash(struct iosys_map *map, size_t len, void *arg)
{
	u64 *hash = arg;
	u8 chunk[256];
	size_t off, n, i;

	for (off = 0; off < len; off += n) {
		n = min(sizeof(chunk), len - off);
		iosys_map_memcpy_from(chunk, map, off, n);
		for (i = 0; i < n; i++)
			*hash = (*hash ^ chunk[i]) * FNV1A_PRIME;
	}
}

static void import_fill(struct iosys_map *map, size_t len, void *arg)
{
	iosys_map_memset(map, 0, *(u8 *)arg, len);
}

static ssize_t import_read_vmap(struct import *imp, char __user *ubuf,
				size_t count, loff_t *ppos)
{
	u64 hash = FNV1A_OFFSET;
	char out[80];
	int len;

	import_hash(&imp->map, imp->buf->size, &hash);
	len = scnprintf(out, sizeof(out),
			"kernel_map 1 bytes %zu iomem %d fnv1a %016llx\n",
			imp->buf->size, imp->map.is_iomem, hash);
	return simple_read_from_buffer(ubuf, count, ppos, out, len);
}

/* Describes the mapping of @imp, the caller holding what it needs. */
static int import_describe(struct import *imp, char *out, size_t size)
{
	struct device *dev = import_map_dev(imp);
	unsigned long mask = dma_get_seg_boundary(dev);
	unsigned int longest = 0, crossings = 0, ram, i;
	u64 bytes = 0, hash = FNV1A_OFFSET;
	struct scatterlist *sg;
	int ret;

	if (imp->revoked)
		return scnprintf(out, size, "revoked 1 invalidations %u\n",
				 imp->invalidations);
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
	if (ret)
		return ret;
	return scnprintf(out, size,
			 "segments %u bytes %llu max_segment %u limit %u ram %u boundary_crossings %u fnv1a %016llx invalidations %u revoked 0\n",
			 imp->sgt->nents, bytes, longest,
			 dma_get_max_seg_size(dev), ram, crossings, hash,
			 imp->invalidations);
}

/*
 * Runs @fn on the mapping of @imp: an RDMA registration holds the buffer's
 * reservation lock meanwhile and maps again first if it was invalidated (a
 * revoked one fails with -EINVAL, but for @fn that describes it).
 */
static int import_access(struct import *imp, const char *what, bool describe,
			 int (*fn)(struct import *imp, void *arg), void *arg)
{
	struct device *dev = import_dev();
	int ret = 0;

	if (!imp->buf) {
		dev_err(dev, "%s: no buffer: write \"attach FD\" first\n", what);
		return -ENODATA;
	}
	if (!imp->pdev)
		return fn(imp, arg);
	dma_resv_lock(imp->buf->resv, NULL);
	if (!imp->revoked || !describe)
		ret = import_map_locked(imp);
	if (ret)
		dev_err(dev, "%s: the %s registration does not map: %d\n", what,
			import_kind_name[imp->kind], ret);
	else
		ret = fn(imp, arg);
	dma_resv_unlock(imp->buf->resv);
	return ret;
}

struct import_out {
	char text[224];
	int len;
};

static int import_describe_into(struct import *imp, void *arg)
{
	struct import_out *out = arg;

	out->len = import_describe(imp, out->text, sizeof(out->text));
	return out->len < 0 ? out->len : 0;
}

static int import_fill_with(struct import *imp, void *arg)
{
	unsigned int ram;

	if (imp->vmapped) {
		iosys_map_memset(&imp->map, 0, *(u8 *)arg, imp->buf->size);
		return 0;
	}
	return import_walk(imp, &ram, import_fill, arg);
}

static ssize_t import_read(struct file *file, char __user *ubuf, size_t count,
			   loff_t *ppos)
{
	struct import *imp = file->private_data;
	struct import_out out;
	ssize_t ret;

	mutex_lock(&imp->lock);
	if (imp->vmapped) {
		ret = import_read_vmap(imp, ubuf, count, ppos);
		mutex_unlock(&imp->lock);
		return ret;
	}
	ret = import_access(imp, "read", true, import_describe_into, &out);
	mutex_unlock(&imp->lock);
	if (ret)
		return ret;
	return simple_read_from_buffer(ubuf, count, ppos, out.text, out.len);
}

static ssize_t import_write(struct file *file, const char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	static const enum import_kind rdma[] = {
		IMPORT_DYNAMIC, IMPORT_PINNED, IMPORT_REVOCABLE,
	};
	struct import *imp = file->private_data;
	struct device *dev = import_dev();
	char cmd[48], word[16], bdf[16];
	int fd, ret = -EINVAL;
	unsigned int i;
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
	} else if (sscanf(cmd, "%15s %d %15s", word, &fd, bdf) == 3) {
		for (i = 0; i < ARRAY_SIZE(rdma); i++)
			if (!strcmp(word, import_kind_name[rdma[i]]))
				break;
		if (i < ARRAY_SIZE(rdma))
			ret = import_rdma(imp, rdma[i], fd, bdf);
		else
			dev_err(dev, "write: unknown command \"%s\"\n", cmd);
	} else if (sscanf(cmd, "vmap %d", &fd) == 1) {
		ret = import_vmap(imp, fd);
	} else if (sscanf(cmd, "fill %hhu", &byte) == 1) {
		ret = import_access(imp, "fill", false, import_fill_with, &byte);
	} else {
		dev_err(dev, "write: unknown command \"%s\"\n", cmd);
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
