// SPDX-License-Identifier: GPL-2.0
/*
 * The module `avf-harness bench-build` compiles inside the guest against
 * linux-avf-headers: loading it proves the build matches the running
 * kernel (vermagic, and the symbol CRCs under MODVERSIONS).
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/utsname.h>

static int __init avf_bench_hello_init(void)
{
	pr_info("avf_bench_hello: built in the guest, loaded into %s\n",
		init_utsname()->release);
	return 0;
}

static void __exit avf_bench_hello_exit(void)
{
	pr_info("avf_bench_hello: unloaded\n");
}

module_init(avf_bench_hello_init);
module_exit(avf_bench_hello_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("arch-avf in-guest build benchmark module");
