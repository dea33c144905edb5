// SPDX-License-Identifier: GPL-2.0

#include <linux/lockdep.h>
#include <linux/sched.h>

#ifdef CONFIG_FAULT_INJECTION
__rust_helper unsigned int rust_helper_current_fail_nth(void)
{
	return READ_ONCE(current->fail_nth);
}

__rust_helper void rust_helper_set_current_fail_nth(unsigned int nth)
{
	WRITE_ONCE(current->fail_nth, nth);
}
#endif

__rust_helper int rust_helper_lockdep_depth(struct task_struct *tsk)
{
	return lockdep_depth(tsk);
}
