// SPDX-License-Identifier: GPL-2.0
/*
 * /proc/oracle_oops: writing BUG or EXCEPTION to it oopses the writer, for kernels
 * built without LKDTM (Debian's), so that pstore dumps an Oops record.
 */
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/string.h>
#include <linux/uaccess.h>

static ssize_t oops_write(struct file *file, const char __user *ubuf, size_t len,
			  loff_t *pos)
{
	char buf[16] = {};

	if (copy_from_user(buf, ubuf, min(len, sizeof(buf) - 1)))
		return -EFAULT;
	if (!strncmp(buf, "BUG", 3))
		BUG();
	if (!strncmp(buf, "EXCEPTION", 9))
		*(volatile int *)NULL = 0;
	return -EINVAL;
}

static const struct proc_ops oops_ops = {
	.proc_write = oops_write,
};

static int __init oracle_oops_init(void)
{
	return proc_create("oracle_oops", 0200, NULL, &oops_ops) ? 0 : -ENOMEM;
}

static void __exit oracle_oops_exit(void)
{
	remove_proc_entry("oracle_oops", NULL);
}

module_init(oracle_oops_init);
module_exit(oracle_oops_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("oops on demand, for the pstore oracle");
