"""TA3 too many pipes: a tangled training pipeline beside a declared one."""
