"""Stage 5: nodes taking an image: trust, rebase, deploy into a sysroot, status, rollback."""
